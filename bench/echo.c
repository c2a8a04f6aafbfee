/* weft-bench — W10 echo_rtt.
 *
 * The echo/RESP server that the shared load generator drives
 * (../shared/peers/loadgen) needs weft's sockets, which come with the I/O
 * work.  Until then W10 prints "weft W10 skipped reason=...", as the
 * benchmarks issue asks, and scripts/bench.sh records it as skipped.
 */
#include "bench.h"

void bench_w10(bench_workload_t *w)
{
    w->id = "W10";
    w->skip = "no_sockets_in_weft_yet";
}
