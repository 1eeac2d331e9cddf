/* safetensors.h - read and write the safetensors format: an 8-byte
 * little-endian header length, a JSON header {name: {dtype, shape,
 * data_offsets}, "__metadata__": {str: str}}, then the raw little-endian
 * tensor bytes.  The reader validates everything before trusting it:
 * header size against the file, offsets inside the data area, no overlap,
 * shape x dtype size == byte length, unique names.
 *
 * nesf_st_read returns an owned nesf_st (free with nesf_st_free); tensor
 * data pointers point into it.  The writer copies nothing: tensors added to
 * it must stay alive until nesf_st_writer_write returns. */
#ifndef NESF_SAFETENSORS_H
#define NESF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define NESF_ST_MAX_DIMS 8

typedef enum {
    NESF_ST_F32, NESF_ST_F16, NESF_ST_BF16, NESF_ST_F64,
    NESF_ST_I32, NESF_ST_I64, NESF_ST_U8, NESF_ST_BOOL
} nesf_st_dtype;

typedef struct nesf_st_tensor {
    const char *name;
    nesf_st_dtype dtype;
    int ndim;
    int64_t shape[NESF_ST_MAX_DIMS];
    const void *data;   /* into the file image; may be unaligned */
    size_t nbytes;
} nesf_st_tensor;

typedef struct nesf_st nesf_st;

int nesf_st_read(const char *path, nesf_st **out, nesf_error *err);
/* Same, from a memory image (copied). */
int nesf_st_parse(const void *buf, size_t len, nesf_st **out, nesf_error *err);
void nesf_st_free(nesf_st *st);

int nesf_st_count(const nesf_st *st);
const nesf_st_tensor *nesf_st_at(const nesf_st *st, int i);
const nesf_st_tensor *nesf_st_find(const nesf_st *st, const char *name);
/* __metadata__ value for key, or NULL. */
const char *nesf_st_meta(const nesf_st *st, const char *key);

/* Copies tensor `name` into dst as float32 after checking it exists and has
 * exactly the given shape; F32, F16, BF16 and F64 are converted.  Errors
 * name the tensor and what was expected. */
int nesf_st_get_f32(const nesf_st *st, const char *name, int ndim, const int64_t *shape,
                    float *dst, nesf_error *err);

typedef struct nesf_st_writer nesf_st_writer;

nesf_st_writer *nesf_st_writer_new(void);
void nesf_st_writer_free(nesf_st_writer *w);
int nesf_st_writer_add(nesf_st_writer *w, const char *name, nesf_st_dtype dtype, int ndim,
                       const int64_t *shape, const void *data, nesf_error *err);
int nesf_st_writer_meta(nesf_st_writer *w, const char *key, const char *value,
                        nesf_error *err);
/* Writes path atomically: path.tmp.<pid>, fsync, rename. */
int nesf_st_writer_write(nesf_st_writer *w, const char *path, nesf_error *err);

/* Copies file in to out (atomically; in == out allowed) with metadata key
 * set to value: every tensor keeps its name, dtype, shape and bytes, every
 * other metadata entry its value.  For records added to finished models. */
int nesf_st_rewrite_meta(const char *in, const char *out, const char *key, const char *value,
                         nesf_error *err);

#endif
