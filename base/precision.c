/* The 16-bit formats (see precision.h): names and the threaded array helpers.
 * Each helper runs over fixed chunks in parallel, the loop over one chunk in a
 * plain function that the compiler vectorises. The half conversions cannot be
 * vectorised by the compiler (the subnormal path's float addition keeps it from
 * if-converting the loop); with F16C (x86-64-v3) the hardware's conversion
 * instructions do them, eight at a time: they round to nearest-even with
 * half's range exactly like fp16_from_float (tests/test_precision.c compares
 * them), NaN payloads aside. */
#include "precision.h"

#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#define PRECISION_CHUNK 16384

int precision_from_name(const char *name) {
    if (strcmp(name, "fp32") == 0) return PRECISION_FP32;
    if (strcmp(name, "bf16") == 0) return PRECISION_BF16;
    if (strcmp(name, "fp16") == 0) return PRECISION_FP16;
    return -1;
}

const char *precision_name(ldm_precision precision) {
    return precision == PRECISION_BF16 ? "bf16" : precision == PRECISION_FP16 ? "fp16" : "fp32";
}

size_t precision_bytes(ldm_precision precision) { return precision == PRECISION_FP32 ? 4 : 2; }

static void round_bf16_chunk(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_float(bf16_from_float(x[i]));
}

#if defined(__F16C__)
#define F16C_ROUNDING (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#endif

static void round_fp16_chunk(float *x, size_t n) {
    size_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), F16C_ROUNDING)));
#endif
    for (; i < n; i++) x[i] = fp16_to_float(fp16_from_float(x[i]));
}

static void store_bf16_chunk(uint16_t *stored, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t h = bf16_from_float(x[i]);
        stored[i] = h;
        x[i] = bf16_to_float(h);
    }
}

static void store_fp16_chunk(uint16_t *stored, float *x, size_t n) {
    size_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), F16C_ROUNDING);
        _mm_storeu_si128((__m128i *)(stored + i), h);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; i++) {
        uint16_t h = fp16_from_float(x[i]);
        stored[i] = h;
        x[i] = fp16_to_float(h);
    }
}

static void load_bf16_chunk(float *x, const uint16_t *stored, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_float(stored[i]);
}

static void load_fp16_chunk(float *x, const uint16_t *stored, size_t n) {
    size_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(stored + i))));
#endif
    for (; i < n; i++) x[i] = fp16_to_float(stored[i]);
}

/* Runs body over [0, n) in chunks (offset, count), in parallel when there are several. */
#define FOR_EACH_CHUNK(n, body)                                                                 \
    do {                                                                                        \
        size_t chunks_ = ((n) + PRECISION_CHUNK - 1) / PRECISION_CHUNK;                         \
        _Pragma("omp parallel for schedule(static) if (chunks_ > 1)")                           \
        for (size_t c_ = 0; c_ < chunks_; c_++) {                                               \
            size_t offset = c_ * PRECISION_CHUNK;                                               \
            size_t count = (n) - offset < PRECISION_CHUNK ? (n) - offset : PRECISION_CHUNK;     \
            body;                                                                               \
        }                                                                                       \
    } while (0)

void precision_round_array(ldm_precision precision, float *x, size_t n) {
    if (precision == PRECISION_BF16) FOR_EACH_CHUNK(n, round_bf16_chunk(x + offset, count));
    if (precision == PRECISION_FP16) FOR_EACH_CHUNK(n, round_fp16_chunk(x + offset, count));
}

void precision_round_serial(ldm_precision precision, float *x, size_t n) {
    if (precision == PRECISION_BF16) round_bf16_chunk(x, n);
    if (precision == PRECISION_FP16) round_fp16_chunk(x, n);
}

void precision_store(ldm_precision precision, uint16_t *stored, float *x, size_t n) {
    if (precision == PRECISION_BF16) FOR_EACH_CHUNK(n, store_bf16_chunk(stored + offset, x + offset, count));
    if (precision == PRECISION_FP16) FOR_EACH_CHUNK(n, store_fp16_chunk(stored + offset, x + offset, count));
}

void precision_load(ldm_precision precision, float *x, const uint16_t *stored, size_t n) {
    if (precision == PRECISION_BF16) FOR_EACH_CHUNK(n, load_bf16_chunk(x + offset, stored + offset, count));
    if (precision == PRECISION_FP16) FOR_EACH_CHUNK(n, load_fp16_chunk(x + offset, stored + offset, count));
}
