/* Procedural shape images (see synthetic_images.h). Every pixel is the share
 * of 4x4 sub-pixel points inside the shape, blended between the background
 * and the shape's colour, so edges are anti-aliased and the result is exact
 * integer arithmetic on top of the shape tests. */
#include "synthetic_images.h"

#include <math.h>
#include <stdio.h>

#include "fatal.h"
#include "rng.h"

/* The rng purpose key of synthetic samples: stream (seed, index, purpose). */
#define SYNTHETIC_RNG_PURPOSE 0x53594e5448ULL /* "SYNTH" */
#define SUBSAMPLES 4

static const char *const shape_names[SYNTHETIC_SHAPE_COUNT] = {
    "circle", "square", "triangle", "cross", "ring", "diamond",
    "horizontal-bars", "vertical-bars", "x", "checker", "frame", "dots",
};

int synthetic_class(int64_t index, int num_classes) { return (int)(index % num_classes); }

void synthetic_class_name(int class_index, char *out, int out_size) {
    int cycle = class_index / SYNTHETIC_SHAPE_COUNT;
    if (cycle == 0)
        snprintf(out, (size_t)out_size, "%s", shape_names[class_index]);
    else
        snprintf(out, (size_t)out_size, "%s-%d", shape_names[class_index % SYNTHETIC_SHAPE_COUNT], cycle + 1);
}

/* Whether the point (u, v), in the shape's own frame (centre at 0, radius 1),
 * lies inside shape s. */
static int inside_shape(int s, double u, double v) {
    double au = fabs(u), av = fabs(v);
    switch (s) {
    case 0: return u * u + v * v <= 1.0;
    case 1: return au <= 0.8 && av <= 0.8;
    case 2: return v >= -0.9 && v <= 0.8 && au <= 0.55 * (v + 0.9);   /* apex up */
    case 3: return (au <= 0.3 && av <= 0.95) || (av <= 0.3 && au <= 0.95);
    case 4: { double r2 = u * u + v * v; return r2 <= 1.0 && r2 >= 0.36; }
    case 5: return au + av <= 1.0;
    case 6: return au <= 0.9 && av <= 0.9 && ((int)floor((v + 0.9) / 0.36)) % 2 == 0;
    case 7: return au <= 0.9 && av <= 0.9 && ((int)floor((u + 0.9) / 0.36)) % 2 == 0;
    case 8: return au <= 0.85 && av <= 0.85 && (fabs(u - v) <= 0.35 || fabs(u + v) <= 0.35);
    case 9: return au <= 0.85 && av <= 0.85 && ((u < 0) != (v < 0));
    case 10: return au <= 0.85 && av <= 0.85 && (au >= 0.5 || av >= 0.5);
    default: {
        /* 3 x 3 dots of radius 0.22 at -0.6, 0, 0.6 */
        double du = u - 0.6 * round(u / 0.6), dv = v - 0.6 * round(v / 0.6);
        return au <= 0.85 && av <= 0.85 && du * du + dv * dv <= 0.22 * 0.22;
    }
    }
}

void synthetic_image(uint64_t seed, int64_t index, int num_classes, int size, int channels, uint8_t *out) {
    int k = synthetic_class(index, num_classes);
    int shape = k % SYNTHETIC_SHAPE_COUNT, cycle = k / SYNTHETIC_SHAPE_COUNT;
    rng_stream rng = rng_stream_for(seed, (uint64_t)index, SYNTHETIC_RNG_PURPOSE);
    /* Placement in pixels: the shape stays inside the image. */
    double radius = size * (0.22 + 0.12 * rng_uniform(&rng));
    double cx = radius + (size - 2 * radius) * rng_uniform(&rng);
    double cy = radius + (size - 2 * radius) * rng_uniform(&rng);
    double angle = 0.5 * (rng_uniform(&rng) - 0.5); /* +-14 degrees */
    double ca = cos(angle), sa = sin(angle);
    /* Background: black for the first cycle of shapes, then grey levels. */
    int background = cycle == 0 ? 0 : 40 + (cycle * 37) % 80;
    int colour[SYNTHETIC_MAX_CHANNELS];
    if (channels < 1 || channels > SYNTHETIC_MAX_CHANNELS)
        fatal_internal("synthetic_image: channels must be in [1, %d], got %d", SYNTHETIC_MAX_CHANNELS, channels);
    for (int c = 0; c < channels; c++) colour[c] = 130 + (int)(125.0f * rng_uniform(&rng));
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            int hits = 0;
            for (int sy = 0; sy < SUBSAMPLES; sy++)
                for (int sx = 0; sx < SUBSAMPLES; sx++) {
                    double px = x + (sx + 0.5) / SUBSAMPLES - cx, py = y + (sy + 0.5) / SUBSAMPLES - cy;
                    double u = (ca * px + sa * py) / radius, v = (-sa * px + ca * py) / radius;
                    hits += inside_shape(shape, u, v);
                }
            uint8_t *pixel = out + ((size_t)y * size + x) * channels;
            for (int c = 0; c < channels; c++) {
                int target = colour[c];
                /* Rounded integer blend: background + (target - background) * hits / 16. */
                int numerator = background * SUBSAMPLES * SUBSAMPLES + (target - background) * hits;
                pixel[c] = (uint8_t)((numerator + SUBSAMPLES * SUBSAMPLES / 2) / (SUBSAMPLES * SUBSAMPLES));
            }
        }
}
