/* Listing ImageFolder-style trees (see image_folder.h). */
#include "image_folder.h"

#include <dirent.h>
#include <errno.h>
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

static int has_image_extension(const char *name) {
    static const char *const extensions[] = {".png", ".jpg", ".jpeg"};
    size_t n = strlen(name);
    for (int i = 0; i < 3; i++) {
        size_t e = strlen(extensions[i]);
        if (n > e && strcasecmp(name + n - e, extensions[i]) == 0) return 1;
    }
    return 0;
}

static void join_path(char *out, size_t size, const char *dir, const char *name) {
    if ((size_t)snprintf(out, size, "%s/%s", dir, name) >= size) fatal_input("%s/%s: path too long", dir, name);
}

/* Adds every image file below `dir` (recursively) to `files`. */
static void collect_images(const char *dir, int depth, string_list *files) {
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
            collect_images(path, depth + 1, files);
        else if (S_ISREG(st.st_mode) && has_image_extension(entry->d_name))
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
        else if (S_ISREG(st.st_mode) && has_image_extension(entry->d_name))
            string_list_add(&top_files, path);
    }
    closedir(d);
    string_list_sort(&subfolders);

    /* Each subfolder's images; the subfolders holding any are the classes. */
    string_list files = {0}, class_names = {0};
    int32_t *labels = NULL;
    for (int64_t i = 0; i < subfolders.count; i++) {
        char path[4096];
        join_path(path, sizeof(path), dir, subfolders.items[i]);
        int64_t before = files.count;
        collect_images(path, 1, &files);
        if (files.count == before) continue;
        labels = realloc(labels, sizeof(int32_t) * (size_t)files.count);
        if (!labels) fatal_internal("out of memory listing image files");
        for (int64_t f = before; f < files.count; f++) labels[f] = (int32_t)class_names.count;
        string_list_add(&class_names, subfolders.items[i]);
    }

    if (class_names.count > 0 && top_files.count > 0)
        fatal_input("%s: an image directly in %s, which also has class subfolders (%s, ...); expected every image "
                    "in a class subfolder",
                    top_files.items[0], dir, class_names.items[0]);
    if (class_names.count == 0 && top_files.count == 0)
        fatal_input("%s: no image files found (expected *.png, *.jpg or *.jpeg files, directly or in class "
                    "subfolders)",
                    dir);

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

void image_folder_free(image_folder_listing *listing) {
    for (int64_t i = 0; i < listing->count; i++) free(listing->paths[i]);
    free(listing->paths);
    free(listing->labels);
    for (int k = 0; k < listing->num_classes; k++) free(listing->class_names[k]);
    free(listing->class_names);
    memset(listing, 0, sizeof(*listing));
}
