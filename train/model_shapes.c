/* The network shapes of a config (see model_shapes.h). */
#include "model_shapes.h"

#include <string.h>

dit_shape config_dit_shape(const ldm_config *config) {
    const model_config *m = &config->model;
    dit_shape s = {
        .input_size = m->input_size,
        .in_channels = m->in_channels,
        .patch_size = m->patch_size,
        .hidden_size = m->hidden_size,
        .depth = m->depth,
        .num_heads = m->num_heads,
        .mlp_hidden = (int)(m->hidden_size * m->mlp_ratio),
        .num_classes = m->num_classes,
    };
    return s;
}

dit_shape config_student_shape(const ldm_config *config) {
    dit_shape s = config_dit_shape(config);
    s.guidance_input = config->distill.guidance_max > 0;
    return s;
}

autoencoder_shape config_autoencoder_shape(const ldm_config *config) {
    const autoencoder_config *a = &config->autoencoder;
    autoencoder_shape s = {
        .in_channels = a->in_channels,
        .input_size = a->input_size,
        .levels = a->block_out_channels.count,
        .layers_per_block = a->layers_per_block,
        .latent_channels = a->latent_channels,
        .norm_groups = a->norm_groups,
    };
    _Static_assert(AE_MAX_LEVELS == CONFIG_INT_LIST_MAX, "a config list of widths must fit the model's levels");
    memcpy(s.block_out_channels, a->block_out_channels.values, sizeof(int) * AE_MAX_LEVELS);
    return s;
}
