/* Unit test of checkpoints/tensors/safetensors.c: round trips through the writer and
 * reader, the file layout the writer produces, and one hand-crafted bad file for
 * every refusal the reader promises (plus every truncation and single-byte
 * corruption of a small valid file), each of which must give -1, an empty
 * result and a one-line message naming the file. */
#include "safetensors.h"
#include "test_util.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];
static char err[1024];

/* CHECK_STR_CONTAINS tests its haystack for NULL, which an array never is. */
static const char *msg(void) { return err; }

static void path_in_tmp(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

static void write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    if (size && fwrite(data, 1, size, f) != size) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

static unsigned char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

/* A safetensors file from raw parts: an explicit header length lets a case lie
 * about it; otherwise the true length of the header text is used. */
static void write_st_len(const char *path, uint64_t header_len, const char *header,
                         const void *bytes, size_t nbytes) {
    size_t hl = strlen(header);
    size_t size = 8 + hl + nbytes;
    unsigned char *buf = malloc(size);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (nbytes) memcpy(buf + 8 + hl, bytes, nbytes);
    write_file(path, buf, size);
    free(buf);
}

static void write_st(const char *path, const char *header, const void *bytes, size_t nbytes) {
    write_st_len(path, strlen(header), header, bytes, nbytes);
}

static int is_empty(const safetensors_file *f) {
    return f->path == NULL && f->tensors == NULL && f->count == 0 && f->metadata_keys == NULL &&
           f->metadata_values == NULL && f->metadata_count == 0 && f->bytes == NULL &&
           f->bytes_size == 0;
}

/* Reads path, expecting a refusal whose message contains the path and word. */
static void expect_refused_path(const char *path, const char *word, int line) {
    safetensors_file f;
    memset(&f, 0x5a, sizeof f); /* garbage in, so that "left empty" is really tested */
    err[0] = '\0';
    int rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == -1, "line %d: %s was accepted", line, path);
    if (rc == 0) {
        safetensors_free(&f);
        return;
    }
    CHECK_MSG(is_empty(&f), "line %d: *out not left empty", line);
    CHECK_MSG(strncmp(err, path, strlen(path)) == 0, "line %d: message \"%s\" does not start with %s",
              line, err, path);
    /* Look past the path: case files are named after what is wrong with them. */
    size_t skip = strlen(err) >= strlen(path) ? strlen(path) : 0;
    CHECK_MSG(strstr(err + skip, word) != NULL, "line %d: expected \"%s\" in \"%s\"", line, word,
              err);
    CHECK_MSG(strchr(err, '\n') == NULL, "line %d: message is not one line: \"%s\"", line, err);
}

/* Writes a file named name from header and bytes, then expects a refusal. */
static void refuse_case(const char *name, const char *header, const void *bytes, size_t nbytes,
                        const char *word, int line) {
    char path[256];
    path_in_tmp(path, sizeof path, name);
    write_st(path, header, bytes, nbytes);
    expect_refused_path(path, word, line);
    unlink(path);
}
#define REFUSE(name, header, bytes, nbytes, word) \
    refuse_case(name, header, bytes, nbytes, word, __LINE__)

static int count_dir_entries(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void test_dtypes(void) {
    static const struct {
        safetensors_dtype dtype;
        const char *name;
        size_t size;
    } expect[] = {
        {SAFETENSORS_F32, "F32", 4}, {SAFETENSORS_F16, "F16", 2}, {SAFETENSORS_BF16, "BF16", 2},
        {SAFETENSORS_F64, "F64", 8}, {SAFETENSORS_I64, "I64", 8}, {SAFETENSORS_I32, "I32", 4},
        {SAFETENSORS_I16, "I16", 2}, {SAFETENSORS_I8, "I8", 1},   {SAFETENSORS_U8, "U8", 1},
        {SAFETENSORS_BOOL, "BOOL", 1},
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        CHECK(safetensors_dtype_size(expect[i].dtype) == expect[i].size);
        CHECK(strcmp(safetensors_dtype_name(expect[i].dtype), expect[i].name) == 0);
    }
    CHECK(safetensors_dtype_size((safetensors_dtype)99) == 0);
    CHECK(safetensors_dtype_name((safetensors_dtype)99) != NULL);
}

static void test_round_trip(void) {
    char path[256];
    path_in_tmp(path, sizeof path, "round.safetensors");

    float w[2][3] = {{1.5f, -2.25f, 3.0f}, {0.0f, -0.0f, 1e-30f}};
    int32_t idx[4] = {7, -1, INT32_MAX, INT32_MIN};
    uint8_t u8[5] = {0, 1, 127, 128, 255}; /* odd size: later tensors start unaligned */
    double scalar = 3.141592653589793;
    uint16_t bf16[2][2][2] = {{{0x3f80, 0xbf80}, {0x0000, 0x7f80}}, {{1, 2}, {3, 4}}};
    safetensors_entry entries[] = {
        {.name = "blocks.0.attn.qkv.weight", .dtype = SAFETENSORS_F32, .ndim = 2,
         .shape = {2, 3}, .data = w},
        {.name = "idx", .dtype = SAFETENSORS_I32, .ndim = 1, .shape = {4}, .data = idx},
        {.name = "bytes", .dtype = SAFETENSORS_U8, .ndim = 1, .shape = {5}, .data = u8},
        {.name = "scalar", .dtype = SAFETENSORS_F64, .ndim = 0, .data = &scalar},
        {.name = "empty", .dtype = SAFETENSORS_F32, .ndim = 2, .shape = {0, 3}, .data = NULL},
        {.name = "bf", .dtype = SAFETENSORS_BF16, .ndim = 3, .shape = {2, 2, 2}, .data = bf16},
    };
    const int n = (int)(sizeof entries / sizeof entries[0]);
    const char *keys[] = {"format", "note"};
    const char *values[] = {"pt", "quote \" backslash \\ newline \n unicode \xc3\xa9"};
    int rc = safetensors_write(path, entries, n, keys, values, 2, err, sizeof err);
    CHECK_MSG(rc == 0, "write failed: %s", err);
    CHECK(count_dir_entries() == 1); /* no temporary file left behind */

    /* Layout: the byte buffer starts 8-byte aligned, the padding is spaces. */
    size_t size = 0;
    unsigned char *raw = slurp(path, &size);
    CHECK(raw != NULL && size >= 8);
    if (raw && size >= 8) {
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | raw[i];
        CHECK((8 + hl) % 8 == 0);
        size_t data = 24 + 16 + 5 + 8 + 0 + 16;
        CHECK(size == 8 + hl + data);
        CHECK(raw[8] == '{');
        size_t last = 8 + (size_t)hl - 1;
        while (last > 8 && raw[last] == ' ') last--;
        CHECK(raw[last] == '}');
        CHECK(memcmp(raw + 8 + hl, w, sizeof w) == 0);
        CHECK(memcmp(raw + size - sizeof bf16, bf16, sizeof bf16) == 0);
    }
    free(raw);

    safetensors_file f;
    rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "read failed: %s", err);
    if (rc != 0) return;
    CHECK(strcmp(f.path, path) == 0);
    CHECK(f.count == n);
    CHECK(f.bytes_size == 24 + 16 + 5 + 8 + 16);
    /* Written in order, so file order of data offsets is the entry order (the empty
     * tensor shares its offset with the next one and sorts first). */
    for (int i = 0; i < n && i < f.count; i++) {
        const safetensors_tensor *t = &f.tensors[i];
        const safetensors_entry *e = &entries[i];
        CHECK_MSG(strcmp(t->name, e->name) == 0, "tensor %d is %s, expected %s", i, t->name,
                  e->name);
        CHECK(t->dtype == e->dtype);
        CHECK(t->ndim == e->ndim);
        size_t numel = 1;
        for (int k = 0; k < e->ndim; k++) {
            CHECK(t->shape[k] == e->shape[k]);
            numel *= (size_t)e->shape[k];
        }
        CHECK(t->numel == numel);
        CHECK(t->nbytes == numel * safetensors_dtype_size(e->dtype));
        CHECK(t->data >= (const void *)f.bytes &&
              (const unsigned char *)t->data + t->nbytes <= f.bytes + f.bytes_size);
        if (t->nbytes) CHECK(memcmp(t->data, e->data, t->nbytes) == 0);
        CHECK(safetensors_find(&f, e->name) == t);
    }
    const safetensors_tensor *s = safetensors_find(&f, "scalar");
    CHECK(s && s->ndim == 0 && s->numel == 1 && s->nbytes == 8);
    if (s) {
        double got; /* data follows the odd-sized U8 tensor: not 8-byte aligned */
        memcpy(&got, s->data, sizeof got);
        CHECK_CLOSE(got, scalar, 0, 0);
    }
    const safetensors_tensor *e = safetensors_find(&f, "empty");
    CHECK(e && e->numel == 0 && e->nbytes == 0);
    CHECK(safetensors_find(&f, "missing") == NULL);
    CHECK(safetensors_find(&f, "__metadata__") == NULL);
    CHECK(f.metadata_count == 2);
    const char *fmt = safetensors_metadata(&f, "format");
    CHECK(fmt && strcmp(fmt, "pt") == 0);
    const char *note = safetensors_metadata(&f, "note");
    CHECK(note && strcmp(note, values[1]) == 0);
    CHECK(safetensors_metadata(&f, "missing") == NULL);
    safetensors_free(&f);
    CHECK(is_empty(&f));
    safetensors_free(&f); /* freeing twice is harmless */

    /* Overwriting replaces the file whole (rename), here with no metadata. */
    rc = safetensors_write(path, entries + 1, 1, NULL, NULL, 0, err, sizeof err);
    CHECK_MSG(rc == 0, "rewrite failed: %s", err);
    rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "reread failed: %s", err);
    if (rc == 0) {
        CHECK(f.count == 1 && f.metadata_count == 0 && f.bytes_size == 16);
        CHECK(f.count == 1 && strcmp(f.tensors[0].name, "idx") == 0);
        safetensors_free(&f);
    }
    CHECK(count_dir_entries() == 1);

    /* A file with no tensors at all. */
    rc = safetensors_write(path, NULL, 0, NULL, NULL, 0, err, sizeof err);
    CHECK_MSG(rc == 0, "empty write failed: %s", err);
    rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "empty read failed: %s", err);
    if (rc == 0) {
        CHECK(f.count == 0 && f.bytes_size == 0 && f.metadata_count == 0);
        safetensors_free(&f);
    }
    unlink(path);
}

/* Files the writer would not produce but the spec allows. */
static void test_accepted(void) {
    char path[256];
    path_in_tmp(path, sizeof path, "ok.safetensors");
    safetensors_file f;
    unsigned char buf[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

    /* Unpadded header, keys in any order, tensors listed out of offset order. */
    write_st(path,
             "{\"b\":{\"data_offsets\":[8,16],\"shape\":[2],\"dtype\":\"I32\"},"
             "\"a\":{\"dtype\":\"U8\",\"shape\":[2,4],\"data_offsets\":[0,8]}}",
             buf, 16);
    int rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "unpadded: %s", err);
    if (rc == 0) {
        CHECK(f.count == 2);
        CHECK(strcmp(f.tensors[0].name, "a") == 0 && strcmp(f.tensors[1].name, "b") == 0);
        CHECK(f.tensors[0].data == f.bytes && f.tensors[1].data == f.bytes + 8);
        safetensors_free(&f);
    }

    /* Space padding and whitespace inside; an unknown extra field is ignored, as
     * the reference implementation does; metadata may be empty. */
    write_st(path,
             "{ \"__metadata__\" : { } ,\n \"a\" : { \"dtype\" : \"BOOL\", \"shape\" : [ ] ,"
             " \"data_offsets\" : [ 0 , 1 ], \"extra\": 1 } }        ",
             buf, 1);
    rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "padded: %s", err);
    if (rc == 0) {
        CHECK(f.count == 1 && f.tensors[0].ndim == 0 && f.tensors[0].numel == 1);
        CHECK(f.metadata_count == 0);
        safetensors_free(&f);
    }

    /* Zero-sized tensors may share offsets with each other and a neighbour. */
    write_st(path,
             "{\"z1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"z2\":{\"dtype\":\"F64\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
             "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"y\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[4,8]}}",
             buf, 8);
    rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "zero-sized: %s", err);
    if (rc == 0) {
        CHECK(f.count == 4);
        CHECK(f.count == 4 && strcmp(f.tensors[0].name, "x") == 0 &&
              strcmp(f.tensors[3].name, "y") == 0);
        safetensors_free(&f);
    }

    /* A huge dimension next to a zero one is an empty tensor, not an overflow. */
    write_st(path,
             "{\"z\":{\"dtype\":\"F64\",\"shape\":[0,4503599627370496,4503599627370496],"
             "\"data_offsets\":[0,0]}}",
             NULL, 0);
    rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "huge empty: %s", err);
    if (rc == 0) {
        CHECK(f.count == 1 && f.tensors[0].numel == 0);
        safetensors_free(&f);
    }
    unlink(path);
}

static void test_refused(void) {
    char path[256];
    unsigned char buf[64] = {0};

    /* Missing file, a directory, files too short for the length field. */
    path_in_tmp(path, sizeof path, "missing.safetensors");
    expect_refused_path(path, "cannot open", __LINE__);
    expect_refused_path(tmpdir, "not a regular file", __LINE__);
    for (size_t n = 0; n < 8; n++) {
        path_in_tmp(path, sizeof path, "short.safetensors");
        write_file(path, "\x02\0\0\0\0\0\0\0", n);
        expect_refused_path(path, "too short", __LINE__);
    }
    unlink(path);

    /* Header length past the end of the file, or absurd. */
    path_in_tmp(path, sizeof path, "len.safetensors");
    write_st_len(path, 3, "{}", NULL, 0);
    expect_refused_path(path, "past the end of the file", __LINE__);
    write_st_len(path, UINT64_MAX, "{}", NULL, 0);
    expect_refused_path(path, "header length", __LINE__);
    write_st_len(path, (uint64_t)1 << 63, "{}", NULL, 0);
    expect_refused_path(path, "past the end of the file", __LINE__);
    /* A header length that fits the file but is beyond any sane header: a sparse
     * file makes this cheap, and the reader must refuse before allocating it. */
    {
        uint64_t huge = 100000001;
        write_st_len(path, huge, "{}", NULL, 0);
        if (truncate(path, (off_t)(8 + huge + 8)) == 0)
            expect_refused_path(path, "exceeds the limit", __LINE__);
    }
    /* Header length too small: the JSON is cut off. */
    write_st_len(path, 1, "{}", NULL, 0);
    expect_refused_path(path, "not valid JSON", __LINE__);
    unlink(path);

    /* Header not JSON, not an object, or not text. */
    REFUSE("empty_header.safetensors", "", NULL, 0, "not valid JSON");
    REFUSE("garbage.safetensors", "hello", NULL, 0, "not valid JSON");
    REFUSE("trailing.safetensors", "{} x", NULL, 0, "not valid JSON");
    REFUSE("two.safetensors", "{}{}", NULL, 0, "not valid JSON");
    REFUSE("unclosed.safetensors", "{\"a\":{\"dtype\":\"F32\"", NULL, 0, "not valid JSON");
    REFUSE("array.safetensors", "[]", NULL, 0, "not a JSON object");
    REFUSE("number.safetensors", "42", NULL, 0, "not a JSON object");
    REFUSE("string.safetensors", "\"x\"", NULL, 0, "not a JSON object");
    REFUSE("utf8.safetensors", "{\"\xff\":1}", NULL, 0, "UTF-8");
    REFUSE("overlong.safetensors", "{\"\xc0\xaf\":1}", NULL, 0, "UTF-8");
    {
        /* A NUL in the header would hide the rest of it from the JSON parser. */
        path_in_tmp(path, sizeof path, "nul.safetensors");
        static const char h[] = "{}\0{\"a\":1}";
        unsigned char file[8 + sizeof h - 1];
        memset(file, 0, 8);
        file[0] = (unsigned char)(sizeof h - 1);
        memcpy(file + 8, h, sizeof h - 1);
        write_file(path, file, sizeof file);
        expect_refused_path(path, "NUL", __LINE__);
        unlink(path);
    }

    /* Entries of the wrong kind or lacking fields. */
    REFUSE("entry_number.safetensors", "{\"w\":5}", NULL, 0, "tensor 'w'");
    REFUSE("entry_array.safetensors", "{\"w\":[]}", NULL, 0, "not an object");
    REFUSE("no_dtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", buf, 4,
           "missing \"dtype\"");
    REFUSE("no_shape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", buf, 4,
           "missing \"shape\"");
    REFUSE("no_offsets.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", buf, 4,
           "missing \"data_offsets\"");
    REFUSE("dtype_number.safetensors",
           "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", buf, 4,
           "\"dtype\" is not a string");
    REFUSE("dtype_unknown.safetensors",
           "{\"w\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", buf, 1,
           "unknown dtype 'F8'");
    REFUSE("dtype_case.safetensors",
           "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", buf, 4,
           "unknown dtype");
    REFUSE("shape_object.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", buf, 4,
           "\"shape\" is not an array");
    REFUSE("shape_string.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", buf, 4,
           "shape entry 0 is not a non-negative integer");
    REFUSE("shape_fraction.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]}}", buf, 12,
           "shape entry 1 is not a non-negative integer");
    REFUSE("shape_negative.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", buf, 4,
           "is negative");
    REFUSE("shape_negative2.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,-2],\"data_offsets\":[0,16]}}", buf, 16,
           "is negative");
    REFUSE("shape_null.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}}", buf, 4,
           "shape entry 0");
    REFUSE("shape_huge.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", buf, 4,
           "too large");
    REFUSE("shape_9d.safetensors",
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
           buf, 1, "9 dimensions");
    REFUSE("offsets_string.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0,4\"}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_one.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_empty.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[]}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_three.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", buf, 8,
           "data_offsets");
    REFUSE("offsets_negative.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_fraction.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_strings.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_huge.safetensors",
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1e20]}}", buf, 4,
           "data_offsets");
    REFUSE("offsets_reversed.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", buf, 4,
           "reversed");
    REFUSE("offsets_past_end.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", buf, 4,
           "past the end of the byte buffer");
    REFUSE("offsets_far_past_end.safetensors",
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1000000,1000001]}}", buf, 4,
           "past the end of the byte buffer");

    /* Size and shape disagree; the example message from the design. */
    REFUSE("mismatch.safetensors",
           "{\"blocks.0.attn.qkv.weight\":{\"dtype\":\"F32\",\"shape\":[3,4],"
           "\"data_offsets\":[0,40]}}",
           buf, 40,
           "tensor 'blocks.0.attn.qkv.weight': data_offsets [0, 40] do not match shape [3, 4] "
           "of F32 (48 bytes)");
    REFUSE("mismatch_dtype.safetensors",
           "{\"w\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,16]}}", buf, 16,
           "do not match");
    REFUSE("mismatch_scalar.safetensors",
           "{\"w\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,0]}}", buf, 0,
           "do not match");
    /* numel * size overflows 64 bits and could wrap to the right byte count. */
    REFUSE("overflow.safetensors",
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
           "\"data_offsets\":[0,0]}}",
           NULL, 0, "too large");
    REFUSE("overflow2.safetensors",
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,4]}}",
           buf, 4, "too large");

    /* Layout of the byte buffer: overlaps, holes, trailing bytes. */
    REFUSE("overlap.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
           buf, 24, "overlap");
    REFUSE("overlap_same.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
           buf, 8, "overlap");
    REFUSE("overlap_inside.safetensors",
           "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
           "\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]}}",
           buf, 16, "overlap");
    REFUSE("overlap_zero_inside.safetensors",
           "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
           "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[5,5]}}",
           buf, 16, "overlap");
    REFUSE("hole.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
           buf, 12, "not covered by any tensor");
    REFUSE("hole_front.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", buf, 8,
           "not covered by any tensor");
    REFUSE("trailing_bytes.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", buf, 8,
           "not covered by any tensor");
    REFUSE("no_tensors_bytes.safetensors", "{}", buf, 1, "not covered by any tensor");

    /* Duplicate names (cJSON keeps both) that do not overlap, so only the
     * duplicate check can catch them. */
    REFUSE("duplicate.safetensors",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           buf, 8, "'a' appears twice");
    REFUSE("duplicate_far.safetensors",
           "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
           "\"m\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
           "\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
           buf, 2, "twice");

    /* __metadata__ must be one object of strings. */
    REFUSE("meta_string.safetensors", "{\"__metadata__\":\"x\"}", NULL, 0, "__metadata__");
    REFUSE("meta_array.safetensors", "{\"__metadata__\":[\"x\"]}", NULL, 0, "object of strings");
    REFUSE("meta_number.safetensors", "{\"__metadata__\":{\"step\":5}}", NULL, 0,
           "'step' is not a string");
    REFUSE("meta_nested.safetensors", "{\"__metadata__\":{\"a\":\"b\",\"c\":{}}}", NULL, 0,
           "'c' is not a string");
    REFUSE("meta_dup_key.safetensors", "{\"__metadata__\":{\"a\":\"b\",\"a\":\"c\"}}", NULL, 0,
           "'a' appears twice");
    REFUSE("meta_twice.safetensors", "{\"__metadata__\":{\"a\":\"b\"},\"__metadata__\":{}}",
           NULL, 0, "'__metadata__' appears twice");

    /* A hostile name cannot break the message onto two lines. */
    REFUSE("name_newline.safetensors",
           "{\"evil\\nname\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", buf, 8,
           "evil?name");

    /* Nor can a newline in the path itself. */
    {
        path_in_tmp(path, sizeof path, "line\nbreak.safetensors");
        write_file(path, "\x02", 1);
        safetensors_file f;
        CHECK(safetensors_read(path, &f, err, sizeof err) == -1);
        CHECK(strchr(err, '\n') == NULL);
        CHECK_STR_CONTAINS(msg(), "line break.safetensors: file is 1 bytes");
        unlink(path);
    }

    /* Without an err buffer the reader still refuses cleanly. */
    {
        safetensors_file f;
        path_in_tmp(path, sizeof path, "missing.safetensors");
        CHECK(safetensors_read(path, &f, NULL, 0) == -1);
        CHECK(is_empty(&f));
        char tiny[4];
        CHECK(safetensors_read(path, &f, tiny, sizeof tiny) == -1);
        CHECK(tiny[3] == '\0');
    }
}

/* Every truncation, and every single-byte corruption, of a small valid file. */
static void test_damaged_copies(void) {
    char path[256], bad[256];
    path_in_tmp(path, sizeof path, "small.safetensors");
    path_in_tmp(bad, sizeof bad, "damaged.safetensors");
    float a[3] = {1, 2, 3};
    uint8_t b[2] = {9, 8};
    safetensors_entry entries[] = {
        {.name = "a", .dtype = SAFETENSORS_F32, .ndim = 1, .shape = {3}, .data = a},
        {.name = "b", .dtype = SAFETENSORS_U8, .ndim = 2, .shape = {1, 2}, .data = b},
    };
    const char *keys[] = {"k"};
    const char *values[] = {"v"};
    int rc = safetensors_write(path, entries, 2, keys, values, 1, err, sizeof err);
    CHECK_MSG(rc == 0, "write failed: %s", err);
    size_t size = 0;
    unsigned char *raw = slurp(path, &size);
    CHECK(raw != NULL);
    if (!raw) return;

    for (size_t len = 0; len < size; len++) {
        write_file(bad, raw, len);
        safetensors_file f;
        err[0] = '\0';
        rc = safetensors_read(bad, &f, err, sizeof err);
        CHECK_MSG(rc == -1, "truncation to %zu of %zu bytes was accepted", len, size);
        if (rc == 0) {
            safetensors_free(&f);
            continue;
        }
        CHECK(is_empty(&f));
        CHECK_MSG(strncmp(err, bad, strlen(bad)) == 0, "truncation to %zu: \"%s\"", len, err);
    }

    /* Corruptions may happen to give another valid file; what matters is that
     * each is read or refused cleanly (the sanitizers watch), and that every
     * accepted result stays inside its byte buffer. */
    int refused = 0, accepted = 0;
    static const unsigned char flips[] = {0x01, 0x80, 0xff};
    for (size_t i = 0; i < size; i++) {
        for (size_t k = 0; k < sizeof flips; k++) {
            raw[i] ^= flips[k];
            write_file(bad, raw, size);
            raw[i] ^= flips[k];
            safetensors_file f;
            err[0] = '\0';
            rc = safetensors_read(bad, &f, err, sizeof err);
            if (rc == 0) {
                accepted++;
                for (int t = 0; t < f.count; t++)
                    CHECK((const unsigned char *)f.tensors[t].data + f.tensors[t].nbytes <=
                          f.bytes + f.bytes_size);
                safetensors_free(&f);
            } else {
                refused++;
                CHECK(is_empty(&f) && strncmp(err, bad, strlen(bad)) == 0);
            }
        }
    }
    CHECK(refused > 0);
    free(raw);
    unlink(bad);
    unlink(path);
}

static void test_write_errors(void) {
    char path[256];
    path_in_tmp(path, sizeof path, "w.safetensors");
    float x[4] = {0};
    safetensors_entry e = {.name = "x", .dtype = SAFETENSORS_F32, .ndim = 1, .shape = {4},
                           .data = x};
    safetensors_entry bad;

#define WRITE_REFUSED(entries, n, word)                                                    \
    do {                                                                                   \
        err[0] = '\0';                                                                     \
        CHECK(safetensors_write(path, entries, n, NULL, NULL, 0, err, sizeof err) == -1);  \
        CHECK_STR_CONTAINS(msg(), path);                                                     \
        CHECK_STR_CONTAINS(msg(), word);                                                     \
        CHECK(access(path, F_OK) != 0);                                                    \
        CHECK(count_dir_entries() == 0);                                                   \
    } while (0)

    bad = e, bad.data = NULL;
    WRITE_REFUSED(&bad, 1, "no data");
    bad = e, bad.ndim = SAFETENSORS_MAX_DIMS + 1;
    WRITE_REFUSED(&bad, 1, "ndim");
    bad = e, bad.ndim = -1;
    WRITE_REFUSED(&bad, 1, "ndim");
    bad = e, bad.shape[0] = -4;
    WRITE_REFUSED(&bad, 1, "dimension 0");
    bad = e, bad.dtype = (safetensors_dtype)42;
    WRITE_REFUSED(&bad, 1, "dtype");
    bad = e, bad.name = NULL;
    WRITE_REFUSED(&bad, 1, "no name");
    bad = e, bad.name = "__metadata__";
    WRITE_REFUSED(&bad, 1, "reserved");
    bad = e, bad.ndim = 3, bad.shape[0] = bad.shape[1] = bad.shape[2] = (int64_t)1 << 40;
    WRITE_REFUSED(&bad, 1, "too large");
    safetensors_entry twice[2] = {e, e};
    WRITE_REFUSED(twice, 2, "twice");
    WRITE_REFUSED(NULL, 1, "count");
    WRITE_REFUSED(&e, -1, "count");

    /* Metadata problems. */
    const char *keys[] = {"a", "a"};
    const char *values[] = {"1", "2"};
    const char *null_values[] = {"1", NULL};
    CHECK(safetensors_write(path, &e, 1, keys, values, 2, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(msg(), "twice");
    CHECK(safetensors_write(path, &e, 1, keys + 1, null_values + 1, 1, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(msg(), "metadata");
    CHECK(safetensors_write(path, &e, 1, NULL, NULL, 1, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(msg(), "metadata");
    CHECK(count_dir_entries() == 0);

    /* NULL data is fine when there are no bytes. */
    bad = e, bad.data = NULL, bad.shape[0] = 0;
    CHECK_MSG(safetensors_write(path, &bad, 1, NULL, NULL, 0, err, sizeof err) == 0, "%s", err);
    /* So are huge dimensions beside a zero one; the file reads back as empty. */
    bad.ndim = 3, bad.shape[1] = bad.shape[2] = (int64_t)1 << 50;
    CHECK_MSG(safetensors_write(path, &bad, 1, NULL, NULL, 0, err, sizeof err) == 0, "%s", err);
    safetensors_file f;
    int rc = safetensors_read(path, &f, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    if (rc == 0) {
        CHECK(f.count == 1 && f.tensors[0].numel == 0 && f.tensors[0].shape[2] == bad.shape[2]);
        safetensors_free(&f);
    }
    unlink(path);

    /* A destination that cannot be created leaves nothing behind. */
    char nodir[256];
    path_in_tmp(nodir, sizeof nodir, "no/such/dir/w.safetensors");
    err[0] = '\0';
    CHECK(safetensors_write(nodir, &e, 1, NULL, NULL, 0, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(msg(), nodir);
    CHECK_STR_CONTAINS(msg(), "cannot create");

    /* A rename onto a directory fails after the data is written: the temporary
     * file must be removed and the directory left alone. */
    char dir[256];
    path_in_tmp(dir, sizeof dir, "adir");
    CHECK(mkdir(dir, 0700) == 0);
    err[0] = '\0';
    CHECK(safetensors_write(dir, &e, 1, NULL, NULL, 0, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(msg(), dir);
    CHECK_STR_CONTAINS(msg(), "rename");
    CHECK(count_dir_entries() == 1);
    rmdir(dir);

    /* A full disk: the write fails on flush or fsync, and nothing is left. */
    if (access("/dev/full", W_OK) == 0) {
        char link[256];
        char tmpname[300];
        path_in_tmp(link, sizeof link, "full.safetensors");
        snprintf(tmpname, sizeof tmpname, "%s.tmp-%ld", link, (long)getpid());
        /* The temporary name is a link to /dev/full, so every write hits ENOSPC. */
        if (symlink("/dev/full", tmpname) == 0) {
            err[0] = '\0';
            CHECK(safetensors_write(link, &e, 1, NULL, NULL, 0, err, sizeof err) == -1);
            CHECK_STR_CONTAINS(msg(), link);
            CHECK_STR_CONTAINS(msg(), "cannot write");
            CHECK(access(tmpname, F_OK) != 0 && access(link, F_OK) != 0);
            unlink(tmpname);
        }
    }
    CHECK(count_dir_entries() == 0);
#undef WRITE_REFUSED
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_safetensors.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_dtypes();
    test_round_trip();
    test_accepted();
    test_refused();
    test_damaged_copies();
    test_write_errors();
    CHECK_MSG(count_dir_entries() == 0, "files left in %s", tmpdir);
    rmdir(tmpdir);
    return test_finish("test_safetensors");
}
