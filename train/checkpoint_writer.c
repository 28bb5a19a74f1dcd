/* Checkpoints written beside training (see checkpoint_writer.h): one thread
 * per checkpoint, joined before the next one starts, so at most one write is
 * in flight and the copy it reads is never touched while it runs. */
#include "checkpoint_writer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"
#include "monotonic_clock.h"

struct checkpoint_writer {
    size_t count, fixed_count;
    /* the copy being written: (count) each, fixed (fixed_count), extra (count) or NULL */
    float *params, *ema, *adam_m, *adam_v, *fixed, *extra;
    checkpoint_contents contents; /* points at the copy */
    char *state_json;
    char *run_dir;
    int64_t step, keep_every;
    int keep_last;
    pthread_t thread;
    int writing;            /* a thread is running (or done and not yet joined) */
    char *published;        /* the directory it published */
    double started, seconds; /* when it started; how long it took */
};

static void *write_checkpoint(void *argument) {
    checkpoint_writer *w = argument;
    w->published = checkpoint_publish(w->run_dir, w->step, &w->contents, w->keep_last, w->keep_every);
    w->seconds = monotonic_seconds() - w->started;
    return NULL;
}

checkpoint_writer *checkpoint_writer_create(size_t count, size_t fixed_count, int with_extra) {
    checkpoint_writer *w = xcalloc(1, sizeof *w);
    w->count = count;
    w->fixed_count = fixed_count;
    w->params = xmalloc(count * sizeof(float));
    w->ema = xmalloc(count * sizeof(float));
    w->adam_m = xmalloc(count * sizeof(float));
    w->adam_v = xmalloc(count * sizeof(float));
    w->fixed = fixed_count ? xmalloc(fixed_count * sizeof(float)) : NULL;
    w->extra = with_extra ? xmalloc(count * sizeof(float)) : NULL;
    return w;
}

void checkpoint_writer_finish(checkpoint_writer *w) {
    if (!w->writing) return;
    const double waited_from = monotonic_seconds();
    int status = pthread_join(w->thread, NULL);
    if (status != 0) fatal_internal("checkpoint writer: pthread_join failed (%s)", strerror(status));
    w->writing = 0;
    const double waited = monotonic_seconds() - waited_from;
    if (waited >= 0.01)
        printf("checkpoint: %s (%.2f s, written beside training, which then waited %.2f s for it)\n",
               w->published, w->seconds, waited);
    else
        printf("checkpoint: %s (%.2f s, written beside training)\n", w->published, w->seconds);
    fflush(stdout);
    free(w->published), free(w->state_json), free(w->run_dir);
    w->published = w->state_json = w->run_dir = NULL;
}

void checkpoint_writer_start(checkpoint_writer *w, const char *run_dir, int64_t step,
                             const checkpoint_contents *contents, int keep_last, int64_t keep_every) {
    checkpoint_writer_finish(w);
    if ((contents->extra != NULL) != (w->extra != NULL) || (contents->fixed != NULL) != (w->fixed != NULL))
        fatal_internal("checkpoint writer: contents laid out otherwise than at create");
    const size_t bytes = w->count * sizeof(float);
    memcpy(w->params, contents->params, bytes);
    memcpy(w->ema, contents->ema, bytes);
    memcpy(w->adam_m, contents->adam_m, bytes);
    memcpy(w->adam_v, contents->adam_v, bytes);
    if (w->fixed) memcpy(w->fixed, contents->fixed, w->fixed_count * sizeof(float));
    if (w->extra) memcpy(w->extra, contents->extra, bytes);
    w->state_json = xstrdup(contents->state_json ? contents->state_json : "");
    w->run_dir = xstrdup(run_dir);
    w->contents = *contents;
    w->contents.params = w->params, w->contents.ema = w->ema;
    w->contents.adam_m = w->adam_m, w->contents.adam_v = w->adam_v;
    w->contents.fixed = w->fixed, w->contents.extra = w->extra;
    w->contents.state_json = w->state_json;
    w->step = step, w->keep_last = keep_last, w->keep_every = keep_every;
    w->started = monotonic_seconds();
    int status = pthread_create(&w->thread, NULL, write_checkpoint, w);
    if (status != 0) fatal_internal("checkpoint writer: pthread_create failed (%s)", strerror(status));
    w->writing = 1;
}

void checkpoint_writer_destroy(checkpoint_writer *w) {
    if (!w) return;
    checkpoint_writer_finish(w);
    free(w->params), free(w->ema), free(w->adam_m), free(w->adam_v), free(w->fixed), free(w->extra);
    free(w);
}
