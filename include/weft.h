/* weft — asyncio's programming model for C, on a multi-threaded
 * work-stealing scheduler.  The one header users include. */
#ifndef WEFT_H
#define WEFT_H

#include "weft/types.h"
#include "weft/error.h"
#include "weft/debug.h"
#include "weft/loop.h"
#include "weft/future.h"
#include "weft/runtime.h"
#include "weft/task.h"
#include "weft/cancel.h"
#include "weft/executor.h"
#include "weft/sync.h"
#include "weft/queue.h"

#endif /* WEFT_H */
