/* Request table: allocation with an O(1) free stack, column gathers and the batch stop check. */
#include <stdlib.h>
#include <string.h>
#include "table.h"

aio_table *aio_table_new(int32_t capacity)
{
    if (capacity <= 0)
        return NULL;
    aio_table *t = calloc(1, sizeof(aio_table));
    if (!t)
        return NULL;
    t->slots = calloc((size_t)capacity, sizeof(aio_req));
    t->free_stack = malloc((size_t)capacity * sizeof(int32_t));
    if (!t->slots || !t->free_stack) {
        aio_table_delete(t);
        return NULL;
    }
    t->capacity = capacity;
    /* Lowest slot on top, so a fresh table hands out 0, 1, 2, ... */
    for (int32_t i = 0; i < capacity; i++)
        t->free_stack[i] = capacity - 1 - i;
    t->n_free = capacity;
    return t;
}

void aio_table_delete(aio_table *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t->free_stack);
    free(t);
}

int32_t aio_alloc(aio_table *t)
{
    if (t->n_free == 0)
        return AIO_ERR_FULL;
    int32_t slot = t->free_stack[--t->n_free];
    aio_req *r = &t->slots[slot];
    memset(r, 0, sizeof(*r));
    r->state = AIO_WAITING;
    r->req_row = -1;
    r->top_k = -1;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    r->length_penalty_factor = 1.0f;
    return slot;
}

int32_t aio_free(aio_table *t, int32_t slot)
{
    if (slot < 0 || slot >= t->capacity)
        return AIO_ERR_RANGE;
    if (t->slots[slot].state == AIO_FREE)
        return AIO_ERR_NOT_IN_USE;
    t->slots[slot].state = AIO_FREE;
    t->free_stack[t->n_free++] = slot;
    return AIO_OK;
}

/* Returns the index of the first slot that is out of range or free, or -1 if all are in use. */
int32_t aio_check_slots(const aio_table *t, const int32_t *slots, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        int32_t s = slots[i];
        if (s < 0 || s >= t->capacity || t->slots[s].state == AIO_FREE)
            return i;
    }
    return -1;
}

void aio_gather32(const aio_table *t, const int32_t *slots, int32_t n, int32_t offset, void *out)
{
    int32_t *dst = out;
    for (int32_t i = 0; i < n; i++)
        memcpy(&dst[i], (const char *)&t->slots[slots[i]] + offset, 4);
}

void aio_gather64(const aio_table *t, const int32_t *slots, int32_t n, int32_t offset, void *out)
{
    int64_t *dst = out;
    for (int32_t i = 0; i < n; i++)
        memcpy(&dst[i], (const char *)&t->slots[slots[i]] + offset, 8);
}

/* Copies several fields of each chosen slot into one packed record per slot
 * (record i at out + i * dst_stride): a batch's metadata in one call. */
void aio_gather_fields(const aio_table *t, const int32_t *slots, int32_t n, const int32_t *src_offsets,
                       const int32_t *sizes, const int32_t *dst_offsets, int32_t n_fields,
                       int32_t dst_stride, void *out)
{
    char *dst = out;
    for (int32_t i = 0; i < n; i++) {
        const char *src = (const char *)&t->slots[slots[i]];
        char *rec = dst + (size_t)i * dst_stride;
        for (int32_t f = 0; f < n_fields; f++) {
            /* fixed-size copies compile to single moves; a variable memcpy is a call */
            if (sizes[f] == 8)
                memcpy(rec + dst_offsets[f], src + src_offsets[f], 8);
            else
                memcpy(rec + dst_offsets[f], src + src_offsets[f], 4);
        }
    }
}

/* Appends one new token to every slot of a batch and decides who is done.
 * finished[i] gets the finish reason of slots[i] (AIO_FINISH_NONE if it goes on).
 * Stop ids and eos only count once min_new_tokens is reached; max_new_tokens always does. */
int32_t aio_stop_check(aio_table *t, const int32_t *slots, const int32_t *tokens, int32_t n,
                       const int32_t *eos_ids, int32_t n_eos, int64_t now_ns, int32_t *finished)
{
    int32_t n_finished = 0;
    for (int32_t i = 0; i < n; i++) {
        aio_req *r = &t->slots[slots[i]];
        int32_t tok = tokens[i];
        int32_t reason = AIO_FINISH_NONE;
        r->output_len += 1;
        if (r->output_len == 1)
            r->t_first_token = now_ns;
        r->t_last_token = now_ns;
        if (r->output_len >= r->min_new_tokens) {
            for (int32_t j = 0; j < r->n_stop && reason == AIO_FINISH_NONE; j++)
                if (r->stop_ids[j] == tok)
                    reason = AIO_FINISH_STOP;
            if (!r->ignore_eos)
                for (int32_t j = 0; j < n_eos && reason == AIO_FINISH_NONE; j++)
                    if (eos_ids[j] == tok)
                        reason = AIO_FINISH_STOP;
        }
        if (reason == AIO_FINISH_NONE && r->output_len >= r->max_new_tokens)
            reason = AIO_FINISH_LENGTH;
        if (reason != AIO_FINISH_NONE) {
            r->finish_reason = reason;
            r->t_finish = now_ns;
            n_finished++;
        }
        finished[i] = reason;
    }
    return n_finished;
}
