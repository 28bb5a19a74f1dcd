/* The ADM center crop that DiT's data pipeline applies to every training image
 * (center_crop_arr in guided-diffusion and DiT), computed as PIL computes it:
 *   while the short side is at least 2S: resize to (W // 2, H // 2) with PIL's
 *   BOX filter; then resize with PIL's BICUBIC filter (a = -0.5) to
 *   (round(W S / short), round(H S / short)) (Python's round: half to even);
 *   then crop S x S at ((W - S) // 2, (H - S) // 2) (the odd pixel of an
 *   uneven margin goes to the right and bottom).
 * Each resize is PIL's two-pass resampling (horizontal pass first, each pass
 * rounded to 8 bits) with its filter support, tap bounds and 22-bit fixed-point
 * weights, so the result matches PIL's bit for bit where the arithmetic is the
 * same (the test allows one level). */
#ifndef LDM_CENTER_CROP_H
#define LDM_CENTER_CROP_H

#include <stdint.h>

typedef enum { RESAMPLE_BOX, RESAMPLE_BICUBIC } resample_filter;

/* Resizes in_height x in_width x channels pixels to out_height x out_width as
 * PIL's Image.resize(size, filter) does (a copy when the size is the same). */
void pil_resize(const uint8_t *in, int in_height, int in_width, int channels, resample_filter filter,
                int out_height, int out_width, uint8_t *out);

/* The ADM center crop of a height x width x channels image to size x size x
 * channels pixels in `out`. */
void adm_center_crop(const uint8_t *image, int height, int width, int channels, int size, uint8_t *out);

#endif
