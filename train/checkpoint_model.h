/* Finding the checkpoint of a trained model for the commands that use one
 * (ldm encode / decode take an autoencoder, ldm sample a DiT): rank 0 finds the
 * checkpoint (a checkpoint directory, or a run directory's newest checkpoint that
 * verifies), checks its manifest and that state.json names the expected kind,
 * and returns the config the model was trained with; the other ranks receive
 * what they need with checkpoint_model_broadcast_string. */
#ifndef LDM_CHECKPOINT_MODEL_H
#define LDM_CHECKPOINT_MODEL_H

#include "autoencoder.h"
#include "config.h"
#include "dit.h"

#define CHECKPOINT_DATA_MAX_CHANNELS 64

/* What state.json says about the data set a model was trained on (a plain
 * struct, so that it can be broadcast as bytes). */
typedef struct {
    char kind[16];              /* "images", "latents", or "" when state.json does not say */
    int channels;
    int has_latent_statistics;  /* latents trained since the statistics are recorded */
    double latent_mean[CHECKPOINT_DATA_MAX_CHANNELS]; /* (channels) the normalisation the loader applied */
    double latent_std[CHECKPOINT_DATA_MAX_CHANNELS];
    char autoencoder[512];      /* what made the latents ("" when unknown) */
    /* the latents' units, (posterior - shift) * scaling (data/FORMAT.md): 1 and 0
     * unless state.json says otherwise */
    double latent_scaling_factor, latent_shift_factor;
} checkpoint_data;

typedef struct {
    const char *command; /* "encode": messages say "ldm encode takes ..." */
    const char *what;    /* "autoencoder", "model": "cannot read the autoencoder" */
    const char *kind;    /* the state.json kind required: "autoencoder", "dit" */
    const char *trainer; /* the command that makes such runs: "train-ae", "train" */
    const char *other_kind;    /* another kind also taken ("consistency" for ldm sample), or NULL */
    const char *other_trainer; /* the command that makes those ("distill") */
} checkpoint_model_request;

/* Rank 0 only: finds and checks the checkpoint of WHERE and returns the config
 * JSON text it was trained with (caller frees); *dir (caller frees) and *step are
 * set, and *data when data is not NULL. Any problem is a fatal_input line. */
char *checkpoint_model_find(const checkpoint_model_request *request, const char *where, char **dir, long long *step,
                            checkpoint_data *data);

/* Rank 0 only: state.json's member NAME of checkpoint DIR printed as JSON text
 * (caller frees), or NULL when it has none (ldm sample: the "consistency"
 * record of a student of ldm distill). */
char *checkpoint_model_state_record(const char *dir, const char *name);

/* Collective: sends a string from rank 0 to every rank (allocated on the others;
 * returns text on rank 0). */
char *checkpoint_model_broadcast_string(char *text);

/* "ABSOLUTE_DIR (step N, WEIGHTS weights)" (caller frees): how outputs name the model. */
char *checkpoint_model_description(const char *dir, long long step, const char *weights);

/* The autoencoder of a train-ae checkpoint, with the chosen weights, or of a
 * diffusers AutoencoderKL folder (autoencoder_diffusers.h). */
typedef struct {
    char *checkpoint;  /* the checkpoint directory (as found: RUN/checkpoints/step-N), or the diffusers folder */
    char *description; /* "CKPT (step N, ema weights)" or "DIR (diffusers AutoencoderKL, scaling_factor S)":
                          what outputs name it by */
    ldm_config config; /* an ldm run's; zero for a diffusers folder */
    autoencoder_shape shape;
    autoencoder_model model;
    int diffusers;         /* loaded from a diffusers folder */
    /* The units of the latents the model gives and takes: (posterior - shift_factor) *
     * scaling_factor, folded into the model's weights; 1 and 0 for ldm's own. */
    double scaling_factor, shift_factor;
} checkpoint_autoencoder;

/* Collective: the autoencoder of WHERE (--ae) with weights "ema" or "model",
 * laid out for purpose and batches of up to max_batch; command names the
 * command in messages. */
void checkpoint_autoencoder_load(checkpoint_autoencoder *ae, const char *command, const char *where,
                                 const char *weights, autoencoder_purpose purpose, int max_batch);
/* The same on this rank alone (rank 0 between training steps). */
void checkpoint_autoencoder_load_here(checkpoint_autoencoder *ae, const char *command, const char *where,
                                      const char *weights, autoencoder_purpose purpose, int max_batch);
/* The same for inputs of a given size: a diffusers folder (a convolutional network
 * whose config.json's sample_size is only a default) is laid out for images of
 * image_size or latents of latent_size (whichever is > 0; both 0: sample_size). An
 * ldm run's shape is fixed: the sizes are ignored there (callers check them). */
void checkpoint_autoencoder_load_sized(checkpoint_autoencoder *ae, const char *command, const char *where,
                                       const char *weights, autoencoder_purpose purpose, int max_batch,
                                       int image_size, int latent_size);
void checkpoint_autoencoder_load_here_sized(checkpoint_autoencoder *ae, const char *command, const char *where,
                                            const char *weights, autoencoder_purpose purpose, int max_batch,
                                            int image_size, int latent_size);
void checkpoint_autoencoder_free(checkpoint_autoencoder *ae);
/* A data set's per-channel latent mean and std (channels values each, in place),
 * of latents in the units (scaling, shift) (its latent_scaling_factor and
 * latent_shift_factor), as the units of ae's latents: (mean / scaling + shift -
 * ae's shift) ae's scaling, std ae's scaling / scaling; nothing when the units agree.
 * Undoing the loader's normalisation with them gives latents that ae decodes. */
void checkpoint_autoencoder_latent_units(const checkpoint_autoencoder *ae, double scaling, double shift, int channels,
                                         double *mean, double *std);
/* fatal_input unless the autoencoder's latents have the shape of the DiT's
 * input; model names the DiT in the message. */
void checkpoint_autoencoder_check_latents(const checkpoint_autoencoder *ae, const dit_shape *shape, const char *model);

/* The checkpoint path at the start of a data set's autoencoder attribute
 * ("PATH (step N, ema weights); ..." or "DIR (diffusers AutoencoderKL, ...); ...",
 * as ldm encode writes it), or NULL when it names none (caller frees). */
char *checkpoint_autoencoder_recorded_path(const char *attribute);

#endif
