/* The record that makes a checkpoint of `ldm distill` a consistency model: the
 * member "consistency" of its state.json, written by ldm distill and read by
 * ldm sample:
 *   {"teacher": "CKPT (step N, ema weights)", "guidance": W,
 *    "sigma_min": 0.002, "sigma_max": 80, "rho": 7, "num_points": 18,
 *    "sampling_sigmas": {"1": [80], "2": [80, 0.821], "4": [80, 17.5, 2.52, 0.17]}}
 * sampling_sigmas are the points of the multistep sampler for each number of
 * steps it supports (consistency_default_points). A student distilled over a
 * range of guidance scales (distill.guidance_max) also has "guidance_max": W2,
 * the range being [guidance, guidance_max]; the scale is then its input. */
#ifndef LDM_CONSISTENCY_RECORD_H
#define LDM_CONSISTENCY_RECORD_H

#include "config.h"
#include "consistency.h"

#define CONSISTENCY_RECORD_NAME "consistency"

/* The record's JSON text for a student distilled with config from the teacher
 * described by teacher (caller frees). */
char *consistency_record_json(const ldm_config *config, const char *teacher);

/* Reads the sampler's options for `steps` from the record's text (checkpoint,
 * the student's checkpoint directory, names it in errors): sigma_min and the
 * sigma points (steps 0: sigma_min only, for points given by hand); fatal_input
 * on a malformed record, or naming the steps it has when it has none for `steps`. */
void consistency_record_sampler(const char *json, const char *checkpoint, int steps, consistency_sampler_options *out);

/* On resume: the checkpoint's record (saved_json, of the checkpoint source)
 * against this run's (current_json): fatal_input on the first member that
 * differs. The teacher is compared by its checkpoint's name and step (its
 * folder may be reached by another path). */
void consistency_record_check_resume(const char *saved_json, const char *current_json, const char *source);

#endif
