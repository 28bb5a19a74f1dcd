/* The job configuration: one JSON file with sections "model", "diffusion",
 * "train", "data", "autoencoder", "distill" and "device", every key validated
 * against a schema table, any key overridable with "--set section.key=value".
 * Keys left out take the defaults below (docs/cli.md lists them). */
#ifndef LDM_CONFIG_H
#define LDM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char type[16];        /* "dit" */
    int input_size;       /* spatial size of the (latent) input, H = W; default 8 */
    int in_channels;      /* default 4 */
    int patch_size;       /* default 1; input_size % patch_size == 0 */
    int hidden_size;      /* default 384; multiple of 4 and of num_heads */
    int depth;            /* default 12 */
    int num_heads;        /* default 6 */
    double mlp_ratio;     /* default 4.0 */
    int num_classes;      /* default 10; the label table has num_classes + 1 rows (null class) */
    double class_dropout; /* default 0.1, in [0, 1) */
} model_config;

typedef struct {
    double sigma_data; /* default 0.5, > 0 */
    double p_mean;     /* default -1.2 */
    double p_std;      /* default 1.2, > 0 */
} diffusion_config;

typedef struct {
    int64_t steps;        /* default 100000, >= 1 */
    int batch_size;       /* global batch, default 256, >= 1 */
    int micro_batch;      /* 0 = batch_size / world size */
    double lr;            /* default 1e-4, > 0 */
    int64_t warmup_steps; /* default 1000, >= 0 */
    char lr_schedule[16]; /* "constant" | "cosine" */
    double weight_decay;  /* default 0, >= 0 */
    double grad_clip;     /* default 1.0, >= 0 (0 = off) */
    double ema_decay;     /* default 0.9999, in [0, 1) */
    int64_t ema_halflife_images; /* EMA half-life in images (EDM), default 0 = ema_decay with warmup */
    double ema_rampup;    /* half-life at most images_seen * ema_rampup, default 0.05, >= 0 (0 = off) */
    double adam_beta1;    /* default 0.9, in [0, 1) */
    double adam_beta2;    /* default 0.999, in [0, 1) */
    double adam_eps;      /* default 1e-8, > 0 */
    char precision[8];    /* "fp32" | "bf16" | "fp16" */
    double loss_scale_initial; /* fp16's dynamic loss scale at step 0, default 65536 (2^16), > 0 */
    int64_t loss_scale_growth_interval; /* fp16: the scale doubles after this many good steps in a row, default 2000 */
    uint64_t seed;        /* default 0, >= 0 */
    int64_t log_every;    /* default 10, >= 1 */
    int64_t ckpt_every;   /* default 1000, >= 1 */
    int ckpt_keep;        /* default 3, >= 2 */
    int64_t ckpt_keep_every; /* also keep checkpoints at multiples of this step, default 0 (off) */
    int64_t sample_every; /* default 5000, >= 0 (0 = off) */
    int max_nonfinite_steps; /* this many skipped (non-finite) steps in a row end the run; default 5 */
} train_config;

typedef struct {
    bool flip;            /* random horizontal flips, default false */
    int memory_budget_mb; /* a rank's samples are held in memory when they fit, else streamed; default 4096 */
    int prefetch_batches; /* batches assembled ahead of training, default 2, in [1, 64] */
    int virtual_shards;   /* V: the data order is the same on every world size dividing V; default 64 */
    int validation_samples; /* held-out samples (the first of --val-data) validated on, default 256 */
} data_config;

/* A list of integers as a config value, e.g. autoencoder.block_out_channels.
 * Entries past count are zero, so that equal configs compare equal with memcmp. */
#define CONFIG_INT_LIST_MAX 8
typedef struct {
    int count;
    int values[CONFIG_INT_LIST_MAX];
} config_int_list;

/* The KL autoencoder (LDM first stage, diffusers AutoencoderKL names). */
typedef struct {
    int in_channels;                    /* image channels, default 3 */
    int input_size;                     /* image H = W, default 32; a multiple of 2^(levels - 1) */
    config_int_list block_out_channels; /* width of each level, default [64, 128, 128]; each a multiple of norm_groups */
    int layers_per_block;               /* ResNet blocks per encoder level (decoder: one more), default 1 */
    int latent_channels;                /* default 4 */
    int norm_groups;                    /* GroupNorm groups, default 32 */
    double kl_beta;                     /* weight of the KL term, default 1e-6, >= 0 */
    char reconstruction_loss[8];        /* "l1" | "l2", default "l1" */
    bool sample_posterior;              /* decode z = mean + std * noise (true) or z = mean (false), as diffusers'
                                         * AutoencoderKL.forward(sample_posterior); default false */
} autoencoder_config;

/* Consistency distillation (ldm distill; Song et al. 2023) in the teacher's EDM sigma space. */
typedef struct {
    int num_points;    /* N discretisation points on the rho schedule, default 18, >= 2 */
    double sigma_min;  /* default 0.002, > 0: where the consistency function is the identity */
    double sigma_max;  /* default 80, > sigma_min */
    double rho;        /* default 7, > 0 */
    double target_ema; /* mu: the target network's EMA rate of the student, default 0.95, in [0, 1) */
    char loss[16];     /* "pseudo_huber" | "l2", default "pseudo_huber" */
    double huber_c;    /* pseudo-Huber's c, default 0 = 0.00054 sqrt(C H W) (Song & Dhariwal 2023), >= 0 */
    double guidance;   /* the teacher's classifier-free guidance scale, default 1 (none), >= 0 */
    /* 0 (default): the scale is fixed at guidance. Above guidance: each sample's
     * scale is drawn uniformly from [guidance, guidance_max] and is an input of
     * the student (dit_shape.guidance_input, as in Latent Consistency Models),
     * which then samples at any scale in that range (ldm sample --cfg). */
    double guidance_max;
} distill_config;

/* Where training computes. A setting of the machine, not of the run: it may
 * differ on resume (a checkpoint is the same files on either device). */
typedef struct {
    char type[8]; /* "auto" (default: cuda in a CUDA build on a machine with a GPU, else cpu) | "cpu" | "cuda" */
} device_config;

/* Communication between ranks. A setting of the machine, like device: it may
 * differ on resume. */
typedef struct {
    double timeout_s; /* a rank silent this long (stopped, frozen) ends the job, default 300, > 0 */
} comm_config;

typedef struct {
    model_config model;
    diffusion_config diffusion;
    train_config train;
    data_config data;
    autoencoder_config autoencoder;
    distill_config distill;
    device_config device;
    comm_config comm;
} ldm_config;

/* Fills every field with its default. */
void config_defaults(ldm_config *config);

/* Loads PATH (NULL: defaults only), applies the overrides ("section.key=value",
 * value parsed as JSON when it parses, else taken as a string), validates every
 * key and the cross-field rules. Returns 0, or -1 with one line in err naming the
 * file and the key: "configs/x.json: model.depth: expected an integer >= 1, got -3".
 * Errors in an override name "--set model.depth=-3" instead of the file. */
int config_load(ldm_config *config, const char *path, const char *const *overrides,
                int override_count, char *err, size_t err_size);

/* The same from JSON text held in memory (a checkpoint's state.json "config"
 * object printed back to text): source names it in errors where config_load names
 * the file, e.g. "run/checkpoints/step-00000100/state.json: config". */
int config_load_json_text(ldm_config *config, const char *text, const char *source, const char *const *overrides,
                          int override_count, char *err, size_t err_size);

/* The resolved config as pretty-printed JSON (caller frees), every key present. */
char *config_to_json(const ldm_config *config);

#endif
