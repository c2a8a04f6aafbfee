/* weft — task context: task-local values inherited by spawned tasks and
 * executor jobs (asyncio's contextvars).  Theory of operation in
 * context.h. */
#include "sched/context.h"

#include <stdatomic.h>
#include <string.h>

#include "sched/common.h"
#include "sched/task.h"

struct weft_context_key {
    uint64_t id; /* never reused, so a stale entry can never match a new key */
    void (*destroy)(void *value);
};

/* One value, shared by every context that inherited it. */
typedef struct entry {
    atomic_uint refs;
    uint64_t key_id;
    void (*destroy)(void *value);
    void *value;
} entry_t;

struct weft__context {
    atomic_uint refs;
    size_t n, cap;
    entry_t **entries; /* sorted by key_id */
};

static atomic_uint_fast64_t next_key_id = 1;

/* ---- the context of a plain thread (executor jobs) ---------------------- */

static _Thread_local weft__context_t *tls_ctx;

WEFT__TLS_GET(static, weft__context_t, thread_ctx, tls_ctx)
WEFT__TLS_SET(, weft__context_t, weft__context_set_thread, tls_ctx)

weft__context_t *weft__context_current(void)
{
    weft_task_t *t = weft_current_task();
    return t != NULL ? t->ctx : thread_ctx();
}

/* ---- references ----------------------------------------------------------- */

static void entry_release(entry_t *e)
{
    /* acq_rel: the last holder sees every other holder's reads done. */
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (e->destroy != NULL)
        e->destroy(e->value);
    weft__free(e);
}

weft__context_t *weft__context_retain(weft__context_t *c)
{
    /* relaxed: the caller already holds a reference (its own task's). */
    if (c != NULL)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void weft__context_release(weft__context_t *c)
{
    if (c == NULL)
        return;
    /* acq_rel: pairs with the acquire load in owned() (context.h). */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < c->n; i++)
        entry_release(c->entries[i]);
    weft__free(c->entries);
    weft__free(c);
}

/* ---- lookup and copy-on-write ------------------------------------------------ */

/* Index of key_id in c, or where it would be inserted (*found false). */
static size_t find(const weft__context_t *c, uint64_t key_id, bool *found)
{
    size_t lo = 0, hi = c != NULL ? c->n : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t k = c->entries[mid]->key_id;
        if (k == key_id) {
            *found = true;
            return mid;
        }
        if (k < key_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* A context the calling task may change in place, with room for one more
 * entry: its own if nobody shares it, else a clone.  NULL: no memory. */
static weft__context_t *owned(weft__context_t *c)
{
    /* acquire: see context.h — every other holder has let go. */
    if (c != NULL && atomic_load_explicit(&c->refs, memory_order_acquire) == 1) {
        if (c->n < c->cap)
            return c;
        size_t cap = c->cap * 2;
        entry_t **grown = weft__realloc(c->entries, cap * sizeof *grown);
        if (grown == NULL)
            return NULL;
        c->entries = grown;
        c->cap = cap;
        return c;
    }
    weft__context_t *copy = weft__alloc(sizeof *copy);
    if (copy == NULL)
        return NULL;
    size_t n = c != NULL ? c->n : 0;
    copy->cap = n < 4 ? 4 : n * 2;
    copy->entries = weft__alloc(copy->cap * sizeof *copy->entries);
    if (copy->entries == NULL) {
        weft__free(copy);
        return NULL;
    }
    atomic_init(&copy->refs, 1);
    copy->n = n;
    for (size_t i = 0; i < n; i++) {
        copy->entries[i] = c->entries[i];
        atomic_fetch_add_explicit(&c->entries[i]->refs, 1, memory_order_relaxed);
    }
    return copy;
}

/* ---- the API ---------------------------------------------------------------- */

int weft_context_key_new(void (*destroy)(void *value), weft_context_key_t **out)
{
    if (out == NULL)
        return -EINVAL;
    weft_context_key_t *k = weft__alloc(sizeof *k);
    if (k == NULL)
        return -ENOMEM;
    k->id = atomic_fetch_add_explicit(&next_key_id, 1, memory_order_relaxed);
    k->destroy = destroy;
    *out = k;
    return 0;
}

void weft_context_key_free(weft_context_key_t *key)
{
    /* Values already set keep their destroy function (copied into each
     * entry) and go when their contexts go. */
    weft__free(key);
}

int weft_context_set(weft_context_key_t *key, void *value)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (key == NULL)
        return -EINVAL;
    bool found;
    find(t->ctx, key->id, &found);
    if (!found && value == NULL)
        return 0; /* nothing to unset */
    entry_t *e = NULL;
    if (value != NULL) {
        e = weft__alloc(sizeof *e);
        if (e == NULL)
            return -ENOMEM;
        atomic_init(&e->refs, 1);
        e->key_id = key->id;
        e->destroy = key->destroy;
        e->value = value;
    }
    weft__context_t *c = owned(t->ctx);
    if (c == NULL) {
        weft__free(e);
        return -ENOMEM;
    }
    if (c != t->ctx) {
        weft__context_release(t->ctx);
        t->ctx = c;
    }
    size_t i = find(c, key->id, &found);
    entry_t *old = found ? c->entries[i] : NULL;
    if (old != NULL && e != NULL && old->value == value) {
        weft__free(e); /* the same value again: destroying it now would be wrong */
        return 0;
    }
    if (e != NULL && found) {
        c->entries[i] = e;
    } else if (e != NULL) {
        memmove(&c->entries[i + 1], &c->entries[i], (c->n - i) * sizeof *c->entries);
        c->entries[i] = e;
        c->n++;
    } else {
        memmove(&c->entries[i], &c->entries[i + 1], (c->n - i - 1) * sizeof *c->entries);
        c->n--;
    }
    if (old != NULL)
        entry_release(old);
    return 0;
}

void *weft_context_get(weft_context_key_t *key)
{
    if (key == NULL)
        return NULL;
    weft__context_t *c = weft__context_current();
    bool found;
    size_t i = find(c, key->id, &found);
    return found ? c->entries[i]->value : NULL;
}
