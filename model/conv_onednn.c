/* The CPU's oneDNN convolutions and the choice of the CPU's convolution (see
 * conv_onednn.h). A table of entries, one per convolution shape and precision,
 * each with its one-sample primitives (forward, backward data, backward weights,
 * and the reorders between the plain fp32 NCHW / OIHW layouts of the callers and
 * the blocked layouts the primitives chose), made single-threaded, and per
 * OpenMP thread ("slot") the memory objects they run with. Buffers shared by the
 * table grow only when an entry is planned: per slot three one-sample blocked
 * buffers and a scratchpad, the weights in the primitives' layouts, and the
 * per-sample weight and bias gradients. */
#include "conv_onednn.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"
#include "gemm_onednn.h"

int cpu_conv_bf16_kernels(void) {
    const char *forced = getenv("LDM_CPU_CONV_BF16");
    if (!forced || !*forced || strcmp(forced, "fp32") == 0) return 0;
    if (strcmp(forced, "bf16") == 0) return 1;
    fatal_input("LDM_CPU_CONV_BF16='%s': expected bf16 or fp32", forced);
}

int conv_onednn_built(void) { return onednn_built(); }

const char *cpu_conv_kind_name(cpu_conv_kind kind) { return kind == CPU_CONV_ONEDNN ? "onednn" : "own"; }

cpu_conv_kind cpu_conv_kind_for(int bf16) {
    const char *forced = getenv("LDM_CPU_CONV");
    const int bf16_ok = !bf16 || cpu_has_avx512_bf16();
    if (!forced || !*forced) return onednn_built() && bf16_ok ? CPU_CONV_ONEDNN : CPU_CONV_OWN;
    if (strcmp(forced, "own") == 0) return CPU_CONV_OWN;
    if (strcmp(forced, "onednn") != 0) fatal_input("LDM_CPU_CONV='%s': expected onednn or own", forced);
    if (!onednn_built())
        fatal_input("LDM_CPU_CONV=onednn: this build has no oneDNN (cmake -DLDM_ONEDNN=ON, libdnnl-dev)");
    if (!bf16_ok) fatal_input("LDM_CPU_CONV=onednn: bf16 convolutions need AVX512_BF16, which this CPU lacks (use own)");
    return CPU_CONV_ONEDNN;
}

#ifdef LDM_HAVE_ONEDNN
#include <dnnl.h>

#define MAX_SLOTS 64
/* Convolution shapes: the SD VAE has about 20, a test a few more. */
#define MAX_ENTRIES 256

typedef struct {
    int in_channels, out_channels, height, width, kernel, stride, pad_top, pad_bottom, pad_left, pad_right, bf16;
} conv_key;

/* A tensor's layout and, per slot, a memory object of it (handles set at each run). */
typedef struct {
    dnnl_memory_desc_t md;
    dnnl_memory_t m[MAX_SLOTS];
} tensor;

/* A primitive (NULL: a reorder between identical layouts, not needed) and its scratchpad. */
typedef struct {
    dnnl_primitive_t p;
    tensor scratchpad;
} prim;

typedef struct {
    conv_key key;
    int slots;
    /* forward: src (1, Cin, H, W), weights, bias (Cout), dst (1, Cout, Ho, Wo) */
    prim fwd, fwd_src_in, fwd_weights_in, fwd_dst_out;
    tensor f_src_user, f_src, f_weights_user, f_weights, f_bias, f_dst, f_dst_user;
    /* backward data: diff_dst, weights -> diff_src (overwritten, or added to the caller's) */
    prim bwd_data, bd_diff_dst_in, bd_weights_in, bd_diff_src_out, bd_diff_src_add;
    tensor b_diff_dst_user, b_diff_dst, b_weights_user, b_weights, b_diff_src, b_diff_src_user;
    /* backward weights: src, diff_dst -> one sample's diff_weights; their sum added to the caller's */
    prim bwd_weights, bw_src_in, bw_diff_dst_in, bw_diff_weights_add;
    tensor w_src_user, w_src, w_diff_dst_user, w_diff_dst, w_diff_weights, w_diff_weights_user;
    size_t diff_weights_bytes; /* one sample's, in the primitive's layout */
    int batch_planned;         /* the per-sample weight gradients have room for this many */
    char describe[256];
} conv_entry;

static struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream[MAX_SLOTS];
    int streams;
    conv_entry *entries[MAX_ENTRIES];
    int count;
    long plans;
    /* per slot: three one-sample buffers and a scratchpad (each of the size below) */
    void *slot_buffer[MAX_SLOTS][3], *slot_scratchpad[MAX_SLOTS];
    size_t slot_buffer_bytes, slot_scratchpad_bytes;
    int slot_count; /* slots with buffers */
    void *weights_fwd, *weights_bwd; /* the weights in the forward's / backward data's layout */
    size_t weights_fwd_bytes, weights_bwd_bytes;
    void *diff_weights; /* (batch, one sample's diff_weights) */
    size_t diff_weights_bytes;
    double *bias_sums; /* (batch, out_channels) each sample's bias gradient */
    size_t bias_sums_bytes;
    float *zeros; /* (zeros_count) the bias of a call without one */
    size_t zeros_count;
} onednn;

static void check(dnnl_status_t status, const char *what) {
    if (status != dnnl_success) fatal_internal("oneDNN convolution: %s failed (status %d)", what, (int)status);
}

/* The process's one oneDNN engine, with gemm_onednn.c's ISA limit (the same bits on a CPU with AMX). */
static void start(void) {
    if (!onednn.engine) onednn.engine = onednn_cpu_engine();
}

static void *aligned_bytes(size_t bytes) {
    const size_t rounded = (bytes + 63) / 64 * 64 + 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) fatal_internal("oneDNN convolution: out of memory for %zu bytes", rounded);
    return p;
}

/* Grows *buffer to `bytes` (contents not kept). */
static void grow(void **buffer, size_t *have, size_t bytes) {
    if (bytes <= *have) return;
    free(*buffer);
    *buffer = aligned_bytes(bytes);
    *have = bytes;
}

static void grow_slots(int slots, size_t buffer_bytes, size_t scratchpad_bytes) {
    if (buffer_bytes > onednn.slot_buffer_bytes || scratchpad_bytes > onednn.slot_scratchpad_bytes ||
        slots > onednn.slot_count) {
        const size_t b = buffer_bytes > onednn.slot_buffer_bytes ? buffer_bytes : onednn.slot_buffer_bytes;
        const size_t s = scratchpad_bytes > onednn.slot_scratchpad_bytes ? scratchpad_bytes : onednn.slot_scratchpad_bytes;
        const int n = slots > onednn.slot_count ? slots : onednn.slot_count;
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < 3; j++) {
                free(onednn.slot_buffer[i][j]);
                onednn.slot_buffer[i][j] = aligned_bytes(b);
            }
            free(onednn.slot_scratchpad[i]);
            onednn.slot_scratchpad[i] = aligned_bytes(s);
        }
        onednn.slot_buffer_bytes = b;
        onednn.slot_scratchpad_bytes = s;
        onednn.slot_count = n;
    }
    for (; onednn.streams < slots; onednn.streams++)
        check(dnnl_stream_create(&onednn.stream[onednn.streams], onednn.engine, dnnl_stream_default_flags),
              "stream_create");
}

static void plain_md(dnnl_memory_desc_t *md, int ndims, const dnnl_dims_t dims, dnnl_data_type_t type,
                     dnnl_format_tag_t tag) {
    check(dnnl_memory_desc_init_by_tag(md, ndims, dims, type, tag), "memory_desc_init_by_tag");
}

static void tensor_objects(tensor *t, const dnnl_memory_desc_t *md, int slots) {
    t->md = *md;
    for (int i = 0; i < slots; i++)
        check(dnnl_memory_create(&t->m[i], &t->md, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
}

static void tensor_destroy(tensor *t, int slots) {
    for (int i = 0; i < slots; i++)
        if (t->m[i]) dnnl_memory_destroy(t->m[i]);
}

static size_t md_bytes(const dnnl_memory_desc_t *md) { return dnnl_memory_desc_get_size(md); }

/* The primitive of pd (which it takes), its scratchpad tensor; *scratchpad_bytes grows to its size. */
static void prim_from(prim *p, dnnl_primitive_desc_t pd, int slots, size_t *scratchpad_bytes, const char *what) {
    const dnnl_memory_desc_t *scratchpad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    check(dnnl_primitive_create(&p->p, pd), what);
    tensor_objects(&p->scratchpad, scratchpad, slots);
    if (md_bytes(scratchpad) > *scratchpad_bytes) *scratchpad_bytes = md_bytes(scratchpad);
    dnnl_primitive_desc_destroy(pd);
}

static void prim_destroy(prim *p, int slots) {
    if (p->p) dnnl_primitive_destroy(p->p);
    tensor_destroy(&p->scratchpad, slots);
}

/* A reorder from -> to, with dst = dst + src when add; none (p NULL) for identical layouts unless add. */
static void make_reorder(prim *p, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to, int add, int slots,
                         size_t *scratchpad_bytes) {
    if (!add && dnnl_memory_desc_equal(from, to)) return;
    dnnl_primitive_attr_t attr;
    check(dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode");
    if (add) {
        dnnl_post_ops_t post_ops;
        check(dnnl_post_ops_create(&post_ops), "post_ops_create");
        check(dnnl_post_ops_append_sum(post_ops, 1.0f), "post_ops_append_sum");
        check(dnnl_primitive_attr_set_post_ops(attr, post_ops), "set_post_ops");
        dnnl_post_ops_destroy(post_ops);
    }
    dnnl_primitive_desc_t pd;
    check(dnnl_reorder_primitive_desc_create(&pd, from, onednn.engine, to, onednn.engine, attr), "reorder desc");
    dnnl_primitive_attr_destroy(attr);
    prim_from(p, pd, slots, scratchpad_bytes, "reorder primitive_create");
}

static dnnl_primitive_attr_t user_scratchpad_attr(void) {
    dnnl_primitive_attr_t attr;
    check(dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode");
    return attr;
}

static const char *impl_name(const_dnnl_primitive_desc_t pd) {
    const char *name = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) != dnnl_success || !name) return "?";
    return name;
}

static conv_entry *make_entry(const conv_key *k) {
    if (onednn.count == MAX_ENTRIES) fatal_internal("oneDNN convolution: more than %d shapes", MAX_ENTRIES);
    start();
    conv_entry *e = calloc(1, sizeof(*e));
    if (!e) fatal_internal("oneDNN convolution: out of memory");
    e->key = *k;
    int slots = omp_get_max_threads();
    if (slots > MAX_SLOTS) slots = MAX_SLOTS;
    if (slots < 1) slots = 1;
    e->slots = slots;
    /* One thread while making: the primitives' blocking and order of summation are fixed from it, and they
     * run inside the OpenMP loop over samples below, each on one thread. */
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);

    const int ho = (k->height + k->pad_top + k->pad_bottom - k->kernel) / k->stride + 1;
    const int wo = (k->width + k->pad_left + k->pad_right - k->kernel) / k->stride + 1;
    const dnnl_data_type_t in_type = k->bf16 ? dnnl_bf16 : dnnl_f32;
    const dnnl_dims_t src_dims = {1, k->in_channels, k->height, k->width};
    const dnnl_dims_t dst_dims = {1, k->out_channels, ho, wo};
    const dnnl_dims_t weight_dims = {k->out_channels, k->in_channels, k->kernel, k->kernel};
    const dnnl_dims_t bias_dims = {k->out_channels};
    const dnnl_dims_t strides = {k->stride, k->stride};
    const dnnl_dims_t pad_l = {k->pad_top, k->pad_left}, pad_r = {k->pad_bottom, k->pad_right};
    dnnl_memory_desc_t src_user, dst_user, weights_user, bias, src_any, dst_any, weights_any, diff_src_any,
        diff_dst_any, diff_weights_any;
    plain_md(&src_user, 4, src_dims, dnnl_f32, dnnl_nchw);
    plain_md(&dst_user, 4, dst_dims, dnnl_f32, dnnl_nchw);
    plain_md(&weights_user, 4, weight_dims, dnnl_f32, dnnl_oihw);
    plain_md(&bias, 1, bias_dims, dnnl_f32, dnnl_x);
    plain_md(&src_any, 4, src_dims, in_type, dnnl_format_tag_any);
    plain_md(&weights_any, 4, weight_dims, in_type, dnnl_format_tag_any);
    plain_md(&dst_any, 4, dst_dims, dnnl_f32, dnnl_format_tag_any);
    plain_md(&diff_src_any, 4, src_dims, dnnl_f32, dnnl_format_tag_any);
    plain_md(&diff_dst_any, 4, dst_dims, in_type, dnnl_format_tag_any);
    plain_md(&diff_weights_any, 4, weight_dims, dnnl_f32, dnnl_format_tag_any);
    size_t scratchpad = 0, buffer = 0;

    /* forward */
    dnnl_convolution_desc_t desc;
    check(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_training, dnnl_convolution_direct, &src_any,
                                             &weights_any, &bias, &dst_any, strides, pad_l, pad_r),
          "convolution_forward_desc_init");
    dnnl_primitive_attr_t attr = user_scratchpad_attr();
    dnnl_primitive_desc_t fwd_pd;
    check(dnnl_primitive_desc_create(&fwd_pd, &desc, attr, onednn.engine, NULL), "forward primitive_desc_create");
    tensor_objects(&e->f_src, dnnl_primitive_desc_query_md(fwd_pd, dnnl_query_src_md, 0), slots);
    tensor_objects(&e->f_weights, dnnl_primitive_desc_query_md(fwd_pd, dnnl_query_weights_md, 0), slots);
    tensor_objects(&e->f_dst, dnnl_primitive_desc_query_md(fwd_pd, dnnl_query_dst_md, 0), slots);
    char fwd_name[64];
    snprintf(fwd_name, sizeof fwd_name, "%s", impl_name(fwd_pd));

    /* backward data (hinted by the forward) */
    check(dnnl_convolution_backward_data_desc_init(&desc, dnnl_convolution_direct, &diff_src_any, &weights_any,
                                                   &diff_dst_any, strides, pad_l, pad_r),
          "convolution_backward_data_desc_init");
    dnnl_primitive_desc_t bd_pd;
    check(dnnl_primitive_desc_create(&bd_pd, &desc, attr, onednn.engine, fwd_pd), "backward data primitive_desc_create");
    tensor_objects(&e->b_diff_dst, dnnl_primitive_desc_query_md(bd_pd, dnnl_query_diff_dst_md, 0), slots);
    tensor_objects(&e->b_weights, dnnl_primitive_desc_query_md(bd_pd, dnnl_query_weights_md, 0), slots);
    tensor_objects(&e->b_diff_src, dnnl_primitive_desc_query_md(bd_pd, dnnl_query_diff_src_md, 0), slots);
    char bd_name[64];
    snprintf(bd_name, sizeof bd_name, "%s", impl_name(bd_pd));

    /* backward weights (no bias: conv_onednn_backward sums it per sample) */
    check(dnnl_convolution_backward_weights_desc_init(&desc, dnnl_convolution_direct, &src_any, &diff_weights_any,
                                                      NULL, &diff_dst_any, strides, pad_l, pad_r),
          "convolution_backward_weights_desc_init");
    dnnl_primitive_desc_t bw_pd;
    check(dnnl_primitive_desc_create(&bw_pd, &desc, attr, onednn.engine, fwd_pd),
          "backward weights primitive_desc_create");
    dnnl_primitive_attr_destroy(attr);
    tensor_objects(&e->w_src, dnnl_primitive_desc_query_md(bw_pd, dnnl_query_src_md, 0), slots);
    tensor_objects(&e->w_diff_dst, dnnl_primitive_desc_query_md(bw_pd, dnnl_query_diff_dst_md, 0), slots);
    tensor_objects(&e->w_diff_weights, dnnl_primitive_desc_query_md(bw_pd, dnnl_query_diff_weights_md, 0), slots);
    snprintf(e->describe, sizeof e->describe, "%s / %s / %s", fwd_name, bd_name, impl_name(bw_pd));
    prim_from(&e->fwd, fwd_pd, slots, &scratchpad, "forward primitive_create");
    prim_from(&e->bwd_data, bd_pd, slots, &scratchpad, "backward data primitive_create");
    prim_from(&e->bwd_weights, bw_pd, slots, &scratchpad, "backward weights primitive_create");

    /* the callers' layouts and the reorders to and from them */
    tensor_objects(&e->f_src_user, &src_user, slots);
    tensor_objects(&e->f_weights_user, &weights_user, slots);
    tensor_objects(&e->f_bias, &bias, slots);
    tensor_objects(&e->f_dst_user, &dst_user, slots);
    tensor_objects(&e->b_diff_dst_user, &dst_user, slots);
    tensor_objects(&e->b_weights_user, &weights_user, slots);
    tensor_objects(&e->b_diff_src_user, &src_user, slots);
    tensor_objects(&e->w_src_user, &src_user, slots);
    tensor_objects(&e->w_diff_dst_user, &dst_user, slots);
    tensor_objects(&e->w_diff_weights_user, &weights_user, slots);
    make_reorder(&e->fwd_src_in, &src_user, &e->f_src.md, 0, slots, &scratchpad);
    make_reorder(&e->fwd_weights_in, &weights_user, &e->f_weights.md, 0, slots, &scratchpad);
    make_reorder(&e->fwd_dst_out, &e->f_dst.md, &dst_user, 0, slots, &scratchpad);
    make_reorder(&e->bd_diff_dst_in, &dst_user, &e->b_diff_dst.md, 0, slots, &scratchpad);
    make_reorder(&e->bd_weights_in, &weights_user, &e->b_weights.md, 0, slots, &scratchpad);
    make_reorder(&e->bd_diff_src_out, &e->b_diff_src.md, &src_user, 0, slots, &scratchpad);
    make_reorder(&e->bd_diff_src_add, &e->b_diff_src.md, &src_user, 1, slots, &scratchpad);
    make_reorder(&e->bw_src_in, &src_user, &e->w_src.md, 0, slots, &scratchpad);
    make_reorder(&e->bw_diff_dst_in, &dst_user, &e->w_diff_dst.md, 0, slots, &scratchpad);
    make_reorder(&e->bw_diff_weights_add, &e->w_diff_weights.md, &weights_user, 1, slots, &scratchpad);
    omp_set_num_threads(threads);

    const dnnl_memory_desc_t *one_sample[] = {&e->f_src.md, &e->f_dst.md, &e->b_diff_dst.md, &e->b_diff_src.md,
                                              &e->w_src.md, &e->w_diff_dst.md};
    for (size_t i = 0; i < sizeof one_sample / sizeof one_sample[0]; i++)
        if (md_bytes(one_sample[i]) > buffer) buffer = md_bytes(one_sample[i]);
    grow_slots(slots, buffer, scratchpad);
    grow(&onednn.weights_fwd, &onednn.weights_fwd_bytes, md_bytes(&e->f_weights.md));
    grow(&onednn.weights_bwd, &onednn.weights_bwd_bytes, md_bytes(&e->b_weights.md));
    e->diff_weights_bytes = (md_bytes(&e->w_diff_weights.md) + 63) / 64 * 64;
    if ((size_t)k->out_channels > onednn.zeros_count) {
        free(onednn.zeros);
        onednn.zeros = aligned_bytes(sizeof(float) * (size_t)k->out_channels);
        memset(onednn.zeros, 0, sizeof(float) * (size_t)k->out_channels);
        onednn.zeros_count = (size_t)k->out_channels;
    }
    onednn.entries[onednn.count++] = e;
    return e;
}

static conv_key key_of(const conv2d_dims *s, int bf16) {
    conv_key k = {s->in_channels, s->out_channels, s->height, s->width, s->kernel, s->stride,
                  s->pad_top, s->pad_bottom, s->pad_left, s->pad_right, bf16 ? 1 : 0};
    return k;
}

/* The entry of this shape, made (and its weight gradients given room for the batch) where needed. */
static conv_entry *entry_for(const conv2d_dims *s, int bf16, const char *op) {
    if (s->batch < 1 || s->in_channels < 1 || s->out_channels < 1 || s->kernel < 1 || s->stride < 1 ||
        s->pad_top < 0 || s->pad_bottom < 0 || s->pad_left < 0 || s->pad_right < 0 ||
        s->height + s->pad_top + s->pad_bottom < s->kernel || s->width + s->pad_left + s->pad_right < s->kernel)
        fatal_internal("%s: bad shape (batch %d, %d -> %d channels, %dx%d, kernel %d, stride %d)", op, s->batch,
                       s->in_channels, s->out_channels, s->height, s->width, s->kernel, s->stride);
    if (omp_in_parallel()) fatal_internal("%s: called inside an OpenMP parallel region", op);
    const conv_key k = key_of(s, bf16);
    conv_entry *e = NULL;
    for (int i = 0; i < onednn.count && !e; i++)
        if (memcmp(&onednn.entries[i]->key, &k, sizeof k) == 0) e = onednn.entries[i];
    const int made = !e;
    if (!e) e = make_entry(&k);
    if (e->batch_planned < s->batch || made) {
        if (e->batch_planned < s->batch) e->batch_planned = s->batch;
        grow(&onednn.diff_weights, &onednn.diff_weights_bytes, e->diff_weights_bytes * (size_t)e->batch_planned);
        grow((void **)&onednn.bias_sums, &onednn.bias_sums_bytes,
             sizeof(double) * (size_t)k.out_channels * (size_t)e->batch_planned);
        onednn.plans++;
    }
    return e;
}

void conv_onednn_plan(const conv2d_dims *shape, int bf16) { entry_for(shape, bf16, "conv_onednn_plan"); }

long conv_onednn_plans_made(void) { return onednn.plans; }

const char *conv_onednn_describe(const conv2d_dims *s, int bf16) {
    const conv_key k = key_of(s, bf16);
    for (int i = 0; i < onednn.count; i++)
        if (memcmp(&onednn.entries[i]->key, &k, sizeof k) == 0) return onednn.entries[i]->describe;
    return "";
}

static void set(dnnl_memory_t m, const void *data) {
    check(dnnl_memory_set_data_handle(m, (void *)data), "set_data_handle");
}

static void execute(const prim *p, int slot, int nargs, dnnl_exec_arg_t *args) {
    set(p->scratchpad.m[slot], onednn.slot_scratchpad[slot]);
    args[nargs].arg = DNNL_ARG_SCRATCHPAD;
    args[nargs].memory = p->scratchpad.m[slot];
    check(dnnl_primitive_execute(p->p, onednn.stream[slot], nargs + 1, args), "execute");
    check(dnnl_stream_wait(onednn.stream[slot]), "stream_wait");
}

static void reorder(const prim *r, int slot, dnnl_memory_t from, dnnl_memory_t to) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    execute(r, slot, 2, args);
}

/* An input in the caller's layout at `data`, as the primitive reads it: reordered into `buffer`, or the
 * caller's memory itself where the layouts are the same. */
static dnnl_memory_t input(const prim *r, const tensor *user, const tensor *conv, int slot, const void *data,
                           void *buffer) {
    if (!r->p) {
        set(conv->m[slot], data);
        return conv->m[slot];
    }
    set(user->m[slot], data);
    set(conv->m[slot], buffer);
    reorder(r, slot, user->m[slot], conv->m[slot]);
    return conv->m[slot];
}

/* Threads to run samples on: the slots the entry was made with, at most the OpenMP maximum. */
static int run_threads(const conv_entry *e) {
    const int t = omp_get_max_threads();
    return t < e->slots ? t : e->slots;
}

void conv_onednn_forward(float *out, const float *in, const float *weight, const float *bias,
                         const conv2d_dims *s, int bf16) {
    conv_entry *e = entry_for(s, bf16, "conv_onednn_forward");
    const size_t in_sample = (size_t)s->in_channels * s->height * s->width;
    const size_t out_sample = (size_t)s->out_channels * conv2d_out_height(s) * conv2d_out_width(s);
    /* the weights in the forward's layout, once for every sample */
    const void *weights = weight;
    if (e->fwd_weights_in.p) {
        input(&e->fwd_weights_in, &e->f_weights_user, &e->f_weights, 0, weight, onednn.weights_fwd);
        weights = onednn.weights_fwd;
    }
    const float *b = bias ? bias : onednn.zeros;
#pragma omp parallel for schedule(static) num_threads(run_threads(e))
    for (int n = 0; n < s->batch; n++) {
        const int slot = omp_get_thread_num();
        void **buffer = onednn.slot_buffer[slot];
        dnnl_memory_t src = input(&e->fwd_src_in, &e->f_src_user, &e->f_src, slot, in + n * in_sample, buffer[0]);
        set(e->f_weights.m[slot], weights);
        set(e->f_bias.m[slot], b);
        float *dst_user = out + n * out_sample;
        set(e->f_dst.m[slot], e->fwd_dst_out.p ? buffer[1] : (void *)dst_user);
        dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, src},
                                   {DNNL_ARG_WEIGHTS, e->f_weights.m[slot]},
                                   {DNNL_ARG_BIAS, e->f_bias.m[slot]},
                                   {DNNL_ARG_DST, e->f_dst.m[slot]}};
        execute(&e->fwd, slot, 4, args);
        if (e->fwd_dst_out.p) {
            set(e->f_dst_user.m[slot], dst_user);
            reorder(&e->fwd_dst_out, slot, e->f_dst.m[slot], e->f_dst_user.m[slot]);
        }
    }
}

enum { LANES = 8 };

/* The sum of x (n) in double, in LANES vectorised accumulators (value i in lane i % LANES)
 * combined in a fixed order. */
static double pixel_sum(const float *x, int n) {
    double a[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) a[l] += x[i + l];
    for (int l = 0; i < n; i++, l++) a[l] += x[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

void conv_onednn_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                          const float *in, const float *weight, const conv2d_dims *s, int bf16) {
    if (d_in && d_in_beta != 0.0f && d_in_beta != 1.0f)
        fatal_internal("conv_onednn_backward: d_in_beta %g (0 or 1)", d_in_beta);
    if (!d_in && !d_weight && !d_bias) return;
    conv_entry *e = entry_for(s, bf16, "conv_onednn_backward");
    const int pixels = conv2d_out_height(s) * conv2d_out_width(s);
    const size_t in_sample = (size_t)s->in_channels * s->height * s->width;
    const size_t out_sample = (size_t)s->out_channels * conv2d_out_height(s) * conv2d_out_width(s);
    const void *weights = weight;
    if (d_in && e->bd_weights_in.p) {
        input(&e->bd_weights_in, &e->b_weights_user, &e->b_weights, 0, weight, onednn.weights_bwd);
        weights = onednn.weights_bwd;
    }
    /* the diff_dst the backward data read can serve the backward weights too */
    const int share_diff_dst = d_in && dnnl_memory_desc_equal(&e->b_diff_dst.md, &e->w_diff_dst.md);
    char *partial = onednn.diff_weights; /* (batch, diff_weights_bytes) */
#pragma omp parallel for schedule(static) num_threads(run_threads(e))
    for (int n = 0; n < s->batch; n++) {
        const int slot = omp_get_thread_num();
        void **buffer = onednn.slot_buffer[slot];
        const float *g = d_out + n * out_sample;
        dnnl_memory_t diff_dst = NULL;
        if (d_bias)
            for (int co = 0; co < s->out_channels; co++)
                onednn.bias_sums[(size_t)n * s->out_channels + co] = pixel_sum(g + (size_t)co * pixels, pixels);
        if (d_in) {
            diff_dst = input(&e->bd_diff_dst_in, &e->b_diff_dst_user, &e->b_diff_dst, slot, g, buffer[0]);
            float *target = d_in + n * in_sample;
            const int direct = d_in_beta == 0.0f && !e->bd_diff_src_out.p;
            set(e->b_diff_src.m[slot], direct ? (void *)target : buffer[1]);
            set(e->b_weights.m[slot], weights);
            dnnl_exec_arg_t args[4] = {{DNNL_ARG_DIFF_DST, diff_dst},
                                       {DNNL_ARG_WEIGHTS, e->b_weights.m[slot]},
                                       {DNNL_ARG_DIFF_SRC, e->b_diff_src.m[slot]}};
            execute(&e->bwd_data, slot, 3, args);
            if (!direct) {
                set(e->b_diff_src_user.m[slot], target);
                reorder(d_in_beta == 0.0f ? &e->bd_diff_src_out : &e->bd_diff_src_add, slot, e->b_diff_src.m[slot],
                        e->b_diff_src_user.m[slot]);
            }
        }
        if (d_weight) {
            dnnl_memory_t src = input(&e->bw_src_in, &e->w_src_user, &e->w_src, slot, in + n * in_sample, buffer[2]);
            if (share_diff_dst) {
                set(e->w_diff_dst.m[slot], e->bd_diff_dst_in.p ? buffer[0] : (const void *)g);
                diff_dst = e->w_diff_dst.m[slot];
            } else {
                diff_dst = input(&e->bw_diff_dst_in, &e->w_diff_dst_user, &e->w_diff_dst, slot, g, buffer[1]);
            }
            set(e->w_diff_weights.m[slot], partial + (size_t)n * e->diff_weights_bytes);
            dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, src},
                                       {DNNL_ARG_DIFF_DST, diff_dst},
                                       {DNNL_ARG_DIFF_WEIGHTS, e->w_diff_weights.m[slot]}};
            execute(&e->bwd_weights, slot, 3, args);
        }
    }
    if (d_bias) /* the samples' sums in sample order */
        for (int co = 0; co < s->out_channels; co++) {
            double sum = 0;
            for (int n = 0; n < s->batch; n++) sum += onednn.bias_sums[(size_t)n * s->out_channels + co];
            d_bias[co] += (float)sum;
        }
    if (!d_weight) return;
    /* the samples' gradients summed in sample order (into the first), then added to d_weight */
    const size_t count = md_bytes(&e->w_diff_weights.md) / sizeof(float);
    float *sum = (float *)(void *)partial;
    const size_t stride = e->diff_weights_bytes / sizeof(float);
    const int batch = s->batch;
    /* blocks of 1024 values, each adding the samples in order (vectorised over the block) */
    const size_t blocks = (count + 1023) / 1024;
#pragma omp parallel for schedule(static)
    for (size_t block = 0; block < blocks; block++) {
        const size_t lo = block * 1024, hi = lo + 1024 < count ? lo + 1024 : count;
        for (int n = 1; n < batch; n++) {
            const float *part = sum + (size_t)n * stride;
            for (size_t i = lo; i < hi; i++) sum[i] += part[i];
        }
    }
    set(e->w_diff_weights.m[0], sum);
    set(e->w_diff_weights_user.m[0], d_weight);
    reorder(&e->bw_diff_weights_add, 0, e->w_diff_weights.m[0], e->w_diff_weights_user.m[0]);
}

static void entry_destroy(conv_entry *e) {
    const int n = e->slots;
    prim *prims[] = {&e->fwd,          &e->fwd_src_in,      &e->fwd_weights_in,  &e->fwd_dst_out,
                     &e->bwd_data,     &e->bd_diff_dst_in,  &e->bd_weights_in,   &e->bd_diff_src_out,
                     &e->bd_diff_src_add, &e->bwd_weights,  &e->bw_src_in,       &e->bw_diff_dst_in,
                     &e->bw_diff_weights_add};
    for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++) prim_destroy(prims[i], n);
    tensor *tensors[] = {&e->f_src_user,      &e->f_src,          &e->f_weights_user, &e->f_weights,
                         &e->f_bias,          &e->f_dst,          &e->f_dst_user,     &e->b_diff_dst_user,
                         &e->b_diff_dst,      &e->b_weights_user, &e->b_weights,      &e->b_diff_src,
                         &e->b_diff_src_user, &e->w_src_user,     &e->w_src,          &e->w_diff_dst_user,
                         &e->w_diff_dst,      &e->w_diff_weights, &e->w_diff_weights_user};
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) tensor_destroy(tensors[i], n);
    free(e);
}

void conv_onednn_release_all(void) {
    for (int i = 0; i < onednn.count; i++) entry_destroy(onednn.entries[i]);
    onednn.count = 0;
    for (int i = 0; i < onednn.slot_count; i++) {
        for (int j = 0; j < 3; j++) {
            free(onednn.slot_buffer[i][j]);
            onednn.slot_buffer[i][j] = NULL;
        }
        free(onednn.slot_scratchpad[i]);
        onednn.slot_scratchpad[i] = NULL;
    }
    onednn.slot_count = 0;
    onednn.slot_buffer_bytes = onednn.slot_scratchpad_bytes = 0;
    free(onednn.weights_fwd);
    free(onednn.weights_bwd);
    free(onednn.diff_weights);
    free(onednn.zeros);
    free(onednn.bias_sums);
    onednn.bias_sums = NULL;
    onednn.bias_sums_bytes = 0;
    onednn.weights_fwd = onednn.weights_bwd = onednn.diff_weights = NULL;
    onednn.zeros = NULL;
    onednn.weights_fwd_bytes = onednn.weights_bwd_bytes = onednn.diff_weights_bytes = onednn.zeros_count = 0;
}

#else

void conv_onednn_plan(const conv2d_dims *shape, int bf16) {
    (void)shape, (void)bf16;
    fatal_internal("conv_onednn_plan: this build has no oneDNN");
}

void conv_onednn_forward(float *out, const float *in, const float *weight, const float *bias,
                         const conv2d_dims *shape, int bf16) {
    (void)out, (void)in, (void)weight, (void)bias, (void)shape, (void)bf16;
    fatal_internal("conv_onednn_forward: this build has no oneDNN");
}

void conv_onednn_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                          const float *in, const float *weight, const conv2d_dims *shape, int bf16) {
    (void)d_in, (void)d_in_beta, (void)d_weight, (void)d_bias, (void)d_out, (void)in, (void)weight, (void)shape;
    (void)bf16;
    fatal_internal("conv_onednn_backward: this build has no oneDNN");
}

long conv_onednn_plans_made(void) { return 0; }

void conv_onednn_release_all(void) {}

const char *conv_onednn_describe(const conv2d_dims *shape, int bf16) {
    (void)shape, (void)bf16;
    return "";
}

#endif
