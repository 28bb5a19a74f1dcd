/* What a distillation step draws for each sample, shared by the CPU distiller
 * (distill_trainable.c) and the GPU one (distill_cuda_trainable.c) so that
 * both distil the same thing: the pair of points (s_n, s_{n+1}), the label the
 * networks see, the guidance scale, and the stream its noise z comes from, all
 * keyed by (seed, step, the sample's row in the data set). */
#ifndef LDM_DISTILL_DRAWS_H
#define LDM_DISTILL_DRAWS_H

#include <stdint.h>

#include "config.h"

typedef struct {
    float sigma_now, sigma_next; /* s_n, s_{n+1} */
    int y;                       /* the label; num_classes (the null class) for unlabelled data */
    float guidance;              /* distill.guidance, or with a guidance input drawn in [guidance, guidance_max] */
    /* The rng_stream state after the draw of n: normal j of z is made from its
     * draws 2j + 1 and 2j + 2 (rng_normal). */
    uint64_t noise_stream;
} distill_sample_draw;

/* points (distill.num_points) increasing (consistency_point); label -1 without. */
distill_sample_draw distill_draw_sample(const ldm_config *config, const double *points, int guidance_input,
                                        int32_t label, int64_t index, int64_t step);

#endif
