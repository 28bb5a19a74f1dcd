/* The run directory of `ldm train` (and later train-ae, distill): RUN holds
 * config.json (the resolved config), metrics.jsonl, the exported weights and,
 * with the checkpoint issue, checkpoints/. A new run refuses a directory that
 * already holds a run, unless told to start over (--force). */
#ifndef LDM_RUN_DIRECTORY_H
#define LDM_RUN_DIRECTORY_H

/* Collective. Rank 0 checks RUN (fatal_input, which ends every rank, when it
 * holds another run and force is not set, or cannot be created), creates it,
 * removes the exports of an earlier finished run (model/ema.safetensors, written
 * again at the end) and writes RUN/config.json atomically; every rank returns
 * once that is done. */
void run_directory_prepare(const char *run_dir, int force, const char *config_json);

/* "RUN/name" in a new allocation. */
char *run_directory_path(const char *run_dir, const char *name);

#endif
