/* See sample_runner.h. */
#include "sample_runner.h"

#include <stdlib.h>
#include <string.h>

#include "fatal.h"
#include "sample_pipeline.h"
#ifdef LDM_HAVE_CUDA
#include "autoencoder_cuda.h"
#include "dit_cuda.h"
#include "sample_pipeline_cuda.h"
#endif

struct sample_runner {
    int on_cuda;
    /* The CPU: the model the pipeline runs. The GPU: a host model for one
     * sample, holding the table and the weights that are uploaded. */
    dit_model host;
    sample_pipeline cpu;
    int channels, size;
    int64_t per_image;
#ifdef LDM_HAVE_CUDA
    dit_cuda_model dit;
    autoencoder_cuda_model decoder;
    int has_decoder;
    sample_pipeline_cuda gpu;
#endif
};

/* The network rows one evaluation needs for max_batch samples. */
static int model_rows(const sample_runner_options *o) {
    return o->edm && o->edm->guidance != 1.0 ? 2 * o->max_batch : o->max_batch;
}

static void create_cpu(sample_runner *r, const sample_runner_options *o) {
    dit_create(&r->host, o->shape, model_rows(o));
    if (o->consistency)
        sample_pipeline_create_consistency(&r->cpu, &r->host, o->consistency, o->sigma_data, o->max_batch, o->decoder,
                                           o->latent_mean, o->latent_std);
    else
        sample_pipeline_create(&r->cpu, &r->host, o->edm, o->sigma_data, o->max_batch, o->decoder, o->latent_mean,
                               o->latent_std);
    r->channels = r->cpu.channels, r->size = r->cpu.size, r->per_image = r->cpu.per_image;
}

#ifdef LDM_HAVE_CUDA
static void create_gpu(sample_runner *r, const sample_runner_options *o) {
    dit_create(&r->host, o->shape, 1);
    dit_cuda_create(&r->dit, o->shape, model_rows(o), PRECISION_FP32, 0);
    autoencoder_cuda_model *decoder = NULL;
    if (o->decoder) {
        autoencoder_cuda_create_purpose(&r->decoder, &o->decoder->shape, o->max_batch, o->decoder->precision,
                                        AE_FOR_DECODING);
        autoencoder_cuda_upload_params(&r->decoder, o->decoder->params);
        r->has_decoder = 1;
        decoder = &r->decoder;
    }
    if (o->consistency)
        sample_pipeline_cuda_create_consistency(&r->gpu, &r->dit, o->consistency, o->sigma_data, o->max_batch, decoder,
                                                o->latent_mean, o->latent_std);
    else
        sample_pipeline_cuda_create(&r->gpu, &r->dit, o->edm, o->sigma_data, o->max_batch, decoder, o->latent_mean,
                                    o->latent_std);
    r->channels = r->gpu.channels, r->size = r->gpu.size, r->per_image = r->gpu.per_image;
}
#endif

sample_runner *sample_runner_create(const sample_runner_options *o) {
    if (!o->edm == !o->consistency) fatal_internal("sample_runner_create: give EDM's or the consistency sampler");
    sample_runner *r = xcalloc(1, sizeof *r);
    r->on_cuda = o->on_cuda;
    if (!o->on_cuda) {
        create_cpu(r, o);
        return r;
    }
#ifdef LDM_HAVE_CUDA
    create_gpu(r, o);
#else
    fatal_internal("sample_runner_create: this build has no CUDA");
#endif
    return r;
}

void sample_runner_destroy(sample_runner *r) {
    if (!r) return;
    if (!r->on_cuda) {
        sample_pipeline_destroy(&r->cpu);
    } else {
#ifdef LDM_HAVE_CUDA
        sample_pipeline_cuda_destroy(&r->gpu);
        if (r->has_decoder) autoencoder_cuda_destroy(&r->decoder);
        dit_cuda_destroy(&r->dit);
#endif
    }
    dit_destroy(&r->host);
    free(r);
}

param_table *sample_runner_table(sample_runner *r) { return &r->host.table; }
float *sample_runner_params(sample_runner *r) { return r->host.params; }

void sample_runner_params_changed(sample_runner *r) {
#ifdef LDM_HAVE_CUDA
    if (r->on_cuda) dit_cuda_upload_params(&r->dit, r->host.params);
#else
    (void)r;
#endif
}

int sample_runner_channels(const sample_runner *r) { return r->channels; }
int sample_runner_size(const sample_runner *r) { return r->size; }
int64_t sample_runner_per_image(const sample_runner *r) { return r->per_image; }

void sample_runner_run(sample_runner *r, const int *labels, const int64_t *indices, int batch, float *images) {
    if (!r->on_cuda) {
        sample_pipeline_run(&r->cpu, labels, indices, batch, images);
        return;
    }
#ifdef LDM_HAVE_CUDA
    sample_pipeline_cuda_run(&r->gpu, labels, indices, batch, images);
#endif
}
