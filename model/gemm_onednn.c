/* The oneDNN bf16 GEMM and the choice of the CPU's bf16 GEMM (see gemm_onednn.h).
 * A table of matmul primitives keyed by everything that decides one (shape,
 * transposes, leading dimensions, bias, beta), each with its memory objects made
 * once; a call sets their data handles and executes on the one CPU stream. */
#include "gemm_onednn.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

int cpu_has_avx512_bf16(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

#ifdef LDM_HAVE_ONEDNN
static const int built_with_onednn = 1;
#else
static const int built_with_onednn = 0;
#endif

int onednn_built(void) { return built_with_onednn; }

/* Whether the CPU's bf16 dot product (VDPBF16PS) does more multiply-adds per cycle
 * than its fp32 FMAs. Intel's cores without AMX issue VDPBF16PS on one port
 * against two for 512-bit FMAs: the same multiply-adds per cycle, so oneDNN's
 * bf16 matmul there measured slower than its fp32 one (it also reorders B into
 * pairs); AMD's Zen 4 does twice the multiply-adds in bf16 (docs/results.md). */
static int cpu_bf16_dot_faster_than_fp32(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_is("amd");
#else
    return 0;
#endif
}

const char *cpu_gemm_kind_name(cpu_gemm_kind kind) {
    return kind == CPU_GEMM_ONEDNN       ? "onednn"
           : kind == CPU_GEMM_ONEDNN_F32 ? "onednn-f32"
           : kind == CPU_GEMM_OWN        ? "own"
                                         : "openblas";
}

/* LDM_CPU_GEMM's value (LDM_NO_BF16_GEMM=1 is openblas), checked; -1 when unset. */
static int forced_kind(void) {
    const char *forced = getenv("LDM_CPU_GEMM"), *off = getenv("LDM_NO_BF16_GEMM");
    if (forced && *forced) {
        if (strcmp(forced, "openblas") == 0) return CPU_GEMM_OPENBLAS;
        if (strcmp(forced, "own") == 0) return CPU_GEMM_OWN;
        const int onednn = strcmp(forced, "onednn") == 0, onednn_f32 = strcmp(forced, "onednn-f32") == 0;
        if (onednn || onednn_f32) {
            if (!built_with_onednn)
                fatal_input("LDM_CPU_GEMM=%s: this build has no oneDNN (cmake -DLDM_ONEDNN=ON, libdnnl-dev)", forced);
            return onednn ? CPU_GEMM_ONEDNN : CPU_GEMM_ONEDNN_F32;
        }
        fatal_input("LDM_CPU_GEMM='%s': expected onednn, onednn-f32, own or openblas", forced);
    }
    return off && *off ? CPU_GEMM_OPENBLAS : -1;
}

cpu_gemm_kind cpu_gemm_bf16_kind(void) {
    static int decided = -1;
    if (decided >= 0) return (cpu_gemm_kind)decided;
    const int bf16 = cpu_has_avx512_bf16(), forced = forced_kind();
    cpu_gemm_kind kind = built_with_onednn ? (bf16 && cpu_bf16_dot_faster_than_fp32() ? CPU_GEMM_ONEDNN
                                                                                      : CPU_GEMM_ONEDNN_F32)
                         : bf16            ? CPU_GEMM_OWN
                                           : CPU_GEMM_OPENBLAS;
    if (forced >= 0) {
        kind = (cpu_gemm_kind)forced;
        if ((kind == CPU_GEMM_ONEDNN || kind == CPU_GEMM_OWN) && !bf16)
            fatal_input("LDM_CPU_GEMM=%s: this CPU has no AVX512_BF16 (use openblas)", cpu_gemm_kind_name(kind));
    }
    decided = (int)kind;
    return kind;
}

cpu_gemm_kind cpu_gemm_fp32_kind(void) {
    static int decided = -1;
    if (decided >= 0) return (cpu_gemm_kind)decided;
    const char *forced = getenv("LDM_CPU_GEMM");
    /* LDM_NO_BF16_GEMM is about bf16 only; own has no fp32 GEMM: OpenBLAS */
    const int onednn = forced && *forced ? forced_kind() == CPU_GEMM_ONEDNN || forced_kind() == CPU_GEMM_ONEDNN_F32
                                         : built_with_onednn;
    decided = onednn ? CPU_GEMM_ONEDNN : CPU_GEMM_OPENBLAS;
    return (cpu_gemm_kind)decided;
}

#ifdef LDM_HAVE_ONEDNN
#include <dnnl.h>

/* Everything that decides a primitive: a product of ndims 2 (m, k) x (k, n) or 4
 * (batch0, batch1, m, k) x (batch0, batch1, k, n), each operand's element strides
 * in that order of dimensions (2 dimensions: the last two). Made with memset, so
 * that keys compare with memcmp. */
typedef struct {
    int64_t ndims, batch0, batch1, m, n, k;
    int64_t a_strides[4], b_strides[4], c_strides[4];
    int64_t with_bias, accumulate;
    int64_t times; /* 1: C = (A' B') * F elementwise, F fp32 with C's shape and strides */
    int64_t f32;   /* 1: A and B fp32; 0: bf16 */
    float scale;
    int32_t unused;
} matmul_key;

typedef struct {
    matmul_key key;
    dnnl_primitive_t primitive;
    dnnl_memory_t a, b, c, bias, scratchpad, factor;
} matmul_entry;

/* A DiT needs about 30 shapes per batch size; sampling adds its batch sizes. */
#define MAX_PRIMITIVES 1024

static struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    matmul_entry entries[MAX_PRIMITIVES];
    int count;
    long made;
    void *scratchpad;        /* the one user-mode scratchpad every primitive runs with */
    size_t scratchpad_bytes;
} onednn;

static void check(dnnl_status_t status, const char *what) {
    if (status != dnnl_success) fatal_internal("oneDNN: %s failed (status %d)", what, (int)status);
}

static void start(void) {
    if (onednn.engine) return;
    /* The avx512_core_bf16 kernels on every CPU with the instruction, so that a
     * machine with AMX computes the same bits (AMX sums in another order). */
    dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx512_core_bf16);
    check(dnnl_engine_create(&onednn.engine, dnnl_cpu, 0), "engine_create");
    check(dnnl_stream_create(&onednn.stream, onednn.engine, dnnl_stream_default_flags), "stream_create");
}

dnnl_engine_t onednn_cpu_engine(void) {
    start();
    return onednn.engine;
}

/* The operand (rows, cols) of element strides `strides` (the last two of four
 * when the key is 2-dimensional; the batch dimensions first when 4). */
static void operand_desc(dnnl_memory_desc_t *md, const matmul_key *key, int64_t rows, int64_t cols,
                         const int64_t strides[4], dnnl_data_type_t type) {
    if (key->ndims == 2) {
        const dnnl_dims_t dims = {rows, cols}, plain = {strides[2], strides[3]};
        check(dnnl_memory_desc_init_by_strides(md, 2, dims, type, plain), "memory_desc_init_by_strides");
    } else {
        const dnnl_dims_t dims = {key->batch0, key->batch1, rows, cols};
        const dnnl_dims_t all = {strides[0], strides[1], strides[2], strides[3]};
        check(dnnl_memory_desc_init_by_strides(md, 4, dims, type, all), "memory_desc_init_by_strides");
    }
}

static void grow_scratchpad(size_t bytes) {
    if (bytes <= onednn.scratchpad_bytes) return;
    free(onednn.scratchpad);
    const size_t rounded = (bytes + 63) / 64 * 64; /* aligned_alloc takes multiples of the alignment */
    onednn.scratchpad = aligned_alloc(64, rounded);
    if (!onednn.scratchpad) fatal_internal("oneDNN: out of memory for a %zu-byte scratchpad", rounded);
    onednn.scratchpad_bytes = rounded;
    for (int i = 0; i < onednn.count; i++)
        check(dnnl_memory_set_data_handle(onednn.entries[i].scratchpad, onednn.scratchpad), "set_data_handle");
}

static matmul_entry *make(const matmul_key *key) {
    if (onednn.count == MAX_PRIMITIVES) fatal_internal("oneDNN: more than %d GEMM shapes", MAX_PRIMITIVES);
    start();
    matmul_entry *e = &onednn.entries[onednn.count];
    memset(e, 0, sizeof(*e));
    e->key = *key;
    dnnl_memory_desc_t a, b, c, bias;
    const dnnl_data_type_t type = key->f32 ? dnnl_f32 : dnnl_bf16;
    operand_desc(&a, key, key->m, key->k, key->a_strides, type);
    operand_desc(&b, key, key->k, key->n, key->b_strides, type);
    operand_desc(&c, key, key->m, key->n, key->c_strides, dnnl_f32);
    const dnnl_dims_t bias_dims = {1, key->n}, bias_strides = {key->n, 1};
    check(dnnl_memory_desc_init_by_strides(&bias, 2, bias_dims, dnnl_f32, bias_strides), "memory_desc_init_by_strides");
    dnnl_matmul_desc_t desc;
    check(dnnl_matmul_desc_init(&desc, &a, &b, key->with_bias ? &bias : NULL, &c), "matmul_desc_init");
    dnnl_primitive_attr_t attr;
    check(dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode");
    if (key->scale != 1.0f)
        check(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &key->scale), "set_output_scales");
    if (key->accumulate || key->times) {
        dnnl_post_ops_t post_ops;
        check(dnnl_post_ops_create(&post_ops), "post_ops_create");
        if (key->accumulate) /* C += A' B': the sum post-op */
            check(dnnl_post_ops_append_sum(post_ops, 1.0f), "post_ops_append_sum");
        else /* C = (A' B') * F: a binary post-op on the fp32 result, one rounding as a separate multiply */
            check(dnnl_post_ops_append_binary(post_ops, dnnl_binary_mul, &c), "post_ops_append_binary");
        check(dnnl_primitive_attr_set_post_ops(attr, post_ops), "set_post_ops");
        dnnl_post_ops_destroy(post_ops);
    }
    dnnl_primitive_desc_t pd;
    check(dnnl_primitive_desc_create(&pd, &desc, attr, onednn.engine, NULL), "matmul primitive_desc_create");
    dnnl_primitive_attr_destroy(attr);
    const dnnl_memory_desc_t *scratchpad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    check(dnnl_primitive_create(&e->primitive, pd), "matmul primitive_create");
    check(dnnl_memory_create(&e->a, &a, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
    check(dnnl_memory_create(&e->b, &b, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
    check(dnnl_memory_create(&e->c, &c, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
    check(dnnl_memory_create(&e->bias, &bias, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
    check(dnnl_memory_create(&e->scratchpad, scratchpad, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
    check(dnnl_memory_create(&e->factor, &c, onednn.engine, DNNL_MEMORY_NONE), "memory_create");
    const size_t scratchpad_bytes = dnnl_memory_desc_get_size(scratchpad);
    dnnl_primitive_desc_destroy(pd);
    onednn.count++;
    onednn.made++;
    grow_scratchpad(scratchpad_bytes);
    check(dnnl_memory_set_data_handle(e->scratchpad, onednn.scratchpad), "set_data_handle");
    return e;
}

static matmul_entry *find_or_make(const matmul_key *key) {
    for (int i = 0; i < onednn.count; i++)
        if (memcmp(&onednn.entries[i].key, key, sizeof(*key)) == 0) return &onednn.entries[i];
    return make(key);
}

static void run(matmul_entry *e, const void *a, const void *b, const float *bias, const float *factor, float *c) {
    /* inside a parallel region oneDNN would run on the calling thread alone, and the one
     * scratchpad would be shared between threads */
    if (omp_in_parallel()) fatal_internal("gemm_onednn: called inside an OpenMP parallel region");
    check(dnnl_memory_set_data_handle(e->a, (void *)a), "set_data_handle");
    check(dnnl_memory_set_data_handle(e->b, (void *)b), "set_data_handle");
    check(dnnl_memory_set_data_handle(e->c, c), "set_data_handle");
    dnnl_exec_arg_t args[6] = {{DNNL_ARG_SRC, e->a},
                               {DNNL_ARG_WEIGHTS, e->b},
                               {DNNL_ARG_DST, e->c},
                               {DNNL_ARG_SCRATCHPAD, e->scratchpad},
                               {DNNL_ARG_BIAS, e->bias}};
    int count = 4;
    if (bias) {
        check(dnnl_memory_set_data_handle(e->bias, (void *)bias), "set_data_handle");
        count++;
    }
    if (factor) {
        check(dnnl_memory_set_data_handle(e->factor, (void *)factor), "set_data_handle");
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, e->factor};
    }
    check(dnnl_primitive_execute(e->primitive, onednn.stream, count, args), "matmul execute");
    check(dnnl_stream_wait(onednn.stream), "stream_wait");
}

/* gemm_onednn (f32 0) or gemm_onednn_f32 (f32 1), or with a NULL c only the making
 * of its primitives. */
static void gemm_or_plan(int f32, int transpose_a, int transpose_b, int m, int n, int k, const void *a, int lda,
                         const void *b, int ldb, int with_bias, const float *bias, float beta, int times,
                         const float *factor, float *c, int ldc) {
    if (beta != 0.0f && beta != 1.0f) fatal_internal("gemm_onednn: beta %g (0 or 1)", beta);
    if (times && (beta != 0.0f || transpose_a || with_bias))
        fatal_internal("gemm_onednn: a product times a factor has beta 0, no bias and A not transposed");
    if (m < 1 || n < 1 || k < 1) fatal_internal("gemm_onednn: empty product (%d, %d, %d)", m, n, k);
    const size_t element = f32 ? sizeof(float) : sizeof(uint16_t);
    /* k cut into chunks with a transposed A (see gemm_onednn.h); each chunk after the first accumulates */
    const int chunk = transpose_a ? GEMM_ONEDNN_K_CHUNK : k;
    for (int k0 = 0; k0 < k; k0 += chunk) {
        const int kc = k - k0 < chunk ? k - k0 : chunk;
        matmul_key key;
        memset(&key, 0, sizeof(key));
        key.ndims = 2, key.batch0 = key.batch1 = 1, key.m = m, key.n = n, key.k = kc;
        key.a_strides[2] = transpose_a ? 1 : lda, key.a_strides[3] = transpose_a ? lda : 1;
        key.b_strides[2] = transpose_b ? 1 : ldb, key.b_strides[3] = transpose_b ? ldb : 1;
        key.c_strides[2] = ldc, key.c_strides[3] = 1;
        key.with_bias = with_bias && k0 == 0, key.accumulate = beta != 0.0f || k0 > 0, key.scale = 1.0f;
        key.times = times;
        key.f32 = f32;
        matmul_entry *e = find_or_make(&key);
        if (!c) continue;
        const char *a_part = (const char *)a + element * (transpose_a ? (size_t)k0 * lda : (size_t)k0);
        const char *b_part = (const char *)b + element * (transpose_b ? (size_t)k0 : (size_t)k0 * ldb);
        run(e, a_part, b_part, k0 == 0 ? bias : NULL, factor, c);
    }
}

void gemm_onednn(int transpose_a, int transpose_b, int m, int n, int k, const uint16_t *a, int lda,
                 const uint16_t *b, int ldb, const float *bias, float beta, float *c, int ldc) {
    gemm_or_plan(0, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, bias != NULL, bias, beta, 0, NULL, c, ldc);
}

void gemm_onednn_plan(int transpose_a, int transpose_b, int m, int n, int k, int lda, int ldb, int with_bias,
                      float beta, int ldc) {
    gemm_or_plan(0, transpose_a, transpose_b, m, n, k, NULL, lda, NULL, ldb, with_bias, NULL, beta, 0, NULL, NULL,
                 ldc);
}

void gemm_onednn_f32(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
                     int ldb, const float *bias, float beta, float *c, int ldc) {
    gemm_or_plan(1, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, bias != NULL, bias, beta, 0, NULL, c, ldc);
}

void gemm_onednn_f32_plan(int transpose_a, int transpose_b, int m, int n, int k, int lda, int ldb, int with_bias,
                          float beta, int ldc) {
    gemm_or_plan(1, transpose_a, transpose_b, m, n, k, NULL, lda, NULL, ldb, with_bias, NULL, beta, 0, NULL, NULL,
                 ldc);
}

void gemm_onednn_f32_times(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                           const float *factor, float *c, int ldc) {
    if (!factor) fatal_internal("gemm_onednn_f32_times: no factor");
    gemm_or_plan(1, 0, transpose_b, m, n, k, a, lda, b, ldb, 0, NULL, 0.0f, 1, factor, c, ldc);
}

void gemm_onednn_f32_times_plan(int transpose_b, int m, int n, int k, int lda, int ldb, int ldc) {
    gemm_or_plan(1, 0, transpose_b, m, n, k, NULL, lda, NULL, ldb, 0, NULL, 0.0f, 1, NULL, NULL, ldc);
}

static matmul_entry *batched_entry(const batched_product *p, float scale, int f32) {
    matmul_key key;
    memset(&key, 0, sizeof(key));
    key.ndims = 4, key.batch0 = p->batch[0], key.batch1 = p->batch[1], key.m = p->m, key.n = p->n, key.k = p->k;
    memcpy(key.a_strides, p->a_strides, sizeof(key.a_strides));
    memcpy(key.b_strides, p->b_strides, sizeof(key.b_strides));
    memcpy(key.c_strides, p->c_strides, sizeof(key.c_strides));
    key.scale = scale;
    key.f32 = f32;
    return find_or_make(&key);
}

void batched_gemm_onednn(const batched_product *p, const uint16_t *a, const uint16_t *b, float scale, float *c) {
    run(batched_entry(p, scale, 0), a, b, NULL, NULL, c);
}

void batched_gemm_onednn_plan(const batched_product *p, float scale) { batched_entry(p, scale, 0); }

void batched_gemm_onednn_f32(const batched_product *p, const float *a, const float *b, float scale, float *c) {
    run(batched_entry(p, scale, 1), a, b, NULL, NULL, c);
}

void batched_gemm_onednn_f32_plan(const batched_product *p, float scale) { batched_entry(p, scale, 1); }

long gemm_onednn_primitives_made(void) { return onednn.made; }

void gemm_onednn_release_all(void) {
    for (int i = 0; i < onednn.count; i++) {
        matmul_entry *e = &onednn.entries[i];
        dnnl_primitive_destroy(e->primitive);
        dnnl_memory_destroy(e->a);
        dnnl_memory_destroy(e->b);
        dnnl_memory_destroy(e->c);
        dnnl_memory_destroy(e->bias);
        dnnl_memory_destroy(e->scratchpad);
        dnnl_memory_destroy(e->factor);
    }
    onednn.count = 0;
}

#else

void gemm_onednn(int transpose_a, int transpose_b, int m, int n, int k, const uint16_t *a, int lda,
                 const uint16_t *b, int ldb, const float *bias, float beta, float *c, int ldc) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb;
    (void)bias, (void)beta, (void)c, (void)ldc;
    fatal_internal("gemm_onednn: this build has no oneDNN");
}

void gemm_onednn_plan(int transpose_a, int transpose_b, int m, int n, int k, int lda, int ldb, int with_bias,
                      float beta, int ldc) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)lda, (void)ldb, (void)with_bias;
    (void)beta, (void)ldc;
    fatal_internal("gemm_onednn_plan: this build has no oneDNN");
}

void gemm_onednn_f32(int transpose_a, int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
                     int ldb, const float *bias, float beta, float *c, int ldc) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb;
    (void)bias, (void)beta, (void)c, (void)ldc;
    fatal_internal("gemm_onednn_f32: this build has no oneDNN");
}

void gemm_onednn_f32_plan(int transpose_a, int transpose_b, int m, int n, int k, int lda, int ldb, int with_bias,
                          float beta, int ldc) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)lda, (void)ldb, (void)with_bias;
    (void)beta, (void)ldc;
    fatal_internal("gemm_onednn_f32_plan: this build has no oneDNN");
}

void gemm_onednn_f32_times(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                           const float *factor, float *c, int ldc) {
    (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)factor, (void)c;
    (void)ldc;
    fatal_internal("gemm_onednn_f32_times: this build has no oneDNN");
}

void gemm_onednn_f32_times_plan(int transpose_b, int m, int n, int k, int lda, int ldb, int ldc) {
    (void)transpose_b, (void)m, (void)n, (void)k, (void)lda, (void)ldb, (void)ldc;
    fatal_internal("gemm_onednn_f32_times_plan: this build has no oneDNN");
}

void batched_gemm_onednn(const batched_product *p, const uint16_t *a, const uint16_t *b, float scale, float *c) {
    (void)p, (void)a, (void)b, (void)scale, (void)c;
    fatal_internal("batched_gemm_onednn: this build has no oneDNN");
}

void batched_gemm_onednn_plan(const batched_product *p, float scale) {
    (void)p, (void)scale;
    fatal_internal("batched_gemm_onednn_plan: this build has no oneDNN");
}

void batched_gemm_onednn_f32(const batched_product *p, const float *a, const float *b, float scale, float *c) {
    (void)p, (void)a, (void)b, (void)scale, (void)c;
    fatal_internal("batched_gemm_onednn_f32: this build has no oneDNN");
}

void batched_gemm_onednn_f32_plan(const batched_product *p, float scale) {
    (void)p, (void)scale;
    fatal_internal("batched_gemm_onednn_f32_plan: this build has no oneDNN");
}

long gemm_onednn_primitives_made(void) { return 0; }

void gemm_onednn_release_all(void) {}

#endif
