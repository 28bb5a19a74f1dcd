/* CUDA emulation (see cuda_emulation_queue.h): streams, events and the
 * queues that make the emulated device asynchronous.
 *
 * Every queued operation gets a global sequence number and a list of marks,
 * (stream, sequence number) pairs: "everything queued on that stream up to
 * that number runs before me". Its own stream's earlier work is implied (a
 * stream is a queue). The marks come from CUDA's rules:
 *  - cudaStreamWaitEvent(s, e) queues a no-op on s marked with e's record;
 *  - the legacy default stream (NULL): work on it is marked with the last work
 *    of every blocking stream (cudaStreamCreate, flag cudaStreamDefault), and
 *    work on a blocking stream with the NULL stream's last work; streams made
 *    with cudaStreamNonBlocking get no such marks.
 * Running a stream up to a number runs, for each operation in order, its marks
 * first (recursively) and then the operation. Marks only ever point to earlier
 * numbers, so this ends, and the order is one that CUDA allows.
 *
 * An event is a mark: the last work of its stream when it was recorded (a
 * no-op queued there, which takes the time for cudaEventElapsedTime when it
 * runs). Destroying a stream runs its work first; a mark on a destroyed
 * stream is satisfied (that work has run). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_emulation_queue.h"
#include "cuda_runtime_api.h"
#include "fatal.h"

cudaError_t cuda_emulation_result(cudaError_t error); /* cuda_emulation_runtime.c */

#define STREAM_MAGIC 0x5354524du
#define EVENT_MAGIC 0x45564e54u

typedef struct {
    cudaStream_t stream;
    unsigned long long sequence;
} mark;

typedef struct queued_work {
    struct queued_work *next;
    unsigned long long sequence;
    const char *what;
    void (*run)(void *);
    void (*release)(void *);
    void *data;
    cuda_emulation_work_reads reads;
    int mark_count;
    mark *marks;
} queued_work;

struct CUstream_st {
    unsigned int magic;
    unsigned int flags;
    queued_work *head, *tail; /* waiting to run, in order */
    unsigned long long last_sequence; /* of the last work queued here (0: none yet) */
};

struct CUevent_st {
    unsigned int magic;
    unsigned int flags;
    int recorded;
    mark record;       /* the no-op queued by the last cudaEventRecord */
    unsigned int generation;
    int completed_record; /* the last record's no-op has run */
    int pending_stamps;   /* record no-ops not yet run: they refer to the event */
    double seconds;    /* when it ran */
};

static struct CUstream_st legacy_stream = {STREAM_MAGIC, 0, NULL, NULL, 0};
static unsigned long long next_sequence = 1;

/* Live streams, in creation order (the legacy stream first). */
static cudaStream_t *streams;
static size_t stream_count, stream_capacity;

static cudaStream_t resolve(cudaStream_t stream) { return stream ? stream : &legacy_stream; }

static void register_stream(cudaStream_t stream) {
    if (stream_count == stream_capacity) {
        stream_capacity = stream_capacity ? 2 * stream_capacity : 16;
        streams = realloc(streams, stream_capacity * sizeof *streams);
        if (!streams) fatal_internal("CUDA emulation: out of memory for the stream registry");
    }
    streams[stream_count++] = stream;
}

static int is_live(cudaStream_t stream) {
    if (stream == &legacy_stream) return 1;
    for (size_t i = 0; i < stream_count; i++)
        if (streams[i] == stream) return 1;
    return 0;
}

void cuda_emulation_require_stream(cudaStream_t stream, const char *what) {
    if (stream && (!is_live(stream) || stream->magic != STREAM_MAGIC))
        fatal_internal("CUDA emulation: %s: %p is not a live stream", what, (void *)stream);
}

static int blocking(cudaStream_t stream) { return !(stream->flags & cudaStreamNonBlocking); }

/* Everything on stream up to sequence has run. */
static int done_through(cudaStream_t stream, unsigned long long sequence) {
    return !is_live(stream) || !stream->head || stream->head->sequence > sequence;
}

static void run_through(cudaStream_t stream, unsigned long long sequence) {
    while (stream->head && stream->head->sequence <= sequence) {
        queued_work *work = stream->head;
        for (int i = 0; i < work->mark_count; i++)
            if (!done_through(work->marks[i].stream, work->marks[i].sequence))
                run_through(work->marks[i].stream, work->marks[i].sequence);
        if (stream->head != work)
            fatal_internal("CUDA emulation: the queue of a stream changed while %s waited for its marks", work->what);
        stream->head = work->next;
        if (!stream->head) stream->tail = NULL;
        if (work->run) work->run(work->data);
        if (work->release) work->release(work->data);
        free(work->marks);
        free(work);
    }
}

static void add_mark(queued_work *work, cudaStream_t stream, unsigned long long sequence) {
    if (done_through(stream, sequence)) return;
    mark *grown = realloc(work->marks, (size_t)(work->mark_count + 1) * sizeof *grown);
    if (!grown) fatal_internal("CUDA emulation: out of memory for a queue");
    work->marks = grown;
    work->marks[work->mark_count++] = (mark){stream, sequence};
}

/* Queues work; the marks the legacy default stream's rules give it are added
 * here, further ones (an event's) by the caller before the next queueing. */
static queued_work *enqueue(cudaStream_t stream, const char *what, void (*run)(void *), void (*release)(void *),
                            void *data, cuda_emulation_work_reads reads) {
    stream = resolve(stream);
    queued_work *work = calloc(1, sizeof *work);
    if (!work) fatal_internal("CUDA emulation: out of memory for a queue");
    *work = (queued_work){NULL, next_sequence++, what, run, release, data, reads, 0, NULL};
    if (stream == &legacy_stream) {
        for (size_t i = 0; i < stream_count; i++)
            if (blocking(streams[i])) add_mark(work, streams[i], streams[i]->last_sequence);
    } else if (blocking(stream)) {
        add_mark(work, &legacy_stream, legacy_stream.last_sequence);
    }
    if (stream->tail) stream->tail->next = work;
    else stream->head = work;
    stream->tail = work;
    stream->last_sequence = work->sequence;
    return work;
}

void cuda_emulation_enqueue(cudaStream_t stream, const char *what, void (*run)(void *), void (*release)(void *),
                            void *data, cuda_emulation_work_reads reads) {
    cuda_emulation_require_stream(stream, what);
    enqueue(stream, what, run, release, data, reads);
}

void cuda_emulation_drain_stream(cudaStream_t stream) {
    stream = resolve(stream);
    run_through(stream, stream->last_sequence);
}

void cuda_emulation_drain_all(void) {
    cuda_emulation_drain_stream(NULL);
    for (size_t i = 0; i < stream_count; i++) cuda_emulation_drain_stream(streams[i]);
}

static int overlaps(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    const char *ac = a, *bc = b;
    return a_bytes && b_bytes && ac < bc + b_bytes && bc < ac + a_bytes;
}

int cuda_emulation_host_bytes_pending_read(const void *p, size_t bytes) {
    for (size_t i = 0; i <= stream_count; i++) {
        cudaStream_t stream = i < stream_count ? streams[i] : &legacy_stream;
        for (const queued_work *work = stream->head; work; work = work->next)
            if (overlaps(work->reads.host_read, work->reads.host_read_bytes, p, bytes)) return 1;
    }
    return 0;
}

/* ---- streams ---- */

cudaError_t cudaStreamCreateWithPriority(cudaStream_t *stream, unsigned int flags, int priority) {
    (void)priority;
    *stream = calloc(1, sizeof **stream);
    if (!*stream) return cuda_emulation_result(cudaErrorMemoryAllocation);
    **stream = (struct CUstream_st){STREAM_MAGIC, flags, NULL, NULL, 0};
    register_stream(*stream);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    return cudaStreamCreateWithPriority(stream, flags, 0);
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithPriority(stream, 0, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream || !is_live(stream) || stream == &legacy_stream || stream->magic != STREAM_MAGIC)
        return cuda_emulation_result(cudaErrorInvalidResourceHandle);
    /* CUDA lets the queued work finish after the call; it runs now. */
    cuda_emulation_drain_stream(stream);
    for (size_t i = 0; i < stream_count; i++)
        if (streams[i] == stream) {
            memmove(streams + i, streams + i + 1, (stream_count - i - 1) * sizeof *streams);
            stream_count--;
            break;
        }
    stream->magic = 0;
    free(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    cuda_emulation_require_stream(stream, "cudaStreamSynchronize");
    cuda_emulation_drain_stream(stream);
    return cudaSuccess;
}

static cudaError_t require_event(cudaEvent_t event) {
    return event && event->magic == EVENT_MAGIC ? cudaSuccess : cuda_emulation_result(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    (void)flags;
    cuda_emulation_require_stream(stream, "cudaStreamWaitEvent");
    if (require_event(event) != cudaSuccess) return cudaErrorInvalidResourceHandle;
    /* An event never recorded: nothing to wait for, as in CUDA. */
    if (!event->recorded || done_through(event->record.stream, event->record.sequence)) return cudaSuccess;
    queued_work *wait = enqueue(stream, "cudaStreamWaitEvent", NULL, NULL, NULL, (cuda_emulation_work_reads){0});
    add_mark(wait, event->record.stream, event->record.sequence);
    return cudaSuccess;
}

typedef struct {
    cudaHostFn_t fn;
    void *user_data;
} host_call;

static void run_host_call(void *data) {
    host_call *call = data;
    call->fn(call->user_data);
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *user_data) {
    cuda_emulation_require_stream(stream, "cudaLaunchHostFunc");
    host_call *call = malloc(sizeof *call);
    if (!call) return cuda_emulation_result(cudaErrorMemoryAllocation);
    *call = (host_call){fn, user_data};
    cuda_emulation_enqueue(stream, "cudaLaunchHostFunc", run_host_call, free, call, (cuda_emulation_work_reads){0});
    return cudaSuccess;
}

/* ---- events ---- */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    *event = calloc(1, sizeof **event);
    if (!*event) return cuda_emulation_result(cudaErrorMemoryAllocation);
    (*event)->magic = EVENT_MAGIC;
    (*event)->flags = flags;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

static int event_done(cudaEvent_t event) {
    return !event->recorded || done_through(event->record.stream, event->record.sequence);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (require_event(event) != cudaSuccess) return cudaErrorInvalidResourceHandle;
    event->magic = 0;
    /* Queued record no-ops refer to it: the last of them frees it. */
    if (event->pending_stamps == 0) free(event);
    return cudaSuccess;
}

typedef struct {
    cudaEvent_t event;
    unsigned int generation;
} event_stamp;

static void run_event_stamp(void *data) {
    event_stamp *stamp = data;
    cudaEvent_t event = stamp->event;
    event->pending_stamps--;
    if (event->magic != EVENT_MAGIC) {
        if (event->pending_stamps == 0) free(event); /* destroyed while this was queued */
        return;
    }
    if (event->generation != stamp->generation) return; /* recorded again since */
    event->completed_record = 1;
    event->seconds = now_seconds();
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    cuda_emulation_require_stream(stream, "cudaEventRecord");
    if (require_event(event) != cudaSuccess) return cudaErrorInvalidResourceHandle;
    event_stamp *stamp = malloc(sizeof *stamp);
    if (!stamp) return cuda_emulation_result(cudaErrorMemoryAllocation);
    *stamp = (event_stamp){event, ++event->generation};
    event->recorded = 1;
    event->completed_record = 0;
    event->pending_stamps++;
    queued_work *work =
        enqueue(stream, "cudaEventRecord", run_event_stamp, free, stamp, (cuda_emulation_work_reads){0});
    event->record = (mark){resolve(stream), work->sequence};
    return cudaSuccess;
}

/* The host waits for the event: the work it marks runs now (a query that
 * would say "not ready" waits instead, so the answer is always "done"). */
static cudaError_t wait_for_event(cudaEvent_t event) {
    if (require_event(event) != cudaSuccess) return cudaErrorInvalidResourceHandle;
    if (!event_done(event)) run_through(event->record.stream, event->record.sequence);
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) { return wait_for_event(event); }

cudaError_t cudaEventSynchronize(cudaEvent_t event) { return wait_for_event(event); }

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (require_event(start) != cudaSuccess || require_event(end) != cudaSuccess)
        return cudaErrorInvalidResourceHandle;
    if (!start->recorded || !end->recorded || (start->flags | end->flags) & cudaEventDisableTiming)
        return cuda_emulation_result(cudaErrorInvalidResourceHandle);
    if (!start->completed_record || !end->completed_record) return cuda_emulation_result(cudaErrorNotReady);
    *ms = (float)((end->seconds - start->seconds) * 1e3);
    return cudaSuccess;
}
