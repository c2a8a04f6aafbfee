#!/usr/bin/env bash
# Run the benchmark workloads of ../shared/bench/WORKLOADS.md on weft and on
# the peers (Go, Tokio, libuv) in one run on this machine, and write
# BENCHMARKS.md: one table per workload and the ratios against the targets
# of the benchmarks issue.  Works from any directory.
#
#   scripts/bench.sh              W1..W11
#   scripts/bench.sh W5 W7        just those
#
# What it does:
#   1. builds weft-bench in Release (build-bench/);
#   2. runs each workload in a fresh process, alternating weft and the peers
#      (weft W1, peers W1, weft W2, peers W2, ...), and repeats that sweep
#      BENCH_SWEEPS times, so drift hits every runtime alike; the peers are
#      built and run by ../shared/peers/run.sh (next to this repository);
#   3. writes BENCHMARKS.md from the result lines.  Every result line is
#      already the median of 5 timed rounds (W11: one round); the tables show
#      the median over the sweeps, and the range.
# A workload that weft skips (W10 until weft has sockets) is run on the
# peers in the first sweep only.  If the peers cannot be built or run (no
# network for apt-get, no toolchain), that is written into BENCHMARKS.md
# and the weft figures are still reported.
#
# Knobs (environment):
#   BENCH_WORKERS=N     workers per runtime (default 2, as the targets)
#   BENCH_SWEEPS=N      interleaved sweeps (default 3)
#   BENCH_OUT=FILE      report file (default BENCHMARKS.md in the repository)
#   WEFT_PEERS_DIR=DIR  the peers (default ../shared/peers beside the repository)
#   PEERS_BUILD=DIR     the peers' build directory (run.sh's default /tmp/peers-build)
#
# Exit status: 0 when every weft workload passed its self-check, 1 if one
# failed (BENCHMARKS.md is still written, with FAIL in its row), 2 on bad
# arguments.  A peer's failure is recorded, not fatal.
set -euo pipefail

ORIG_ARGS=("$@")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ALL_WORKLOADS=(W1 W2 W3 W4 W5 W6 W7 W8 W9 W10 W11)
WORKERS=${BENCH_WORKERS:-2}
SWEEPS=${BENCH_SWEEPS:-3}
OUT=${BENCH_OUT:-BENCHMARKS.md}
BUILD_DIR=build-bench
PEERS_DIR=${WEFT_PEERS_DIR:-../shared/peers}
# A workload that has not finished by then is hung (the longest, Go's W11,
# takes about 10 s).
RUN_TIMEOUT=600

usage() {
    printf 'usage: scripts/bench.sh [W1 .. W11]\n' >&2
    exit 2
}

workloads=("$@")
if ((${#workloads[@]} == 0)); then
    workloads=("${ALL_WORKLOADS[@]}")
fi
for w in "${workloads[@]}"; do
    case " ${ALL_WORKLOADS[*]} " in
        *" $w "*) ;;
        *) usage ;;
    esac
done
[[ $WORKERS =~ ^[1-9][0-9]*$ && $SWEEPS =~ ^[1-9][0-9]*$ ]] || usage

WORK=$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
RAW=$WORK/raw          # "<sweep> <result line>" for every runtime
PEER_LOG=$WORK/peers.log
NOTES=$WORK/notes      # facts for the report, one per line
: >"$RAW"
: >"$NOTES"

note() {
    printf '%s\n' "$*" >>"$NOTES"
}

# ---------------------------------------------------------------------------
# Build weft
# ---------------------------------------------------------------------------
weft_install_deps
weft_log "configure $BUILD_DIR (Release)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DWEFT_BUILD_BENCH=ON \
    -DWEFT_BUILD_TESTS=OFF -DWEFT_BUILD_STRESS=OFF -DWEFT_BUILD_EXAMPLES=OFF -DWEFT_WERROR=OFF \
    -DWEFT_SANITIZE=none -DWEFT_ALLOCATOR=jemalloc -DWEFT_ASSERTS=OFF >/dev/null
weft_log "build $BUILD_DIR"
cmake --build "$BUILD_DIR" -j2 --target weft-bench >/dev/null
BENCH_BIN=$BUILD_DIR/bench/weft-bench

# ---------------------------------------------------------------------------
# The peers
# ---------------------------------------------------------------------------
PEERS_RUN=$PEERS_DIR/run.sh
peers_ok=1
if [[ ! -x $PEERS_RUN ]]; then
    peers_ok=0
    note "peers: $PEERS_RUN not found; only weft was measured"
    weft_warn "$PEERS_RUN not found: measuring weft only"
fi
# run_peers SWEEP WORKLOAD : one run.sh call; its result lines go to RAW.
# The first failure that produced no result line at all (install or build)
# turns the peers off for the rest of the run.
run_peers() {
    local sweep=$1 w=$2 out rc=0 line got=0
    ((peers_ok)) || return 0
    out=$(BENCH_WORKERS=$WORKERS timeout "$RUN_TIMEOUT" "$PEERS_RUN" "$w" 2>>"$PEER_LOG") || rc=$?
    while IFS= read -r line; do
        case "$line" in
            "# wall_secs:"*) ;;
            "# go version"*) printf '%s\n' "${line#\# }" >"$WORK/peers-versions" ;;
            "# "*" redis-benchmark "*) printf '%s %s\n' "$sweep" "$line" >>"$RAW" ;;
            "#"*) ;;
            "") ;;
            *)
                printf '%s %s\n' "$sweep" "$line" >>"$RAW"
                printf '%s\n' "$line"
                got=1
                ;;
        esac
    done <<<"$out"
    if ((rc != 0)); then
        if ((got == 0)); then
            peers_ok=0
            note "peers: run.sh $w exited $rc before printing a result (build or install failed):"
            tail -n 5 "$PEER_LOG" | sed 's/^/    /' >>"$NOTES"
            weft_warn "peers failed to build or run (exit $rc); measuring weft only"
        else
            note "peers: run.sh $w (sweep $sweep) exited $rc: a peer failed its own check: $(grep -m1 FAIL "$PEER_LOG" || true)"
        fi
    fi
}

# ---------------------------------------------------------------------------
# report_tables RAW : the Markdown tables, from the "<sweep> <result line>"
# lines of RAW: the ratios against the issue's targets, then one table per
# workload with each runtime's median over the sweeps.
# ---------------------------------------------------------------------------
report_tables() {
    awk '
    # Input: "<sweep> <runtime> <Wn> key=value ..." result lines (also
    # "<sweep> <runtime> <Wn> skipped reason=..", "<sweep> weft <Wn> FAIL exit=N"
    # and "<sweep> # ..." comments, which are ignored here).
    function add_label(w, label) {
        if (!((w, label) in seen)) {
            seen[w, label] = 1
            nlab[w]++
            lab[w, nlab[w]] = label
        }
        if (!(w in wseen)) {
            wseen[w] = 1
            order[++nw] = w
        }
    }
    # The median run of key (lower median for an even count), by ops/s:
    # returns its run index; sets lo/hi to the range.
    function median_run(key,    n, i, j, t, idx) {
        n = cnt[key]
        for (i = 1; i <= n; i++)
            idx[i] = i
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && ops_s[key, idx[j - 1]] + 0 > ops_s[key, idx[j]] + 0; j--) {
                t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t
            }
        lo = ops_s[key, idx[1]]
        hi = ops_s[key, idx[n]]
        return idx[int((n + 1) / 2)]
    }
    function fmt_ops(v) {
        if (v == "") return "-"
        v = v + 0
        if (v >= 1e6) return sprintf("%.2f M", v / 1e6)
        if (v >= 1e3) return sprintf("%.1f k", v / 1e3)
        return sprintf("%.0f", v)
    }
    function fmt_ratio(a, b) {
        if (a == "" || b == "" || b + 0 == 0) return "-"
        return sprintf("%.2f", a / b)
    }
    $2 == "#" { next }
    NF >= 4 {
        w = $3; rt = $2
        if ($4 == "skipped") {
            r = $5; sub(/^reason=/, "", r)
            skip[w, rt] = r
            add_label(w, rt)
            next
        }
        if ($4 == "FAIL") {
            failed[w, rt] = 1
            add_label(w, rt)
            next
        }
        split("", kv)
        params = ""
        for (i = 4; i <= NF; i++) {
            eq = index($i, "=")
            if (eq == 0) continue
            k = substr($i, 1, eq - 1); v = substr($i, eq + 1)
            kv[k] = v
            if (k !~ /^(workers|ops|secs|ops_per_sec|p50_us|p99_us|rss_per_task_bytes|late_cancels|impl)$/)
                params = params (params == "" ? "" : " ") $i
        }
        label = rt
        if ("impl" in kv) label = rt " (" kv["impl"] ")"
        add_label(w, label)
        key = w SUBSEP label
        n = ++cnt[key]
        ops_s[key, n] = kv["ops_per_sec"]
        p50[key, n] = ("p50_us" in kv) ? kv["p50_us"] : ""
        p99[key, n] = ("p99_us" in kv) ? kv["p99_us"] : ""
        rss[key, n] = ("rss_per_task_bytes" in kv) ? kv["rss_per_task_bytes"] : ""
        if ("p50_us" in kv) has_lat[w] = 1
        if ("rss_per_task_bytes" in kv) has_rss[w] = 1
        nworkers[key] = kv["workers"]
        par[key] = params
    }
    END {
        name["W1"] = "spawn_many"; name["W2"] = "yield_many"; name["W3"] = "ping_pong"
        name["W4"] = "chained_spawn"; name["W5"] = "fib"; name["W6"] = "remote_call"
        name["W7"] = "remote_roundtrip"; name["W8"] = "timers"; name["W9"] = "blocking"
        name["W10"] = "echo_rtt"; name["W11"] = "idle_tasks"
        # Targets of the benchmarks issue: ratio weft / reference.
        split("W1 W2 W3 W4 W5 W6 W7 W8 W9 W11", tw, " ")
        tref["W1"] = "tokio"; tmin["W1"] = 1.5
        tref["W2"] = "tokio"; tmin["W2"] = 1.5
        tref["W3"] = "tokio"; tmin["W3"] = 1.2
        tref["W4"] = "tokio"; tmin["W4"] = 1.2
        tref["W5"] = "tokio"; tmin["W5"] = 1.0
        tref["W6"] = "best"; tmin["W6"] = 1.5
        tref["W7"] = "best"; tmin["W7"] = 1.2
        tref["W8"] = "best"; tmin["W8"] = 1.0
        tref["W9"] = "best"; tmin["W9"] = 1.0
        tref["W11"] = "go"; tmin["W11"] = 1.0

        # The median figures of every (workload, runtime).
        for (wi = 1; wi <= nw; wi++) {
            w = order[wi]
            best_peer[w] = ""
            for (li = 1; li <= nlab[w]; li++) {
                l = lab[w, li]; key = w SUBSEP l
                if (!(key in cnt)) continue
                m = median_run(key)
                med[key] = ops_s[key, m]; mlo[key] = lo; mhi[key] = hi
                mp50[key] = p50[key, m]; mp99[key] = p99[key, m]; mrss[key] = rss[key, m]
                if (l != "weft" && (best_peer[w] == "" || med[key] + 0 > med[w, best_peer[w]] + 0))
                    best_peer[w] = l
            }
        }

        print "## Ratios against the targets\n"
        print "Targets from the benchmarks issue, at BENCH_WORKERS=2: the ratio weft /"
        print "reference must reach the minimum. \"best peer\" is the fastest peer in this run.\n"
        print "| workload | target | weft | reference | ratio | met |"
        print "|---|---|---|---|---|---|"
        for (ti = 1; ti <= 10; ti++) {
            w = tw[ti]
            if (!(w in wseen)) continue
            wk = w SUBSEP "weft"
            ref = tref[w] == "best" ? best_peer[w] : tref[w]
            rk = w SUBSEP ref
            target = sprintf("≥ %.1f × %s", tmin[w], tref[w] == "best" ? "best peer" : tref[w])
            if (w == "W7") target = target ", p99 ≤ its p99"
            if (w == "W11") target = "bytes/task ≤ 1.6 × go, ops/s ≥ 1.0 × go"
            if ((w, "weft") in failed) {
                printf "| %s %s | %s | FAIL | | | no |\n", w, name[w], target; continue
            }
            if ((w, "weft") in skip) {
                printf "| %s %s | %s | skipped (%s) | | | - |\n", w, name[w], target, skip[w, "weft"]; continue
            }
            if (!(rk in med)) {
                printf "| %s %s | %s | %s | no peer figure | | - |\n", w, name[w], target, fmt_ops(med[wk]); continue
            }
            ratio = med[wk] / med[rk]
            ok = ratio >= tmin[w]
            weft_s = fmt_ops(med[wk]) " ops/s"
            ref_s = ref " " fmt_ops(med[rk]) " ops/s"
            ratio_s = sprintf("%.2f", ratio)
            if (w == "W7") {
                weft_s = weft_s ", p99 " mp99[wk] " µs"
                ref_s = ref_s ", p99 " mp99[rk] " µs"
                ok = ok && mp99[wk] + 0 <= mp99[rk] + 0
            }
            if (w == "W11") {
                weft_s = mrss[wk] " B/task, " weft_s
                ref_s = ref " " mrss[rk] " B/task, " fmt_ops(med[rk]) " ops/s"
                ratio_s = sprintf("bytes %.2f, ops/s %.2f", mrss[wk] / mrss[rk], ratio)
                ok = mrss[wk] + 0 <= 1.6 * mrss[rk] && ratio >= 1.0
            }
            printf "| %s %s | %s | %s | %s | %s | %s |\n", w, name[w], target, weft_s, ref_s,
                ratio_s, ok ? "**yes**" : "no"
        }

        for (wi = 1; wi <= nw; wi++) {
            w = order[wi]
            wk = w SUBSEP "weft"
            printf "\n## %s %s\n\n", w, name[w]
            hdr = "| runtime | workers | parameters | ops/s | range over sweeps"
            sep = "|---|---|---|---|---"
            if (has_lat[w]) { hdr = hdr " | p50 µs | p99 µs"; sep = sep "|---|---" }
            if (has_rss[w]) { hdr = hdr " | RSS bytes per task"; sep = sep "|---" }
            hdr = hdr " | weft / this |"; sep = sep "|---|"
            print hdr; print sep
            for (li = 1; li <= nlab[w]; li++) {
                l = lab[w, li]; key = w SUBSEP l
                if ((w, l) in failed) { printf "| %s | | | FAIL | |%s%s |\n", l, has_lat[w] ? " | |" : "", has_rss[w] ? " |" : ""; continue }
                if ((w, l) in skip) {
                    printf "| %s | | skipped: %s | - | |%s%s |\n", l, skip[w, l], has_lat[w] ? " | |" : "", has_rss[w] ? " |" : ""
                    continue
                }
                row = sprintf("| %s | %s | %s | %s | %s - %s (%d)", l, nworkers[key], par[key], fmt_ops(med[key]),
                              fmt_ops(mlo[key]), fmt_ops(mhi[key]), cnt[key])
                if (has_lat[w]) row = row " | " (mp50[key] == "" ? "-" : mp50[key]) " | " (mp99[key] == "" ? "-" : mp99[key])
                if (has_rss[w]) row = row " | " (mrss[key] == "" ? "-" : mrss[key])
                row = row " | " (l == "weft" ? "" : fmt_ratio(med[wk], med[key])) " |"
                print row
            }
            if ((wk in med) && best_peer[w] != "")
                printf "\nweft / best peer (%s): **%s**\n", best_peer[w], fmt_ratio(med[wk], med[w, best_peer[w]])
        }
    }
    ' "$1"
}

# ---------------------------------------------------------------------------
# The sweeps
# ---------------------------------------------------------------------------
weft_failed=()
declare -A weft_skips=()
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load_start%% *}" 'BEGIN { exit !(l > 0.5) }'; then
    weft_warn "load average $load_start: other work on this machine will skew the figures"
fi
for ((sweep = 1; sweep <= SWEEPS; sweep++)); do
    weft_log "sweep $sweep of $SWEEPS: ${workloads[*]}"
    for w in "${workloads[@]}"; do
        if [[ -z ${weft_skips[$w]:-} ]]; then
            rc=0
            out=$(BENCH_WORKERS=$WORKERS timeout "$RUN_TIMEOUT" "$BENCH_BIN" "$w" 2>>"$WORK/weft.log") ||
                rc=$?
            if [[ -n $out ]]; then
                printf '%s\n' "$out"
                printf '%s\n' "$out" | sed "s/^/$sweep /" >>"$RAW"
            fi
            if ((rc != 0)); then
                weft_failed+=("$w")
                printf '%s weft %s FAIL exit=%s\n' "$sweep" "$w" "$rc" >>"$RAW"
                note "weft $w (sweep $sweep) exited $rc: $(tail -n 1 "$WORK/weft.log")"
                weft_warn "weft-bench $w exited $rc"
            elif [[ $out == *" skipped "* ]]; then
                weft_skips[$w]=1
            fi
        elif ((sweep > 1)); then
            continue # weft skips it: the peers' figures of sweep 1 are enough
        fi
        run_peers "$sweep" "$w"
    done
done
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || printf 'unknown')
if [[ -n $(git status --porcelain -- sched io include bench 2>/dev/null) ]]; then
    commit="$commit with uncommitted changes"
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
mem_gib=$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
peer_versions="not measured"
if [[ -s $WORK/peers-versions ]]; then
    peer_versions=$(sed 's/|/\\|/g' "$WORK/peers-versions")
fi
{
    cat <<EOF
# weft benchmarks

Generated by \`scripts/bench.sh\`; do not edit by hand. The workloads are those
of \`../shared/bench/WORKLOADS.md\`, measured on weft (\`bench/\`) and on the
peers of \`../shared/peers/\` in the same run on the same machine.

| | |
|---|---|
| date | $(date -u '+%Y-%m-%d %H:%M UTC') |
| machine | $(nproc) CPUs ($cpu), $mem_gib GiB RAM, $(uname -sr) |
| load average | $load_start at the start, $load_end at the end (1, 5, 15 min; anything above 0 is other work competing for the CPUs) |
| weft | commit $commit; Release build; $(gcc --version | head -n 1); jemalloc $(pkg-config --modversion jemalloc 2>/dev/null || printf '?') |
| peers | $peer_versions |
| command | \`BENCH_WORKERS=$WORKERS BENCH_SWEEPS=$SWEEPS scripts/bench.sh${ORIG_ARGS[*]:+ ${ORIG_ARGS[*]}}\` ($elapsed s) |

Method: every workload runs in a fresh process, and each result line is the
median of 5 timed rounds after one warm-up round (W11: one round, no warm-up).
Per workload weft ran first, then the peers; that sweep over the workloads
was repeated $SWEEPS times. Each table gives the median over the sweeps (with
p50/p99 from that same run) and the min-max range. "weft / this" is weft's
figure over that runtime's. The machine is a small VM: cross-CPU wakeups (W6,
W7, W9) vary from minute to minute (\`../shared/peers/README.md\`, "Reading the
numbers on this machine").

EOF
    if [[ -s $NOTES ]]; then
        printf 'Notes from this run:\n\n'
        sed 's/^\([^ ]\)/- \1/' "$NOTES"
        printf '\n'
    fi
    report_tables "$RAW"
    printf '\n## Raw result lines\n\n```\n'
    cat "$RAW"
    printf '```\n'
} >"$WORK/report.md"
mv "$WORK/report.md" "$OUT"
weft_log "wrote $OUT ($elapsed s)"

if ((${#weft_failed[@]} > 0)); then
    printf 'bench: weft failed its self-check in: %s\n' "${weft_failed[*]}" >&2
    exit 1
fi
