/* Image folders in the ImageFolder convention: every *.png (any case) under a
 * folder, recursively, with the class taken from the first-level subfolder
 * (class names are those subfolders' names, sorted; the label is the index).
 * Also the geometry the converter applies to each image: centre crop to a
 * square and deterministic resizing. */
#ifndef LDM_IMAGE_FOLDER_H
#define LDM_IMAGE_FOLDER_H

#include <stdint.h>

typedef struct {
    int64_t count;
    char **paths;      /* count paths, sorted with strcmp */
    int32_t *labels;   /* count labels, or NULL when the folder has no class subfolders */
    int num_classes;   /* 0 without class subfolders */
    char **class_names;
} image_folder_listing;

/* Lists DIR. Entries whose names start with '.' are skipped. Class folders are
 * the first-level subfolders holding at least one PNG; with any of them, a PNG
 * directly in DIR is an error. fatal_input naming the path for an unreadable
 * DIR, an empty one (no PNG) or a stray PNG. The same on every rank. */
void image_folder_list(const char *dir, image_folder_listing *listing);
void image_folder_free(image_folder_listing *listing);

/* Centre-crops a height x width x channels image to a square (the odd pixel
 * of an uneven margin goes to the bottom and right) and resizes it to size x
 * size: area averaging when shrinking, bilinear (pixel centres aligned, edges
 * clamped) when enlarging, a copy at the same size. Computed in double and
 * rounded to nearest, so the result is deterministic. */
void image_square_resize(const uint8_t *image, int height, int width, int channels, int size, uint8_t *out);

#endif
