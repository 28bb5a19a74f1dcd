/* The checkpoint directory format: RUN/checkpoints/step-00001000/ holds
 *   model.safetensors      fp32 weights under the DiT names (trainable and fixed)
 *   ema.safetensors        the EMA weights, same names
 *   optimizer.safetensors  AdamW moments, "exp_avg.<name>" and "exp_avg_sq.<name>"
 *                          for every trainable tensor; metadata "step" (AdamW steps)
 *   state.json             the training state, written by the trainer (opaque here)
 *   NAME.safetensors       optional more weights (distillation: target.safetensors)
 *   manifest.json          {"format": "ldm-checkpoint", "version": 1, "step": N,
 *                           "files": {"model.safetensors": {"bytes": B, "crc32": "8 hex"}, ...}}
 * A checkpoint is written as RUN/checkpoints/.partial-step-N, every file and the
 * directory fsynced, renamed to step-N, the checkpoints folder fsynced; then
 * RUN/checkpoints/latest (a symbolic link to step-N) is replaced atomically, and
 * only then are old checkpoints deleted (retention: the last keep_last, plus every
 * step that is a multiple of keep_every when keep_every > 0). A crash at any
 * moment leaves every published checkpoint whole (crash tests can slow the writes
 * down with LDM_TEST_SLOW_CHECKPOINT_MS, see checkpoint.c). */
#ifndef LDM_CHECKPOINT_H
#define LDM_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "params.h"
#include "safetensors.h"

#define CHECKPOINT_FORMAT_NAME "ldm-checkpoint"
#define CHECKPOINT_FORMAT_VERSION 1

typedef struct {
    const param_table *table; /* names and shapes; its entries' data pointers are not used */
    const float *params;      /* (table->trainable_numel) */
    const float *ema;         /* (table->trainable_numel) */
    const float *fixed;       /* (table->fixed_numel) written into both model and ema files */
    const float *adam_m;      /* (table->trainable_numel) */
    const float *adam_v;      /* (table->trainable_numel) */
    int64_t adam_step;
    const char *state_json;   /* state.json's text */
    /* Optional (NULL: none): more weights laid out like params, written as
     * "<extra_name>.safetensors" (with the fixed tensors) and listed in the
     * manifest, e.g. distillation's target network. */
    const float *extra;
    const char *extra_name;
} checkpoint_contents;

/* Rank 0 only (nothing collective). Publishes step's checkpoint under RUN
 * (creating RUN/checkpoints; a stale partial directory of any step is removed,
 * and a step-N that exists already is replaced) and applies retention; keep_last
 * must be >= 2. Returns the published directory (caller frees). Failures
 * (disk full, permissions) are fatal_internal, which ends every rank; the
 * previous checkpoints are untouched. */
char *checkpoint_publish(const char *run_dir, int64_t step, const checkpoint_contents *contents, int keep_last,
                         int64_t keep_every);

/* Checks a checkpoint directory: manifest.json present and well-formed, every
 * file it lists present with its size and checksum, the four files above all
 * listed (manifest.json does not list itself). Returns 0, or -1 with one line in
 * err naming the file and the fault:
 *   "DIR/model.safetensors: checksum mismatch (manifest a1b2c3d4, file 00ff00ff)"
 *   "DIR/ema.safetensors: 1234 bytes, manifest says 5678"   "DIR/state.json: missing" */
int checkpoint_verify(const char *checkpoint_dir, char *err, size_t err_size);

/* The same checks, going on past the first fault (for `ldm inspect`): report is
 * called once per file with failure NULL when the file is whole, or with the
 * fault's line. A manifest that cannot be read or is malformed is one failure
 * of "manifest.json" and ends the check. Returns the number of failures. */
typedef void (*checkpoint_verify_report)(const char *file_name, const char *failure, void *context);
int checkpoint_verify_files(const char *checkpoint_dir, checkpoint_verify_report report, void *context);

/* True when PATH holds a manifest.json (a checkpoint directory, whole or not). */
bool checkpoint_is_checkpoint_dir(const char *path);

/* RUN/checkpoints/step-* as paths, newest (highest step) first, unverified, in
 * *dirs (checkpoint_list_free). Returns the count; 0 also when RUN/checkpoints
 * does not exist. */
int checkpoint_list(const char *run_dir, char ***dirs);
void checkpoint_list_free(char **dirs, int count);

/* The checkpoint to resume from or inspect. PATH is either a checkpoint
 * directory (it holds manifest.json; returned as it is, verified by the caller)
 * or a run directory: then the newest RUN/checkpoints/step-* that passes
 * checkpoint_verify, each newer one that fails reported on stderr as
 * "ldm: warning: DIR: skipped: REASON". Returns NULL when the run has none that
 * passes (caller frees otherwise). */
char *checkpoint_find(const char *path);

/* A loaded checkpoint: the three tensor files read and validated, state.json's text. */
typedef struct {
    char *dir;
    safetensors_file model, ema, optimizer;
    char *state_json;
    int64_t adam_step;
} checkpoint_loaded;

/* Verifies and reads DIR; fatal_input naming the file on any problem. */
void checkpoint_load(const char *checkpoint_dir, checkpoint_loaded *out);
/* Copies a checkpoint's weights into flat buffers laid out by table: which is
 * the model or the EMA file. Every table entry must be present with its shape
 * (fatal_input naming the file and the tensor otherwise). fixed may be NULL. */
void checkpoint_copy_weights(const checkpoint_loaded *loaded, const safetensors_file *which, const param_table *table,
                             float *params, float *fixed);
/* Copies the AdamW moments (both (table->trainable_numel)). */
void checkpoint_copy_moments(const checkpoint_loaded *loaded, const param_table *table, float *adam_m, float *adam_v);
void checkpoint_loaded_free(checkpoint_loaded *loaded);
/* Reads a checkpoint's "<extra_name>.safetensors" (checkpoint_contents.extra)
 * into out (safetensors_free); fatal_input naming the file when it is missing
 * or damaged. The manifest's checks are checkpoint_load's. */
void checkpoint_read_extra(const char *checkpoint_dir, const char *extra_name, safetensors_file *out);

#endif
