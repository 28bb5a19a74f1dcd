/* See training_validation.h. */
#include "training_validation.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "atomic_file.h"
#include "fatal.h"
#include "loader.h"

void training_validation_open(training_validation *v, const training_job *job, trainable *model,
                              const dataset_info *data, int rank) {
    const ldm_config *config = job->config;
    *v = (training_validation){.every = config->train.sample_every, .total_steps = config->train.steps};
    trainable_validator *validator = model->validation;
    int count = 0;
    if (rank == 0 && job->validation_path && validator) {
        const int most = config->data.validation_samples;
        v->samples = xmalloc((size_t)most * (size_t)data->sample_elements * sizeof(float));
        v->labels = xmalloc((size_t)most * sizeof(int32_t));
        loader_options options = training_loader_options(config, model, job->validation_path, 1);
        count = loader_read_first(&options, most, v->samples, v->labels);
    }
    if (rank != 0 || !validator || v->every <= 0 || (count == 0 && !validator->without_data)) return;
    v->validator = validator;
    v->context = (validation_context){.samples = v->samples, .labels = v->labels, .count = count,
                                        .run_dir = job->run_dir, .data = data, .autoencoder = job->autoencoder_path};
    if (validator->prepare) validator->prepare(validator, &v->context);
}

const validation_report *training_validation_after_step(training_validation *v, parameter_store *store,
                                                        const float *ema, int64_t done) {
    if (!v->validator || (done % v->every != 0 && done != v->total_steps)) return NULL;
    store->to_host(store);
    v->context.ema = ema;
    v->context.step = done;
    validation_report *r = &v->report;
    v->validator->validate(v->validator, &v->context, r->json, sizeof r->json, r->line, sizeof r->line);
    /* Where the validators write their picture (trainable.h): TensorBoard shows it. */
    snprintf(r->picture, sizeof r->picture, "samples/step-%08lld.png", (long long)done);
    char *picture = path_join(v->context.run_dir, r->picture);
    if (access(picture, R_OK) != 0) r->picture[0] = 0;
    free(picture);
    return r;
}

void training_validation_close(training_validation *v) {
    free(v->samples);
    free(v->labels);
}
