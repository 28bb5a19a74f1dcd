/* JPEG and PNG files to 8-bit gray or RGB pixels with PIL's conversions (see
 * image_decode.h). */
#include "image_decode.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "fatal.h"

static int fail(char *reason, size_t reason_size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *reason, size_t reason_size, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(reason, reason_size, fmt, args);
    va_end(args);
    return -1;
}

static int check_size(long long width, long long height, const char *kind, char *reason, size_t reason_size) {
    if (width < 1 || height < 1 || width > IMAGE_DECODE_MAX_SIDE || height > IMAGE_DECODE_MAX_SIDE ||
        width * height > IMAGE_DECODE_MAX_PIXELS)
        return fail(reason, reason_size, "%s of %lldx%lld pixels; expected sides in [1, %d] and at most %lld pixels",
                    kind, width, height, IMAGE_DECODE_MAX_SIDE, (long long)IMAGE_DECODE_MAX_PIXELS);
    return 0;
}

/* PIL's RGB to L: ITU-R 601-2 luma in 16-bit fixed point, rounded. */
static uint8_t luma(const uint8_t *rgb) {
    return (uint8_t)(((uint32_t)rgb[0] * 19595u + (uint32_t)rgb[1] * 38470u + (uint32_t)rgb[2] * 7471u + 0x8000u) >> 16);
}

/* Pixels with `source` interleaved channels (1 gray, 2 gray + alpha, 3 RGB,
 * 4 RGBA) to `channels` (1 or 3), alpha dropped; in place is not allowed. */
static void convert_pixels(const uint8_t *in, int source, int64_t count, int channels, uint8_t *out) {
    for (int64_t i = 0; i < count; i++) {
        const uint8_t *p = in + i * source;
        if (source <= 2) {
            for (int c = 0; c < channels; c++) out[i * channels + c] = p[0];
        } else if (channels == 3) {
            out[3 * i] = p[0], out[3 * i + 1] = p[1], out[3 * i + 2] = p[2];
        } else {
            out[i] = luma(p);
        }
    }
}

/* ---- JPEG ---- */

/* PIL's cmyk2rgb, on CMYK already un-inverted: R = 255 - K - C (255 - K) / 255,
 * the product rounded as PIL's MULDIV255. */
static uint8_t cmyk_channel(int c, int k) {
    int nk = 255 - k, t = c * nk + 128;
    int v = nk - (((t >> 8) + t) >> 8);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* After a TurboJPEG call failed: whether the file ended early (libjpeg's
 * JWRN_JPEG_EOF, the one warning PIL does not pass over: it finds the end of
 * the data itself). */
static int jpeg_truncated(tjhandle handle) {
    return strncmp(tjGetErrorStr2(handle), "Premature end of JPEG file", 26) == 0;
}

/* After a TurboJPEG call failed: whether it met only warnings, libjpeg's
 * reports of recoverable damage after which it decodes on (PIL passes over
 * them all). TurboJPEG's error code stays "warning" once one was met, even if
 * a fatal error followed, so the last message must be one of libjpeg's
 * warnings (JWRN_* in jerror.h) too. */
static int jpeg_warning_only(tjhandle handle) {
    static const char *const warnings[] = {
        "Corrupt JPEG data", "Warning: unknown JFIF revision", "Inconsistent progression sequence",
        "Unknown Adobe color transform", "Invalid SOS parameters for sequential JPEG",
        "Application transferred too many scanlines",
    };
    if (tjGetErrorCode(handle) != TJERR_WARNING || jpeg_truncated(handle)) return 0;
    const char *message = tjGetErrorStr2(handle);
    for (size_t i = 0; i < sizeof(warnings) / sizeof(warnings[0]); i++)
        if (strncmp(message, warnings[i], strlen(warnings[i])) == 0) return 1;
    return 0;
}

static int decode_jpeg(const uint8_t *bytes, size_t size, int channels, decoded_image *image, char *reason,
                       size_t reason_size) {
    tjhandle handle = tjInitDecompress();
    if (!handle) fatal_internal("cannot start the JPEG decoder: %s", tjGetErrorStr2(NULL));
    int width = 0, height = 0, subsampling = 0, colorspace = 0;
    if (tjDecompressHeader3(handle, bytes, (unsigned long)size, &width, &height, &subsampling, &colorspace) != 0 &&
        !jpeg_warning_only(handle)) {
        fail(reason, reason_size, "%s JPEG: %s", jpeg_truncated(handle) ? "truncated" : "damaged",
             tjGetErrorStr2(handle));
        tjDestroy(handle);
        return -1;
    }
    if (check_size(width, height, "JPEG", reason, reason_size)) {
        tjDestroy(handle);
        return -1;
    }
    const int cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
    const int gray = colorspace == TJCS_GRAY;
    const int format = cmyk ? TJPF_CMYK : gray ? TJPF_GRAY : TJPF_RGB;
    const int decoded_channels = cmyk ? 4 : gray ? 1 : 3;
    const int64_t count = (int64_t)width * height;
    uint8_t *decoded = xmalloc((size_t)count * decoded_channels);
    /* The accurate IDCT and fancy upsampling: TurboJPEG's defaults for decoding,
     * and libjpeg's, which PIL uses. */
    if (tjDecompress2(handle, bytes, (unsigned long)size, decoded, width, 0, height, format, 0) != 0 &&
        !jpeg_warning_only(handle)) {
        fail(reason, reason_size, "%s JPEG: %s", jpeg_truncated(handle) ? "truncated" : "damaged",
             tjGetErrorStr2(handle));
        free(decoded);
        tjDestroy(handle);
        return -1;
    }
    tjDestroy(handle);
    image->height = height, image->width = width, image->channels = channels;
    image->pixels = xmalloc((size_t)count * channels);
    if (cmyk) {
        /* Adobe's inverted CMYK, as PIL assumes for every CMYK JPEG. */
        for (int64_t i = 0; i < count; i++) {
            const uint8_t *p = decoded + 4 * i;
            int k = 255 - p[3];
            uint8_t rgb[3] = {cmyk_channel(255 - p[0], k), cmyk_channel(255 - p[1], k), cmyk_channel(255 - p[2], k)};
            if (channels == 3)
                memcpy(image->pixels + 3 * i, rgb, 3);
            else
                image->pixels[i] = luma(rgb);
        }
    } else {
        convert_pixels(decoded, decoded_channels, count, channels, image->pixels);
    }
    free(decoded);
    return 0;
}

/* ---- PNG ---- */

typedef struct {
    const uint8_t *bytes;
    size_t size, position;
    char message[200];
} png_source;

static void png_read_from_memory(png_structp png, png_bytep out, png_size_t length) {
    png_source *source = png_get_io_ptr(png);
    if (length > source->size - source->position) png_error(png, "the file ends early (truncated)");
    memcpy(out, source->bytes + source->position, length);
    source->position += length;
}

static void png_error_to_message(png_structp png, png_const_charp message) {
    png_source *source = png_get_error_ptr(png);
    snprintf(source->message, sizeof(source->message), "%s", message);
    png_longjmp(png, 1);
}

static void png_ignore_warning(png_structp png, png_const_charp message) {
    (void)png, (void)message;
}

static int decode_png(const uint8_t *bytes, size_t size, int channels, decoded_image *image, char *reason,
                      size_t reason_size) {
    png_source source = {.bytes = bytes, .size = size};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &source, png_error_to_message, png_ignore_warning);
    if (!png) fatal_internal("cannot start the PNG decoder");
    png_infop info = png_create_info_struct(png);
    if (!info) fatal_internal("cannot start the PNG decoder");
    /* Set before the jump point and read after it: volatile keeps them valid. */
    uint8_t *volatile decoded = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(decoded);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return fail(reason, reason_size, "damaged PNG: %s", source.message);
    }
    png_set_read_fn(png, &source, png_read_from_memory);
    /* libpng refuses larger sides itself, before allocating anything. */
    png_set_user_limits(png, IMAGE_DECODE_MAX_SIDE, IMAGE_DECODE_MAX_SIDE);
    png_read_info(png, info);
    png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
    if (check_size(width, height, "PNG", reason, reason_size)) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    int color_type = png_get_color_type(png, info);
    png_set_strip_16(png); /* the high byte, as PIL */
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY) png_set_expand_gray_1_2_4_to_8(png);
    png_set_packing(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const int source_channels = png_get_channels(png, info);
    const size_t row_bytes = png_get_rowbytes(png, info);
    if (source_channels < 1 || source_channels > 4 || row_bytes != (size_t)width * source_channels)
        png_error(png, "unexpected pixel layout after expansion");
    decoded = xmalloc(row_bytes * height);
    rows = xmalloc(sizeof(png_bytep) * height);
    for (png_uint_32 y = 0; y < height; y++) rows[y] = decoded + (size_t)y * row_bytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);

    const int64_t count = (int64_t)width * height;
    image->height = (int)height, image->width = (int)width, image->channels = channels;
    image->pixels = xmalloc((size_t)count * channels);
    convert_pixels(decoded, source_channels, count, channels, image->pixels);
    free(decoded);
    return 0;
}

/* ---- files ---- */

int image_decode_bytes(const uint8_t *bytes, size_t size, int channels, decoded_image *image, char *reason,
                       size_t reason_size) {
    if (channels != 1 && channels != 3) fatal_internal("image_decode: channels must be 1 or 3, got %d", channels);
    memset(image, 0, sizeof(*image));
    static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 8 && memcmp(bytes, png_signature, 8) == 0)
        return decode_png(bytes, size, channels, image, reason, reason_size);
    if (size >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff)
        return decode_jpeg(bytes, size, channels, image, reason, reason_size);
    return fail(reason, reason_size, "neither a JPEG nor a PNG (expected the signature FF D8 FF or 89 'PNG')");
}

int image_decode_file(const char *path, int channels, decoded_image *image, char *reason, size_t reason_size) {
    memset(image, 0, sizeof(*image));
    FILE *file = fopen(path, "rb");
    if (!file) return fail(reason, reason_size, "cannot open: %s", strerror(errno));
    uint8_t *bytes = NULL;
    size_t size = 0, capacity = 0;
    for (;;) {
        if (size == capacity) {
            capacity = capacity ? 2 * capacity : 1 << 16;
            uint8_t *grown = realloc(bytes, capacity);
            if (!grown) fatal_internal("out of memory reading %s", path);
            bytes = grown;
        }
        size_t got = fread(bytes + size, 1, capacity - size, file);
        size += got;
        if (got == 0) break;
    }
    int read_error = ferror(file);
    fclose(file);
    int status;
    if (read_error)
        status = fail(reason, reason_size, "cannot read: %s", strerror(errno));
    else
        status = image_decode_bytes(bytes, size, channels, image, reason, reason_size);
    free(bytes);
    return status;
}

void decoded_image_free(decoded_image *image) {
    free(image->pixels);
    memset(image, 0, sizeof(*image));
}
