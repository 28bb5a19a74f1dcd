/* Each sample's draws of a distillation step (see distill_draws.h). */
#include "distill_draws.h"

#include "rng.h"

#define PURPOSE_DISTILL_NOISE 0x64697374696c6c7aull    /* "distillz" */
#define PURPOSE_DISTILL_GUIDANCE 0x6469737467756964ull /* "distguid" */

distill_sample_draw distill_draw_sample(const ldm_config *config, const double *points, int guidance_input,
                                        int32_t label, int64_t index, int64_t step) {
    const int pairs = config->distill.num_points - 1;
    rng_stream rng = rng_stream_for(rng_hash(config->train.seed, PURPOSE_DISTILL_NOISE), (uint64_t)step,
                                    (uint64_t)index);
    int n = (int)(rng_uniform(&rng) * (float)pairs);
    if (n >= pairs) n = pairs - 1;
    distill_sample_draw draw = {.sigma_now = (float)points[n], .sigma_next = (float)points[n + 1],
                                .y = label < 0 ? config->model.num_classes : label,
                                .guidance = (float)config->distill.guidance, .noise_stream = rng.state};
    /* From a stream of its own, so that a fixed scale leaves the rest as it was. */
    if (guidance_input) {
        const double low = config->distill.guidance, high = config->distill.guidance_max;
        rng_stream w_rng = rng_stream_for(rng_hash(config->train.seed, PURPOSE_DISTILL_GUIDANCE), (uint64_t)step,
                                          (uint64_t)index);
        draw.guidance = (float)(low + (high - low) * (double)rng_uniform(&w_rng));
    }
    return draw;
}
