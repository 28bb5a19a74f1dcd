/* See dit_validation.h. */
#include "dit_validation.h"

#include <stdlib.h>

#include "dit_pictures.h"
#include "fatal.h"

typedef struct {
    trainable_validator base; /* first: the loop's calls hand this back as their self */
    dit_shape shape;
    double sigma_data;
    int consistency;          /* 1: sample with consistency_options, else EDM's sampler */
    consistency_sampler_options consistency_options;
    int on_cuda;              /* the pictures sampled on the GPU */
    dit_pictures *pictures;   /* NULL until prepare */
} dit_validation;

static void prepare_pictures(trainable_validator *self, const validation_context *context) {
    dit_validation *v = (dit_validation *)self;
    v->pictures = dit_pictures_create_on(&v->shape, v->sigma_data, context->data, context->autoencoder,
                                         v->consistency ? &v->consistency_options : NULL, v->on_cuda);
}

static void write_pictures(trainable_validator *self, const validation_context *context, char *json,
                           size_t json_size, char *line, size_t line_size) {
    dit_validation *v = (dit_validation *)self;
    dit_pictures_write(v->pictures, context->ema, context->step, context->run_dir, json, json_size, line, line_size);
}

static void destroy_validation(trainable_validator *self) {
    dit_validation *v = (dit_validation *)self;
    dit_pictures_destroy(v->pictures);
    free(v);
}

trainable_validator *dit_validation_create(const dit_shape *shape, double sigma_data,
                                           const consistency_sampler_options *consistency) {
    return dit_validation_create_on(shape, sigma_data, consistency, 0);
}

trainable_validator *dit_validation_create_on(const dit_shape *shape, double sigma_data,
                                              const consistency_sampler_options *consistency, int on_cuda) {
    dit_validation *v = xcalloc(1, sizeof *v);
    v->on_cuda = on_cuda;
    v->base = (trainable_validator){.without_data = 1, .prepare = prepare_pictures, .validate = write_pictures,
                                    .destroy = destroy_validation};
    v->shape = *shape;
    v->sigma_data = sigma_data;
    if (consistency) v->consistency = 1, v->consistency_options = *consistency;
    return &v->base;
}
