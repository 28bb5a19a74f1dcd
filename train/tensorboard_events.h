/* The TensorBoard event file format, written by hand: TFRecord framing (uint64
 * little-endian length, masked CRC32C of those 8 bytes, the bytes, masked
 * CRC32C of the bytes) around Event protocol buffers (tensorflow/core/util/
 * event.proto and framework/summary.proto), of which only these fields:
 *   Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
 *             Summary summary = 5; }
 *   Summary { repeated Value value = 1; }
 *   Value   { string tag = 1; float simple_value = 2; Image image = 4; }
 *   Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3;
 *             bytes encoded_image_string = 4; }
 * An event is built in a caller's buffer (nothing is allocated) and framed as
 * one record; records are read back to drop the steps a resumed run repeats. */
#ifndef LDM_TENSORBOARD_EVENTS_H
#define LDM_TENSORBOARD_EVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* CRC32C (Castagnoli), and the mask TFRecord stores it under. */
uint32_t tensorboard_crc32c(const void *data, size_t size);
uint32_t tensorboard_masked_crc32c(const void *data, size_t size);

/* One Event being built: the Summary's values go to summary[], then
 * tensorboard_event_frame puts the Event around them. */
typedef struct {
    uint8_t *summary;     /* (summary_size) the encoded Summary.value fields */
    size_t summary_size, summary_used;
    int overflow;         /* a value did not fit: the event is not written */
} tensorboard_event;

void tensorboard_event_begin(tensorboard_event *event, uint8_t *buffer, size_t size);
void tensorboard_event_add_scalar(tensorboard_event *event, const char *tag, float value);
/* An image value: the bytes of a PNG (or JPEG) file; colorspace 1 grey, 2 grey
 * + alpha, 3 RGB, 4 RGBA. */
void tensorboard_event_add_image(tensorboard_event *event, const char *tag, int height, int width, int colorspace,
                                 const void *encoded, size_t encoded_size);

/* The record of the Event {wall_time, step, summary} (or, with file_version
 * non-NULL and no summary, the first record of a file) written to f. Returns 0,
 * or -1 when the event overflowed its buffer or the write failed. */
int tensorboard_event_write(FILE *f, const tensorboard_event *event, double wall_time, int64_t step,
                            const char *file_version);

/* Walks the records of bytes[0, size): for each whole record whose CRCs are
 * right, calls record(the framed record's bytes, its Event's step (0 without
 * one), context). Stops at the
 * first short or damaged record (what a crash in the middle of a write
 * leaves). Returns the number of bytes of whole, good records. */
size_t tensorboard_records_scan(const uint8_t *bytes, size_t size,
                                void (*record)(const uint8_t *record, size_t record_size, int64_t step,
                                               void *context),
                                void *context);

#endif
