/* The shapes of the networks a config describes: the DiT (model section), the
 * distillation student (the DiT with a guidance input when distill.guidance_max
 * asks for a range) and the autoencoder (autoencoder section). */
#ifndef LDM_MODEL_SHAPES_H
#define LDM_MODEL_SHAPES_H

#include "autoencoder.h"
#include "config.h"
#include "dit.h"

/* The DiT shape a config describes. */
dit_shape config_dit_shape(const ldm_config *config);
/* The shape of ldm distill's student: the teacher's (config_dit_shape), with a
 * guidance-scale input when config's distill.guidance_max asks for a range. */
dit_shape config_student_shape(const ldm_config *config);
/* The autoencoder shape the config's "autoencoder" section describes. */
autoencoder_shape config_autoencoder_shape(const ldm_config *config);

#endif
