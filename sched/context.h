/* weft — task context (asyncio's contextvars seen from C), private part.
 *
 * A context is an immutable-once-shared map from key id to a value entry.
 * Tasks spawned from a task and executor jobs submitted from one take a
 * reference to the spawner's context (a copy in asyncio's terms, without
 * the copying); the first weft_context_set of a task whose context is
 * shared clones it (copy-on-write), so no one ever sees another's change.
 *
 * Concurrency:
 *   | object       | mutated by                         | read by            |
 *   |--------------|------------------------------------|--------------------|
 *   | context map  | its owner task, only while refs==1 | every holder       |
 *   | context refs | any holder (atomic)                | the owner (acquire)|
 *   | entry refs   | any context holding it (atomic)    | -                  |
 *   | entry value  | nobody after creation              | every holder       |
 *
 * A map is changed in place only while its one reference belongs to the
 * task changing it: the acquire load of refs that sees 1 pairs with the
 * acq_rel decrement of the last other holder, so that holder's reads
 * happen before the change.  A value's destroy function runs once, on the
 * thread that drops the last context holding it.
 */
#ifndef WEFT_SCHED_CONTEXT_H
#define WEFT_SCHED_CONTEXT_H

#include "weft/task.h"

typedef struct weft__context weft__context_t;

/* Take a reference (NULL stays NULL).  Thread: any. */
weft__context_t *weft__context_retain(weft__context_t *c);

/* Drop a reference; the last one destroys the values no other context
 * holds.  NULL is ignored.  Thread: any. */
void weft__context_release(weft__context_t *c);

/* The context of the calling code: the current task's, or the one an
 * executor thread runs its job in; NULL (empty) elsewhere.  Borrowed.
 * Thread: any. */
weft__context_t *weft__context_current(void);

/* Make c the context of the calling plain thread (an executor thread,
 * around one job); NULL clears it.  Borrowed: the caller keeps c alive
 * meanwhile.  Thread: a plain thread (not inside a task). */
void weft__context_set_thread(weft__context_t *c);

#endif /* WEFT_SCHED_CONTEXT_H */
