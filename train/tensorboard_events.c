/* See tensorboard_events.h. Protocol buffer wire format: a field is a varint key
 * (field number << 3 | wire type) then its value: wire type 0 a varint, 1 eight
 * little-endian bytes (double), 2 a varint length and that many bytes (string,
 * bytes, a nested message), 5 four little-endian bytes (float). */
#include "tensorboard_events.h"

#include <string.h>

enum { WIRE_VARINT = 0, WIRE_64BIT = 1, WIRE_BYTES = 2, WIRE_32BIT = 5 };

static uint32_t crc32c_table[256];

static void crc32c_table_fill(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        crc32c_table[i] = crc;
    }
}

/* The CRC's running state over more bytes (start from 0xFFFFFFFF, finish by
 * inverting), so that one CRC can run over an event kept in two parts. */
static uint32_t crc32c_update(uint32_t state, const void *data, size_t size) {
    if (!crc32c_table[1]) crc32c_table_fill(); /* written by rank 0's loop only */
    const uint8_t *p = data;
    for (size_t i = 0; i < size; i++) state = crc32c_table[(state ^ p[i]) & 0xFF] ^ (state >> 8);
    return state;
}

static uint32_t crc32c_mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }

uint32_t tensorboard_crc32c(const void *data, size_t size) {
    return crc32c_update(0xFFFFFFFFu, data, size) ^ 0xFFFFFFFFu;
}

uint32_t tensorboard_masked_crc32c(const void *data, size_t size) {
    return crc32c_mask(tensorboard_crc32c(data, size));
}

/* ---- encoding into a bounded buffer ---- */

typedef struct {
    uint8_t *data;
    size_t size, used;
    int overflow;
} pb_out;

static size_t varint_size(uint64_t value) {
    size_t n = 1;
    while (value >= 0x80) value >>= 7, n++;
    return n;
}

static void put_bytes(pb_out *out, const void *bytes, size_t n) {
    if (out->overflow || out->size - out->used < n) {
        out->overflow = 1;
        return;
    }
    memcpy(out->data + out->used, bytes, n);
    out->used += n;
}

static void put_varint(pb_out *out, uint64_t value) {
    uint8_t bytes[10];
    size_t n = 0;
    while (value >= 0x80) bytes[n++] = (uint8_t)(value | 0x80), value >>= 7;
    bytes[n++] = (uint8_t)value;
    put_bytes(out, bytes, n);
}

static void put_key(pb_out *out, int field, int wire) { put_varint(out, (uint64_t)field << 3 | (uint64_t)wire); }

static void put_le(pb_out *out, uint64_t bits, int n) {
    uint8_t bytes[8];
    for (int i = 0; i < n; i++) bytes[i] = (uint8_t)(bits >> (8 * i));
    put_bytes(out, bytes, (size_t)n);
}

static void put_length_delimited(pb_out *out, int field, const void *bytes, size_t n) {
    put_key(out, field, WIRE_BYTES);
    put_varint(out, n);
    put_bytes(out, bytes, n);
}

static void put_float(pb_out *out, int field, float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    put_key(out, field, WIRE_32BIT);
    put_le(out, bits, 4);
}

/* The size of a length-delimited field of n bytes. */
static size_t field_size(int field, size_t n) { return varint_size((uint64_t)field << 3) + varint_size(n) + n; }

void tensorboard_event_begin(tensorboard_event *event, uint8_t *buffer, size_t size) {
    *event = (tensorboard_event){.summary = buffer, .summary_size = size};
}

static pb_out summary_out(tensorboard_event *event) {
    return (pb_out){.data = event->summary, .size = event->summary_size, .used = event->summary_used,
                    .overflow = event->overflow};
}

static void summary_done(tensorboard_event *event, const pb_out *out) {
    event->summary_used = out->used;
    event->overflow = out->overflow;
}

void tensorboard_event_add_scalar(tensorboard_event *event, const char *tag, float value) {
    const size_t tag_size = strlen(tag);
    const size_t value_size = field_size(1, tag_size) + 1 + 4; /* tag, simple_value */
    pb_out out = summary_out(event);
    put_key(&out, 1, WIRE_BYTES); /* Summary.value */
    put_varint(&out, value_size);
    put_length_delimited(&out, 1, tag, tag_size);
    put_float(&out, 2, value);
    summary_done(event, &out);
}

void tensorboard_event_add_image(tensorboard_event *event, const char *tag, int height, int width, int colorspace,
                                 const void *encoded, size_t encoded_size) {
    const size_t tag_size = strlen(tag);
    const size_t image_size = 1 + varint_size((uint64_t)height) + 1 + varint_size((uint64_t)width) + 1 +
                              varint_size((uint64_t)colorspace) + field_size(4, encoded_size);
    const size_t value_size = field_size(1, tag_size) + field_size(4, image_size);
    pb_out out = summary_out(event);
    put_key(&out, 1, WIRE_BYTES); /* Summary.value */
    put_varint(&out, value_size);
    put_length_delimited(&out, 1, tag, tag_size);
    put_key(&out, 4, WIRE_BYTES); /* Value.image */
    put_varint(&out, image_size);
    put_key(&out, 1, WIRE_VARINT), put_varint(&out, (uint64_t)height);
    put_key(&out, 2, WIRE_VARINT), put_varint(&out, (uint64_t)width);
    put_key(&out, 3, WIRE_VARINT), put_varint(&out, (uint64_t)colorspace);
    put_length_delimited(&out, 4, encoded, encoded_size);
    summary_done(event, &out);
}

int tensorboard_event_write(FILE *f, const tensorboard_event *event, double wall_time, int64_t step,
                            const char *file_version) {
    if (event && event->overflow) return -1;
    /* The Event's head (wall_time, step, file_version or the summary's key and
     * length) is small; the summary's bytes follow it in the record as they are. */
    uint8_t head[64 + 256];
    pb_out out = {.data = head, .size = sizeof head};
    uint64_t bits;
    memcpy(&bits, &wall_time, 8);
    put_key(&out, 1, WIRE_64BIT), put_le(&out, bits, 8);
    if (step != 0) put_key(&out, 2, WIRE_VARINT), put_varint(&out, (uint64_t)step);
    if (file_version) put_length_delimited(&out, 3, file_version, strlen(file_version));
    const size_t summary_size = event ? event->summary_used : 0;
    if (event) put_key(&out, 5, WIRE_BYTES), put_varint(&out, summary_size);
    if (out.overflow) return -1;

    const uint64_t length = out.used + summary_size;
    uint8_t length_bytes[8];
    for (int i = 0; i < 8; i++) length_bytes[i] = (uint8_t)(length >> (8 * i));
    /* The data's CRC runs over the head, then the summary. */
    uint32_t state = crc32c_update(0xFFFFFFFFu, head, out.used);
    if (summary_size) state = crc32c_update(state, event->summary, summary_size);
    const uint32_t data_crc = crc32c_mask(state ^ 0xFFFFFFFFu);
    const uint32_t length_crc = tensorboard_masked_crc32c(length_bytes, 8);
    uint8_t crc_bytes[2][4];
    for (int i = 0; i < 4; i++) {
        crc_bytes[0][i] = (uint8_t)(length_crc >> (8 * i));
        crc_bytes[1][i] = (uint8_t)(data_crc >> (8 * i));
    }
    if (fwrite(length_bytes, 1, 8, f) != 8 || fwrite(crc_bytes[0], 1, 4, f) != 4 ||
        fwrite(head, 1, out.used, f) != out.used ||
        (summary_size && fwrite(event->summary, 1, summary_size, f) != summary_size) ||
        fwrite(crc_bytes[1], 1, 4, f) != 4)
        return -1;
    return 0;
}

/* ---- reading back ---- */

static uint32_t read_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int read_varint(const uint8_t *p, size_t size, size_t *at, uint64_t *value) {
    *value = 0;
    for (int shift = 0; shift < 64 && *at < size; shift += 7) {
        const uint8_t byte = p[(*at)++];
        *value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) return 0;
    }
    return -1;
}

/* The Event's step field (0 when absent); -1 when the message does not parse. */
static int event_step(const uint8_t *p, size_t size, int64_t *step) {
    *step = 0;
    size_t at = 0;
    while (at < size) {
        uint64_t key, value;
        if (read_varint(p, size, &at, &key) != 0) return -1;
        switch (key & 7) {
        case WIRE_VARINT:
            if (read_varint(p, size, &at, &value) != 0) return -1;
            if (key >> 3 == 2) *step = (int64_t)value;
            break;
        case WIRE_64BIT: if (size - at < 8) return -1; at += 8; break;
        case WIRE_32BIT: if (size - at < 4) return -1; at += 4; break;
        case WIRE_BYTES:
            if (read_varint(p, size, &at, &value) != 0 || value > size - at) return -1;
            at += value;
            break;
        default: return -1;
        }
    }
    return 0;
}

size_t tensorboard_records_scan(const uint8_t *bytes, size_t size,
                                void (*record)(const uint8_t *record, size_t record_size, int64_t step,
                                               void *context),
                                void *context) {
    size_t at = 0;
    while (size - at >= 12) {
        const uint8_t *head = bytes + at;
        uint64_t length = 0;
        for (int i = 0; i < 8; i++) length |= (uint64_t)head[i] << (8 * i);
        if (read_le32(head + 8) != tensorboard_masked_crc32c(head, 8)) break;
        if (length > size - at - 12 || size - at - 12 - length < 4) break;
        const uint8_t *data = head + 12;
        if (read_le32(data + length) != tensorboard_masked_crc32c(data, (size_t)length)) break;
        int64_t step;
        if (event_step(data, (size_t)length, &step) != 0) break;
        record(head, 12 + (size_t)length + 4, step, context);
        at += 12 + (size_t)length + 4;
    }
    return at;
}
