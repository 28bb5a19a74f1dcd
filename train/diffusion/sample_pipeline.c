/* See sample_pipeline.h. */
#include "sample_pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "fatal.h"

/* What both samplers share: the decoder and its buffers. */
static void lay_out(sample_pipeline *p, dit_model *model, double sigma_data, int max_batch, autoencoder_model *decoder,
                    const double *latent_mean, const double *latent_std) {
    p->max_batch = max_batch;
    p->sigma_data = sigma_data;
    p->latent_channels = model->shape.in_channels;
    p->per_latent = (int64_t)model->shape.in_channels * model->shape.input_size * model->shape.input_size;
    p->decoder = decoder;
    const dit_shape *sh = &model->shape;
    if (!decoder) {
        p->channels = sh->in_channels;
        p->size = sh->input_size;
    } else {
        if (decoder->shape.latent_channels != sh->in_channels || decoder->latent_size != sh->input_size ||
            decoder->max_batch < max_batch)
            fatal_internal("sample_pipeline_create: the decoder does not fit the DiT's latents");
        p->channels = decoder->shape.in_channels;
        p->size = decoder->shape.input_size;
        const size_t c = (size_t)sh->in_channels;
        p->latent_mean = xmalloc(sizeof(double) * c);
        p->latent_std = xmalloc(sizeof(double) * c);
        memcpy(p->latent_mean, latent_mean, sizeof(double) * c);
        memcpy(p->latent_std, latent_std, sizeof(double) * c);
        p->latents = xcalloc((size_t)max_batch * (size_t)p->per_latent, sizeof(float));
    }
    p->per_image = (int64_t)p->channels * p->size * p->size;
    if (decoder) p->pictures = xmalloc(sizeof(float) * (size_t)max_batch * (size_t)p->per_image);
}

void sample_pipeline_create(sample_pipeline *p, dit_model *model, const sampler_options *options, double sigma_data,
                            int max_batch, autoencoder_model *decoder, const double *latent_mean,
                            const double *latent_std) {
    memset(p, 0, sizeof *p);
    sampler_create(&p->smp, model, options, sigma_data, max_batch);
    lay_out(p, model, sigma_data, max_batch, decoder, latent_mean, latent_std);
}

void sample_pipeline_create_consistency(sample_pipeline *p, dit_model *model,
                                        const consistency_sampler_options *options, double sigma_data, int max_batch,
                                        autoencoder_model *decoder, const double *latent_mean,
                                        const double *latent_std) {
    memset(p, 0, sizeof *p);
    p->consistency = 1;
    consistency_sampler_create(&p->csmp, model, options, sigma_data, max_batch);
    lay_out(p, model, sigma_data, max_batch, decoder, latent_mean, latent_std);
}

/* x (batch, latent C, h, w): the model's samples. */
static void sample(sample_pipeline *p, const int *labels, const int64_t *indices, int batch, float *x) {
    if (p->consistency)
        consistency_sampler_run(&p->csmp, labels, indices, batch, x);
    else
        sampler_run(&p->smp, labels, indices, batch, x);
}

void sample_pipeline_destroy(sample_pipeline *p) {
    if (p->consistency)
        consistency_sampler_destroy(&p->csmp);
    else
        sampler_destroy(&p->smp);
    free(p->latent_mean);
    free(p->latent_std);
    free(p->latents);
    free(p->pictures);
    memset(p, 0, sizeof *p);
}

void sample_pipeline_run(sample_pipeline *p, const int *labels, const int64_t *indices, int batch, float *images) {
    if (!p->decoder) {
        sample(p, labels, indices, batch, images);
        return;
    }
    const int64_t per_latent = p->per_latent;
    const int channels = p->latent_channels;
    const int64_t plane = per_latent / channels;
    sample(p, labels, indices, batch, p->latents);
    const double sigma_data = p->sigma_data;
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            float *z = p->latents + b * per_latent + c * plane;
            const float scale = (float)(p->latent_std[c] / sigma_data), shift = (float)p->latent_mean[c];
            for (int64_t i = 0; i < plane; i++) z[i] = z[i] * scale + shift;
        }
    memset(p->latents + batch * per_latent, 0, sizeof(float) * (size_t)((p->max_batch - batch) * per_latent));
    autoencoder_decode(p->decoder, p->latents, p->max_batch, p->pictures);
    memcpy(images, p->pictures, sizeof(float) * (size_t)(batch * p->per_image));
}
