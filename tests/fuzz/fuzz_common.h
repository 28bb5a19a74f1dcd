/* What every fuzz target of tests/fuzz/ shares: running a parser whose bad
 * inputs end in fatal_input (exit status 2 in the program) so that the fuzzer
 * goes on with the next input, and handing file-based parsers their bytes as a
 * file in a folder of this process in /dev/shm (memory, not disk).
 *
 * fatal_* call the abort hook before they exit; the hook set here jumps back
 * into fuzz_run instead, so a refused input costs one line and a jump (files
 * the parser left open: fuzz_close_files; the memory it held is not freed: run
 * with -detect_leaks=0, and long runs in -fork mode, whose jobs are fresh
 * processes). A crash,
 * an ASan or UBSan report, a hang or an exit anywhere else is what the fuzzer
 * finds. Long runs silence those lines with libFuzzer's -close_fd_mask=2
 * (tests/fuzz/run.sh), which keeps libFuzzer's own output and the sanitizers'
 * reports: a job's closing statistics, which fork mode adds up, are printed
 * while an input runs when the job ends in a crash or a hang. */
#ifndef LDM_FUZZ_COMMON_H
#define LDM_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Runs body(context); returns 0, or the exit status fatal_* would have ended
 * the program with (2: bad input). */
int fuzz_run(void (*body)(void *context), void *context);

/* Writes bytes to NAME in this process's folder (made on first use, removed at
 * exit) and returns its path (valid until the next call with the same name). */
const char *fuzz_file(const char *name, const uint8_t *data, size_t size);
/* Closes every file descriptor open on a file of this process's folder (what
 * a refused input left open; the program would have exited). */
void fuzz_close_files(void);
/* The folder itself. */
const char *fuzz_folder(void);

/* Where targets add the bytes they read, so that the reads are not optimised away. */
extern volatile unsigned fuzz_sink;

/* The input as a NUL-terminated string (a copy: the fuzzer's bytes are not). */
char *fuzz_text(const uint8_t *data, size_t size);

#endif
