/* Decoding one image file, JPEG (libjpeg-turbo's TurboJPEG) or PNG (libpng),
 * told apart by their signatures, into 8-bit gray or RGB pixels the way PIL's
 * Image.open(path).convert("RGB" or "L") makes them, which is what DiT's and
 * ADM's data pipelines feed their models:
 *   gray           repeated to R = G = B (RGB); as it is (gray)
 *   RGB            as it is; gray = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (ITU-R 601-2, PIL's rounding)
 *   CMYK, YCCK     JPEG: taken in Adobe's inverted convention (as Photoshop and libjpeg write it and PIL
 *                  reads it), then R = (255 - K) - C (255 - K) / 255 (G, B from M, Y alike), rounded as
 *                  PIL's cmyk2rgb rounds it
 *   palette        expanded to its colours
 *   alpha, tRNS    dropped (the stored colour is kept, as PIL's convert does)
 *   16-bit PNG     the high byte of each sample (PIL's reading of 16-bit RGB; PIL clips 16-bit gray)
 *   1, 2, 4 bits   gray PNG: scaled to 0..255 (x 255, 85, 17)
 * Colour profiles, gAMA and EXIF orientation are ignored, as PIL's convert ignores them.
 * Errors are returned, not fatal, so that a caller can skip bad files. */
#ifndef LDM_IMAGE_DECODE_H
#define LDM_IMAGE_DECODE_H

#include <stddef.h>
#include <stdint.h>

/* Larger images are refused rather than risking a huge allocation from a
 * damaged header. */
#define IMAGE_DECODE_MAX_SIDE 65535
#define IMAGE_DECODE_MAX_PIXELS (1LL << 28)

typedef struct {
    uint8_t *pixels; /* height x width x channels, row-major, channels interleaved */
    int height, width, channels;
} decoded_image;

/* Reads PATH into `image` with `channels` 1 (gray) or 3 (RGB). Returns 0, or
 * -1 with `reason` set to what is wrong (unreadable, not a JPEG or PNG, damaged,
 * truncated, too large) and nothing to free. */
int image_decode_file(const char *path, int channels, decoded_image *image, char *reason, size_t reason_size);

/* The same from bytes already in memory. */
int image_decode_bytes(const uint8_t *bytes, size_t size, int channels, decoded_image *image, char *reason,
                       size_t reason_size);

void decoded_image_free(decoded_image *image);

#endif
