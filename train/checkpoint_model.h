/* Finding the checkpoint of a trained model for the commands that use one
 * (ldm encode / decode take an autoencoder, ldm sample a DiT): rank 0 finds the
 * checkpoint (a checkpoint directory, or a run directory's newest checkpoint that
 * verifies), checks its manifest and that state.json names the expected kind,
 * and returns the config the model was trained with; the other ranks receive
 * what they need with checkpoint_model_broadcast_string. */
#ifndef LDM_CHECKPOINT_MODEL_H
#define LDM_CHECKPOINT_MODEL_H

typedef struct {
    const char *command; /* "encode": messages say "ldm encode takes ..." */
    const char *what;    /* "autoencoder", "model": "cannot read the autoencoder" */
    const char *kind;    /* the state.json kind required: "autoencoder", "dit" */
    const char *trainer; /* the command that makes such runs: "train-ae", "train" */
} checkpoint_model_request;

/* Rank 0 only: finds and checks the checkpoint of WHERE and returns the config
 * JSON text it was trained with (caller frees); *dir (caller frees) and *step are
 * set, and *data_kind (caller frees; NULL when state.json has no data.kind) when
 * data_kind is not NULL. Any problem is a fatal_input line. */
char *checkpoint_model_find(const checkpoint_model_request *request, const char *where, char **dir, long long *step,
                            char **data_kind);

/* Collective: sends a string from rank 0 to every rank (allocated on the others;
 * returns text on rank 0). */
char *checkpoint_model_broadcast_string(char *text);

/* "ABSOLUTE_DIR (step N, WEIGHTS weights)" (caller frees): how outputs name the model. */
char *checkpoint_model_description(const char *dir, long long step, const char *weights);

#endif
