/* Listing ImageFolder-style trees and square crop + resize (see image_folder.h). */
#include "image_folder.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "fatal.h"

/* Deeper nesting than this is taken for a symbolic-link loop. */
#define IMAGE_FOLDER_MAX_DEPTH 32

typedef struct {
    char **items;
    int64_t count, capacity;
} string_list;

static void string_list_add(string_list *list, const char *text) {
    if (list->count == list->capacity) {
        list->capacity = list->capacity ? 2 * list->capacity : 64;
        char **grown = realloc(list->items, sizeof(char *) * (size_t)list->capacity);
        if (!grown) fatal_internal("out of memory listing image files");
        list->items = grown;
    }
    list->items[list->count++] = xstrdup(text);
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorts with strcmp (an empty list has no items array, which qsort must not see). */
static void string_list_sort(string_list *list) {
    if (list->count > 1) qsort(list->items, (size_t)list->count, sizeof(char *), compare_strings);
}

typedef struct {
    char *path;
    int32_t label;
} labelled_path;

static int compare_labelled_paths(const void *a, const void *b) {
    return strcmp(((const labelled_path *)a)->path, ((const labelled_path *)b)->path);
}

static int has_png_extension(const char *name) {
    size_t n = strlen(name);
    return n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

static void join_path(char *out, size_t size, const char *dir, const char *name) {
    if ((size_t)snprintf(out, size, "%s/%s", dir, name) >= size) fatal_input("%s/%s: path too long", dir, name);
}

/* Adds every PNG below `dir` (recursively) to `files`. */
static void collect_pngs(const char *dir, int depth, string_list *files) {
    if (depth > IMAGE_FOLDER_MAX_DEPTH)
        fatal_input("%s: folders nested more than %d deep (a symbolic-link loop?)", dir, IMAGE_FOLDER_MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) fatal_input("%s: cannot read the folder: %s", dir, strerror(errno));
    struct dirent *entry;
    while ((entry = readdir(d))) {
        if (entry->d_name[0] == '.') continue;
        char path[4096];
        join_path(path, sizeof(path), dir, entry->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue; /* a dangling link is no image */
        if (S_ISDIR(st.st_mode))
            collect_pngs(path, depth + 1, files);
        else if (S_ISREG(st.st_mode) && has_png_extension(entry->d_name))
            string_list_add(files, path);
    }
    closedir(d);
}

void image_folder_list(const char *dir_argument, image_folder_listing *listing) {
    memset(listing, 0, sizeof(*listing));
    /* "DIR/" and "DIR" list the same paths. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", dir_argument);
    for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--) dir[n - 1] = '\0';

    DIR *d = opendir(dir);
    if (!d) fatal_input("%s: cannot read the image folder: %s", dir, strerror(errno));
    string_list top_files = {0}, subfolders = {0};
    struct dirent *entry;
    while ((entry = readdir(d))) {
        if (entry->d_name[0] == '.') continue;
        char path[4096];
        join_path(path, sizeof(path), dir, entry->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode))
            string_list_add(&subfolders, entry->d_name);
        else if (S_ISREG(st.st_mode) && has_png_extension(entry->d_name))
            string_list_add(&top_files, path);
    }
    closedir(d);
    string_list_sort(&subfolders);

    /* Each subfolder's PNGs; the subfolders holding any are the classes. */
    string_list files = {0}, class_names = {0};
    int32_t *labels = NULL;
    for (int64_t i = 0; i < subfolders.count; i++) {
        char path[4096];
        join_path(path, sizeof(path), dir, subfolders.items[i]);
        int64_t before = files.count;
        collect_pngs(path, 1, &files);
        if (files.count == before) continue;
        labels = realloc(labels, sizeof(int32_t) * (size_t)files.count);
        if (!labels) fatal_internal("out of memory listing image files");
        for (int64_t f = before; f < files.count; f++) labels[f] = (int32_t)class_names.count;
        string_list_add(&class_names, subfolders.items[i]);
    }

    if (class_names.count > 0 && top_files.count > 0)
        fatal_input("%s: a PNG directly in %s, which also has class subfolders (%s, ...); expected every image "
                    "in a class subfolder",
                    top_files.items[0], dir, class_names.items[0]);
    if (class_names.count == 0 && top_files.count == 0)
        fatal_input("%s: no PNG files found (expected *.png files, directly or in class subfolders)", dir);

    if (class_names.count > 0) {
        /* Sorted by path (strcmp), each path keeping its label, so the order
         * does not depend on the directory order or on the number of ranks. */
        labelled_path *sorted = xmalloc(sizeof(labelled_path) * (size_t)files.count);
        for (int64_t f = 0; f < files.count; f++) sorted[f] = (labelled_path){files.items[f], labels[f]};
        qsort(sorted, (size_t)files.count, sizeof(labelled_path), compare_labelled_paths);
        for (int64_t f = 0; f < files.count; f++) {
            files.items[f] = sorted[f].path;
            labels[f] = sorted[f].label;
        }
        free(sorted);
        listing->count = files.count;
        listing->paths = files.items;
        listing->labels = labels;
        listing->num_classes = (int)class_names.count;
        listing->class_names = class_names.items;
    } else {
        string_list_sort(&top_files);
        listing->count = top_files.count;
        listing->paths = top_files.items;
    }
    for (int64_t i = 0; i < subfolders.count; i++) free(subfolders.items[i]);
    free(subfolders.items);
}

/* Per output index along one axis: the source pixels it draws from and their
 * weights (summing to 1). */
typedef struct {
    int first, count; /* source pixels first .. first + count - 1 */
    double *weights;  /* count weights, into a shared pool */
} resample_taps;

/* Taps from a source axis of `source` pixels to `size` pixels. Shrinking:
 * each output pixel averages the source interval it covers, [i, i + 1) * scale,
 * weighting partly covered pixels by their overlap. Enlarging: bilinear
 * between the two nearest source centres at (i + 0.5) / scale - 0.5. */
static double *make_taps(int source, int size, resample_taps *taps) {
    double scale = (double)source / size;
    int max_taps = source > size ? (int)ceil(scale) + 2 : 2;
    double *pool = xmalloc(sizeof(double) * (size_t)size * (size_t)max_taps);
    for (int i = 0; i < size; i++) {
        resample_taps *t = &taps[i];
        t->weights = pool + (size_t)i * max_taps;
        if (source > size) {
            double lo = i * scale, hi = (i + 1) * scale;
            t->first = (int)floor(lo);
            int last = (int)ceil(hi) - 1;
            if (last > source - 1) last = source - 1;
            t->count = last - t->first + 1;
            for (int k = 0; k < t->count; k++) {
                double a = t->first + k, b = a + 1;
                double overlap = (b < hi ? b : hi) - (a > lo ? a : lo);
                t->weights[k] = overlap / scale;
            }
        } else {
            double x = (i + 0.5) * scale - 0.5;
            if (x < 0) x = 0;
            if (x > source - 1) x = source - 1;
            t->first = (int)floor(x);
            double frac = x - t->first;
            if (t->first + 1 <= source - 1) {
                t->count = 2;
                t->weights[0] = 1 - frac;
                t->weights[1] = frac;
            } else {
                t->count = 1;
                t->weights[0] = 1;
            }
        }
    }
    return pool;
}

void image_square_resize(const uint8_t *image, int height, int width, int channels, int size, uint8_t *out) {
    int side = height < width ? height : width;
    int top = (height - side) / 2, left = (width - side) / 2;
    const size_t row_stride = (size_t)width * channels;
    const uint8_t *square = image + (size_t)top * row_stride + (size_t)left * channels;
    if (side == size) {
        for (int y = 0; y < size; y++)
            memcpy(out + (size_t)y * size * channels, square + (size_t)y * row_stride, (size_t)size * channels);
        return;
    }
    resample_taps *taps = xmalloc(sizeof(resample_taps) * (size_t)size);
    double *pool = make_taps(side, size, taps);
    /* Horizontal pass into side x size x channels doubles, then vertical. */
    double *rows = xmalloc(sizeof(double) * (size_t)side * size * channels);
    for (int y = 0; y < side; y++)
        for (int x = 0; x < size; x++)
            for (int c = 0; c < channels; c++) {
                const resample_taps *t = &taps[x];
                double sum = 0;
                for (int k = 0; k < t->count; k++)
                    sum += t->weights[k] * square[(size_t)y * row_stride + (size_t)(t->first + k) * channels + c];
                rows[((size_t)y * size + x) * channels + c] = sum;
            }
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
            for (int c = 0; c < channels; c++) {
                const resample_taps *t = &taps[y];
                double sum = 0;
                for (int k = 0; k < t->count; k++)
                    sum += t->weights[k] * rows[((size_t)(t->first + k) * size + x) * channels + c];
                long v = lround(sum);
                out[((size_t)y * size + x) * channels + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    free(rows);
    free(pool);
    free(taps);
}

void image_folder_free(image_folder_listing *listing) {
    for (int64_t i = 0; i < listing->count; i++) free(listing->paths[i]);
    free(listing->paths);
    free(listing->labels);
    for (int k = 0; k < listing->num_classes; k++) free(listing->class_names[k]);
    free(listing->class_names);
    memset(listing, 0, sizeof(*listing));
}
