/* The request table: one C struct per request slot in one contiguous array.
 *
 * Everything that the scheduler and the model loop read for a whole batch lives here,
 * so batch metadata is built by C loops or numpy column views, never by Python loops.
 * This header is also the cffi cdef: keep it free of macros other than the guard
 * lines, which the build script drops. */
#ifndef AIOLLM_TABLE_H
#define AIOLLM_TABLE_H
#include <stdint.h>

enum aio_state {
    AIO_FREE = 0,
    AIO_WAITING = 1,
    AIO_RUNNING = 2,
    AIO_PAUSED = 3,
    AIO_FINISHED = 4,
    AIO_ABORTED = 5
};

enum aio_finish {
    AIO_FINISH_NONE = 0,
    AIO_FINISH_STOP = 1,
    AIO_FINISH_LENGTH = 2,
    AIO_FINISH_ABORT = 3
};

enum aio_error {
    AIO_OK = 0,
    AIO_ERR_FULL = -1,
    AIO_ERR_RANGE = -2,
    AIO_ERR_NOT_IN_USE = -3
};

typedef struct {
    int64_t id;
    int64_t seed;
    int64_t t_arrival;
    int64_t t_first_token;
    int64_t t_last_token;
    int64_t t_finish;
    int32_t state;
    int32_t prompt_len;
    int32_t output_len;
    int32_t kv_len;
    int32_t prefix_len;
    int32_t max_new_tokens;
    int32_t min_new_tokens;
    int32_t top_k;
    float temperature;
    float top_p;
    float min_p;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    int32_t ignore_eos;
    int32_t top_logprobs;
    int32_t top_p_joint;
    int32_t length_penalty_start;  /* exponential_decay_length_penalty: (start, factor) */
    float length_penalty_factor;   /* 1: none */
    int32_t n_stop;
    int32_t stop_ids[8];
    int32_t finish_reason;
    int32_t predicted_output_len;
    int32_t req_row;
} aio_req;

typedef struct {
    aio_req *slots;
    int32_t *free_stack;
    int32_t capacity;
    int32_t n_free;
} aio_table;

aio_table *aio_table_new(int32_t capacity);
void aio_table_delete(aio_table *t);
int32_t aio_alloc(aio_table *t);
int32_t aio_free(aio_table *t, int32_t slot);
int32_t aio_check_slots(const aio_table *t, const int32_t *slots, int32_t n);
void aio_gather32(const aio_table *t, const int32_t *slots, int32_t n, int32_t offset, void *out);
void aio_gather64(const aio_table *t, const int32_t *slots, int32_t n, int32_t offset, void *out);
void aio_gather_fields(const aio_table *t, const int32_t *slots, int32_t n, const int32_t *src_offsets,
                       const int32_t *sizes, const int32_t *dst_offsets, int32_t n_fields,
                       int32_t dst_stride, void *out);
int32_t aio_stop_check(aio_table *t, const int32_t *slots, const int32_t *tokens, int32_t n,
                       const int32_t *eos_ids, int32_t n_eos, int64_t now_ns, int32_t *finished);
#endif
