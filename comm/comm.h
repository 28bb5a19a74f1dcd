/* Communication between ranks: one small API over MPI (and NCCL in the GPU
 * issue). For now: init (also without mpirun: a single rank), rank and world
 * size, and abort-all, which fatal errors use so that no rank is left waiting. */
#ifndef LDM_COMM_H
#define LDM_COMM_H

void comm_init(int *argc, char ***argv);
void comm_finalize(void);
int comm_rank(void);
int comm_world_size(void);
/* Ends every rank with the exit code. */
void comm_abort(int exit_code);

#endif
