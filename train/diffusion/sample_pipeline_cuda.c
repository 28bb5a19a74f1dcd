/* See sample_pipeline_cuda.h. */
#ifdef LDM_HAVE_CUDA

#include "sample_pipeline_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "dit_cuda_kernels.h"
#include "fatal.h"
#include "sampler_cuda_kernels.h"

/* What both samplers share: the decoder and the normalisation it undoes. */
static void lay_out(sample_pipeline_cuda *p, dit_cuda_model *model, double sigma_data, int max_batch,
                    autoencoder_cuda_model *decoder, const double *latent_mean, const double *latent_std) {
    const dit_shape *sh = &model->shape;
    p->max_batch = max_batch;
    p->latent_channels = sh->in_channels;
    p->per_latent = (int64_t)sh->in_channels * sh->input_size * sh->input_size;
    p->decoder = decoder;
    if (!decoder) {
        p->channels = sh->in_channels;
        p->size = sh->input_size;
    } else {
        if (decoder->shape.latent_channels != sh->in_channels || decoder->latent_size != sh->input_size ||
            decoder->max_batch < max_batch || !decoder->decode_input)
            fatal_internal("sample_pipeline_cuda_create: the decoder does not fit the DiT's latents");
        p->channels = decoder->shape.in_channels;
        p->size = decoder->shape.input_size;
        const int c = sh->in_channels;
        float *host = xmalloc(sizeof(float) * 2 * (size_t)c); /* scale, then shift, as sample_pipeline.c rounds them */
        for (int i = 0; i < c; i++) {
            host[i] = (float)(latent_std[i] / sigma_data);
            host[c + i] = (float)latent_mean[i];
        }
        p->scale = cuda_buffer_alloc(sizeof(float) * 2 * (size_t)c);
        p->shift = p->scale + c;
        cuda_copy_to_device(p->scale, host, sizeof(float) * 2 * (size_t)c);
        free(host);
    }
    p->per_image = (int64_t)p->channels * p->size * p->size;
}

void sample_pipeline_cuda_create(sample_pipeline_cuda *p, dit_cuda_model *model, const sampler_options *options,
                                 double sigma_data, int max_batch, autoencoder_cuda_model *decoder,
                                 const double *latent_mean, const double *latent_std) {
    memset(p, 0, sizeof *p);
    sampler_cuda_create(&p->smp, model, options, sigma_data, max_batch);
    lay_out(p, model, sigma_data, max_batch, decoder, latent_mean, latent_std);
}

void sample_pipeline_cuda_create_consistency(sample_pipeline_cuda *p, dit_cuda_model *model,
                                             const consistency_sampler_options *options, double sigma_data,
                                             int max_batch, autoencoder_cuda_model *decoder,
                                             const double *latent_mean, const double *latent_std) {
    memset(p, 0, sizeof *p);
    sampler_cuda_create_consistency(&p->smp, model, options, sigma_data, max_batch);
    lay_out(p, model, sigma_data, max_batch, decoder, latent_mean, latent_std);
}

void sample_pipeline_cuda_destroy(sample_pipeline_cuda *p) {
    sampler_cuda_destroy(&p->smp);
    cuda_buffer_free(p->scale);
    memset(p, 0, sizeof *p);
}

void sample_pipeline_cuda_run(sample_pipeline_cuda *p, const int *labels, const int64_t *indices, int batch,
                              float *images) {
    dit_cuda_model *model = p->smp.model;
    const float *x = sampler_cuda_run(&p->smp, labels, indices, batch);
    if (!p->decoder) {
        dit_cuda_synchronize(model);
        cuda_copy_to_host(images, x, sizeof(float) * (size_t)batch * (size_t)p->per_latent);
        return;
    }
    autoencoder_cuda_model *decoder = p->decoder;
    const size_t used = (size_t)batch * (size_t)p->per_latent;
    const size_t all = (size_t)p->max_batch * (size_t)p->per_latent;
    const size_t plane = (size_t)(p->per_latent / p->latent_channels);
    /* The decoder's stream must not still read its input from the last run. */
    dit_cuda_stream_synchronize(decoder->stream);
    sampler_unnormalize_cuda(decoder->decode_input, x, p->scale, p->shift, p->latent_channels, plane, used,
                             model->stream);
    dit_cuda_zero_async(decoder->decode_input + used, sizeof(float) * (all - used), model->stream);
    /* The two streams are not ordered with each other: the host waits between them. */
    dit_cuda_synchronize(model);
    const float *decoded = autoencoder_cuda_decode(decoder, p->max_batch);
    dit_cuda_stream_synchronize(decoder->stream);
    cuda_copy_to_host(images, decoded, sizeof(float) * (size_t)batch * (size_t)p->per_image);
}

#endif /* LDM_HAVE_CUDA */
