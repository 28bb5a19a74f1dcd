/* CUDA emulation: the kernel scheduler (see cuda_runtime.h). A launch is
 * queued on its stream (cuda_emulation_queue.h); when the queue runs it, it runs its
 * blocks one after another; the threads of a block run as coroutines on
 * stacks of their own, each until it finishes or waits at a barrier
 * (__syncthreads, or a warp shuffle). Once every thread that has not finished
 * waits, the barrier is released: for __syncthreads when every live thread of
 * the block waits there, for a shuffle when every lane of the warp does. If
 * threads wait and no barrier can be released (some at __syncthreads, others
 * finished or at a shuffle), the kernel would hang or misbehave on a GPU: the
 * program ends, naming the kernel and the block.
 *
 * Speed: a kernel whose first launch met no barrier (the elementwise ones) is
 * later run as plain calls, one per thread, without coroutines; one that then
 * meets a barrier after all ends the program with a message rather than
 * misbehave. Coroutines start through setcontext and switch with
 * _setjmp/_longjmp, which (unlike swapcontext) make no system call. */
#undef _FORTIFY_SOURCE /* its longjmp check refuses the jumps between coroutine stacks */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "cuda_emulation_queue.h"
#include "cuda_runtime.h"
#include "fatal.h"

cuda_emulation_coordinates threadIdx, blockIdx, blockDim, gridDim;

#define MAX_BLOCK_THREADS 1024
#define STACK_BYTES ((size_t)256 << 10)
#define MAX_KERNELS 512
#define WARP 32

enum thread_state { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, FINISHED };

typedef struct {
    ucontext_t start;  /* how the thread first enters */
    jmp_buf resume;    /* where it waits at a barrier */
    enum thread_state state;
    int started;       /* its coroutine has been entered (once for good) */
    unsigned int mask; /* at a warp barrier: the lanes that take part */
    unsigned char shuffle_slot[16];
} emulated_thread;

/* The launch being run. */
static struct {
    const char *name;
    emulated_thread *threads; /* (MAX_BLOCK_THREADS) */
    char *stacks;             /* (MAX_BLOCK_THREADS * STACK_BYTES), reserved once, touched as used */
    int count;                /* threads per block */
    int current;              /* the running thread, -1: the scheduler */
    int coroutines;           /* 1 while the threads run as coroutines */
    int met_barrier;          /* a barrier was met in this launch */
    jmp_buf scheduler;
    void (*body)(void *);
    void *closure;
} launch = {.current = -1};

/* Kernels whose first launch met no barrier. */
static const void *barrier_free[MAX_KERNELS];
static int barrier_free_count;

static int is_barrier_free(const void *kernel) {
    for (int i = 0; i < barrier_free_count; i++)
        if (barrier_free[i] == kernel) return 1;
    return 0;
}

static void set_thread_coordinates(int linear) {
    threadIdx.x = (unsigned int)linear % blockDim.x;
    threadIdx.y = ((unsigned int)linear / blockDim.x) % blockDim.y;
    threadIdx.z = (unsigned int)linear / (blockDim.x * blockDim.y);
}

/* A thread slot's coroutine, entered once through setcontext: it runs the
 * body for every block of every launch it is resumed for, and after each
 * waits to be resumed again, so that no system call (setcontext's signal
 * mask) is made per thread. */
static void thread_entry(void) {
    for (;;) {
        launch.body(launch.closure);
        emulated_thread *self = &launch.threads[launch.current];
        self->state = FINISHED;
        if (!_setjmp(self->resume)) _longjmp(launch.scheduler, 1);
    }
}

/* From a thread: wait in `state` until the scheduler releases it. */
static void wait_at_barrier(enum thread_state state, const char *what) {
    if (!launch.coroutines)
        fatal_internal("CUDA emulation: kernel %s met %s in a launch run without coroutines (its first launch met "
                       "no barrier); a kernel must meet barriers in every launch or in none",
                       launch.name, what);
    launch.met_barrier = 1;
    emulated_thread *self = &launch.threads[launch.current];
    self->state = state;
    if (!_setjmp(self->resume)) _longjmp(launch.scheduler, 1);
    set_thread_coordinates(launch.current);
}

void cuda_emulation_sync_block(void) { wait_at_barrier(AT_BLOCK_BARRIER, "__syncthreads"); }

void cuda_emulation_shuffle_down(unsigned int mask, const void *value, void *out, size_t bytes, unsigned int delta,
                                 int width) {
    if (bytes > 16) fatal_internal("CUDA emulation: a shuffle of %zu bytes", bytes);
    if (width < 1 || width > WARP || (width & (width - 1)))
        fatal_internal("CUDA emulation: kernel %s: shuffle width %d", launch.name, width);
    const int self = launch.current, lane = self % WARP;
    if (!(mask >> lane & 1u))
        fatal_internal("CUDA emulation: kernel %s: lane %d shuffles with a mask (0x%08x) without it", launch.name, lane,
                       mask);
    memcpy(launch.threads[self].shuffle_slot, value, bytes);
    launch.threads[self].mask = mask;
    wait_at_barrier(AT_WARP_BARRIER, "a warp shuffle");
    const int source_lane = lane + (int)delta;
    const int same_segment = (lane / width) == (source_lane / width) && source_lane < WARP;
    const int source = self - lane + source_lane;
    memcpy(out, same_segment && source < launch.count ? launch.threads[source].shuffle_slot : value, bytes);
    /* Nobody overwrites a slot before every lane has read it. */
    launch.threads[self].mask = mask;
    wait_at_barrier(AT_WARP_BARRIER, "a warp shuffle");
}

/* Releases what can be released; returns how many threads were. */
static int release_barriers(int block_linear) {
    const int n = launch.count;
    int released = 0;
    for (int first = 0; first < n; first += WARP) {
        int last = first + WARP < n ? first + WARP : n;
        unsigned int mask = 0;
        int waiting = 0;
        for (int t = first; t < last; t++)
            if (launch.threads[t].state == AT_WARP_BARRIER) mask = launch.threads[t].mask, waiting++;
        if (!waiting) continue;
        int ready = 1;
        for (int t = first; t < last; t++) {
            if (!(mask >> (t - first) & 1u)) continue;
            if (launch.threads[t].state == FINISHED)
                fatal_internal("CUDA emulation: kernel %s, block %d: lane %d of warp %d finished while its warp "
                               "shuffles with it (mask 0x%08x)",
                               launch.name, block_linear, t - first, first / WARP, mask);
            if (launch.threads[t].state != AT_WARP_BARRIER) ready = 0;
            else if (launch.threads[t].mask != mask)
                fatal_internal("CUDA emulation: kernel %s, block %d: the lanes of warp %d shuffle with different masks",
                               launch.name, block_linear, first / WARP);
        }
        if (last - first < WARP && mask >> (last - first))
            fatal_internal("CUDA emulation: kernel %s: warp %d shuffles with lanes (mask 0x%08x) beyond the block's %d "
                           "threads",
                           launch.name, first / WARP, mask, n);
        if (!ready) continue;
        for (int t = first; t < last; t++)
            if (launch.threads[t].state == AT_WARP_BARRIER) launch.threads[t].state = RUNNABLE, released++;
    }
    if (released) return released;
    int at_block = 0, finished = 0;
    for (int t = 0; t < n; t++) {
        at_block += launch.threads[t].state == AT_BLOCK_BARRIER;
        finished += launch.threads[t].state == FINISHED;
    }
    if (at_block == 0) return 0;
    if (at_block + finished == n && finished > 0)
        fatal_internal("CUDA emulation: kernel %s, block %d: %d threads wait at __syncthreads that %d threads of the "
                       "block finished without reaching",
                       launch.name, block_linear, at_block, finished);
    if (at_block < n) return 0;
    for (int t = 0; t < n; t++) launch.threads[t].state = RUNNABLE;
    return n;
}

/* Starts or resumes thread; returns when it finishes or waits at a barrier.
 * Apart, so that no local of the caller lives across the jumps. */
static __attribute__((noinline)) void run_until_it_waits(emulated_thread *thread) {
    if (!_setjmp(launch.scheduler)) {
        if (!thread->started) {
            thread->started = 1;
            setcontext(&thread->start);
        }
        _longjmp(thread->resume, 1);
    }
}

static void run_block_as_coroutines(int block_linear) {
    const int n = launch.count;
    for (int t = 0; t < n; t++) {
        launch.threads[t].state = RUNNABLE;
        launch.threads[t].mask = 0;
    }
    int finished = 0;
    while (finished < n) {
        /* Every runnable thread runs until it finishes or waits. */
        for (int t = 0; t < n; t++) {
            emulated_thread *thread = &launch.threads[t];
            if (thread->state != RUNNABLE) continue;
            launch.current = t;
            set_thread_coordinates(t);
            run_until_it_waits(thread);
            if (thread->state == FINISHED) finished++;
        }
        launch.current = -1;
        if (finished == n) break;
        if (!release_barriers(block_linear))
            fatal_internal("CUDA emulation: kernel %s, block %d: its threads wait at barriers that can never be "
                           "released (some at __syncthreads, others at a warp shuffle)",
                           launch.name, block_linear);
    }
}

static void reserve_stacks(void) {
    if (launch.threads) return;
    launch.threads = calloc(MAX_BLOCK_THREADS, sizeof *launch.threads);
    void *stacks = mmap(NULL, MAX_BLOCK_THREADS * STACK_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!launch.threads || stacks == MAP_FAILED) fatal_internal("CUDA emulation: no memory for thread stacks");
    launch.stacks = stacks;
    for (int t = 0; t < MAX_BLOCK_THREADS; t++) {
        emulated_thread *thread = &launch.threads[t];
        getcontext(&thread->start);
        thread->start.uc_stack.ss_sp = launch.stacks + (size_t)t * STACK_BYTES;
        thread->start.uc_stack.ss_size = STACK_BYTES;
        thread->start.uc_link = NULL;
        makecontext(&thread->start, thread_entry, 0);
    }
}

void cuda_emulation_kernel_error(cudaError_t error); /* cuda_emulation_runtime.c */

typedef struct {
    const char *name;
    const void *kernel;
    cuda_emulation_coordinates grid, block;
    void (*thread_body)(void *);
    void *closure;
    void (*release)(void *);
} queued_launch;

/* Runs a queued launch (from the queue, cuda_emulation_streams.c). */
static void run_launch(void *data) {
    const queued_launch *q = data;
    if (launch.current >= 0) fatal_internal("CUDA emulation: kernel %s run from inside a kernel", q->name);
    launch.name = q->name;
    launch.body = q->thread_body;
    launch.closure = q->closure;
    launch.count = (int)(q->block.x * q->block.y * q->block.z);
    launch.met_barrier = 0;
    blockDim = q->block;
    gridDim = q->grid;
    launch.coroutines = !is_barrier_free(q->kernel);
    if (launch.coroutines) reserve_stacks();
    int block_linear = 0;
    for (unsigned int z = 0; z < q->grid.z; z++)
        for (unsigned int y = 0; y < q->grid.y; y++)
            for (unsigned int x = 0; x < q->grid.x; x++, block_linear++) {
                blockIdx = (cuda_emulation_coordinates){x, y, z};
                if (launch.coroutines) {
                    run_block_as_coroutines(block_linear);
                } else {
                    for (int t = 0; t < launch.count; t++) {
                        launch.current = t;
                        set_thread_coordinates(t);
                        q->thread_body(q->closure);
                    }
                    launch.current = -1;
                }
            }
    if (launch.coroutines && !launch.met_barrier && barrier_free_count < MAX_KERNELS)
        barrier_free[barrier_free_count++] = q->kernel;
}

static void release_launch(void *data) {
    queued_launch *q = data;
    q->release(q->closure);
    free(q);
}

void cuda_emulation_run_kernel(const char *name, const void *kernel, cuda_emulation_coordinates grid,
                               cuda_emulation_coordinates block, cudaStream_t stream, void (*thread_body)(void *),
                               void *closure, void (*release)(void *)) {
    cuda_emulation_require_stream(stream, name);
    if (launch.current >= 0) fatal_internal("CUDA emulation: kernel %s launched from inside a kernel", name);
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > MAX_BLOCK_THREADS || block.z > 64 ||
        grid.y > 65535 || grid.z > 65535) {
        cuda_emulation_kernel_error(cudaErrorInvalidConfiguration);
        release(closure);
        return;
    }
    queued_launch *q = malloc(sizeof *q);
    if (!q) fatal_internal("CUDA emulation: out of memory for a launch");
    *q = (queued_launch){name, kernel, grid, block, thread_body, closure, release};
    cuda_emulation_enqueue(stream, name, run_launch, release_launch, q, (cuda_emulation_work_reads){0});
}
