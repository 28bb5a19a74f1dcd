/* Image folders in the ImageFolder convention: every *.png, *.jpg and *.jpeg
 * (any case) under a folder, recursively, with the class taken from the
 * first-level subfolder (class names are those subfolders' names, sorted with
 * strcmp, ImageNet's synset order for its folders; the label is the index). */
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
 * the first-level subfolders holding at least one image; with any of them, an
 * image directly in DIR is an error. fatal_input naming the path for an
 * unreadable DIR, an empty one (no image) or a stray image. The same on every
 * rank. */
void image_folder_list(const char *dir, image_folder_listing *listing);
void image_folder_free(image_folder_listing *listing);

#endif
