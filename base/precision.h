/* The 16-bit number formats of mixed-precision training, emulated on the CPU:
 * conversions between float and bfloat16 / IEEE half (binary16), each rounding
 * to nearest with ties to even, and the array helpers the models use to keep
 * GEMM inputs and stored activations in a 16-bit type while arithmetic
 * accumulates in fp32.
 *
 * bfloat16: the upper 16 bits of a float (8-bit exponent, 7-bit mantissa), so
 * its range is float's; finite values too large for it round to infinity.
 * half: 5-bit exponent, 10-bit mantissa: largest finite 65504 (values from
 * 65520 up round to infinity), subnormals down to 2^-24 (values up to 2^-25
 * round to zero). NaN stays NaN (made quiet) in both.
 *
 * The array functions are written without branches so that they vectorise, and
 * every element's result depends on that element alone: bit-identical for any
 * thread count. */
#ifndef LDM_PRECISION_H
#define LDM_PRECISION_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum { PRECISION_FP32 = 0, PRECISION_BF16 = 1, PRECISION_FP16 = 2 } ldm_precision;

/* "fp32" | "bf16" | "fp16" -> the enum; -1 for anything else. */
int precision_from_name(const char *name);
const char *precision_name(ldm_precision precision);
/* Bytes of one stored activation value: 4 or 2. */
size_t precision_bytes(ldm_precision precision);

static inline uint32_t precision_float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float precision_bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float -> bfloat16 bits, nearest-even; NaN -> a quiet NaN of the same sign. */
static inline uint16_t bf16_from_float(float f) {
    uint32_t x = precision_float_bits(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t nan = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

static inline float bf16_to_float(uint16_t h) { return precision_bits_float((uint32_t)h << 16); }

/* float -> half bits, nearest-even, overflow to infinity, subnormals kept.
 * Normal results: the exponent is rebased by adding (15 - 127) << 23 and the
 * rounding bias 0xfff plus the lowest kept mantissa bit (ties to even) before
 * the 13 dropped bits are shifted out; a carry runs into the exponent (up to
 * infinity) as it should. Subnormal results: adding 0.5 (2^-1, whose ulp is 2^-24,
 * half's smallest subnormal) lets the float adder round the value to a multiple
 * of 2^-24 in the current (nearest-even) mode; the mantissa bits are then the
 * half's bits. */
static inline uint16_t fp16_from_float(float f) {
    uint32_t x = precision_float_bits(f);
    uint32_t sign = x & 0x80000000u, a = x ^ sign;
    uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
    uint32_t subnormal = precision_float_bits(precision_bits_float(a) + 0.5f) - 0x3f000000u;
    uint32_t r = a < 0x38800000u ? subnormal : normal;       /* below 2^-14: subnormal (or zero) */
    r = a >= 0x47800000u ? 0x7c00u : r;                      /* 2^16 and up (and infinity): infinity */
    r = a > 0x7f800000u ? 0x7e00u : r;                       /* NaN: a quiet NaN */
    return (uint16_t)(r | (sign >> 16));
}

static inline float fp16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t normal = ((exponent + 112u) << 23) | (mantissa << 13);
    uint32_t special = 0x7f800000u | (mantissa << 13); /* infinity, NaN */
    float subnormal = (float)mantissa * 0x1p-24f;      /* exact */
    uint32_t bits = exponent == 31 ? special : normal;
    bits = exponent == 0 ? precision_float_bits(subnormal) : bits;
    return precision_bits_float(bits | sign);
}

/* The float nearest to f that the format holds (f itself in fp32). */
static inline float precision_round(ldm_precision precision, float f) {
    if (precision == PRECISION_BF16) return bf16_to_float(bf16_from_float(f));
    if (precision == PRECISION_FP16) return fp16_to_float(fp16_from_float(f));
    return f;
}

/* x (n) rounded in place to the format (nothing in fp32). Threaded. */
void precision_round_array(ldm_precision precision, float *x, size_t n);
/* The same on the calling thread alone (for use inside parallel loops). */
void precision_round_serial(ldm_precision precision, float *x, size_t n);
/* stored (n) = the 16-bit bits of x (n), and x rounded in place to what is
 * stored, so that what the forward pass uses next and what backward reads back
 * are the same numbers. precision is bf16 or fp16. Threaded. */
void precision_store(ldm_precision precision, uint16_t *stored, float *x, size_t n);
/* x (n) = the values of stored (n). Threaded. */
void precision_load(ldm_precision precision, float *x, const uint16_t *stored, size_t n);

#endif
