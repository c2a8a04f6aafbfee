#!/usr/bin/env bash
# weft's full check, as CI runs it (.ci/run).  Works from any directory.
#
#   format   scripts/format.sh --check                        (one item)
#   A        gcc, build/, RelWithDebInfo, -Werror, jemalloc   ctest + bench smoke
#   B        clang, build-tsan/, ThreadSanitizer, -Werror     ctest + stress
#   C        gcc, build-asan/, AddressSanitizer + UBSan       ctest
#   U        gcc, build-ucontext/, WEFT_CORO=ucontext         ctest
#   R        aarch64 cross build under qemu-user              one item
#
# Every ctest test, every stress run, every weft-bench smoke run, the format
# check and every failed configure or build counts as one item.  The last
# line printed is exactly "N passed, N failed"; the exit status is non-zero
# if anything failed.
#
# Knobs (environment):
#   WEFT_TEST_QUICK=1       skip builds B, C, U and R (local iteration)
#   WEFT_SEED=N             seed for the stress programs (default: date +%s;
#                           printed, so a failing run can be repeated)
#   WEFT_STRESS_ITERS=N     iterations per stress program (default 20000)
#   WEFT_STRESS_WORKERS=N   workers per stress program (default 8: more
#                           workers than cores is the point)
#
# Stress programs are called as: stress_<area> <workers> <iterations> <seed>.
# Missing Debian packages are installed first when running as root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

QUICK=${WEFT_TEST_QUICK:-0}
SEED=${WEFT_SEED:-$(date +%s)}
STRESS_ITERS=${WEFT_STRESS_ITERS:-20000}
STRESS_WORKERS=${WEFT_STRESS_WORKERS:-8}
# Generous: TSan slows a stress program 5-15x, and a hang must still end.
STRESS_TIMEOUT=600

# Same settings ctest gives each test (CMakeLists.txt): a sanitizer report
# fails the run instead of scrolling by.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# ---------------------------------------------------------------------------
# Bookkeeping: items are recorded against the current phase.
# ---------------------------------------------------------------------------
TOTAL_PASSED=0
TOTAL_FAILED=0
PHASES=()
declare -A PHASE_TITLE=() PHASE_PASSED=() PHASE_FAILED=()
FAILED_ITEMS=()
PHASE=""

# phase KEY TITLE : start a phase; KEY is a plain word used as an array key.
phase() {
    PHASE=$1
    PHASES+=("$PHASE")
    PHASE_TITLE[$PHASE]=$2
    PHASE_PASSED[$PHASE]=0
    PHASE_FAILED[$PHASE]=0
    printf '\n==================== %s ====================\n' "$2"
}

pass() {
    TOTAL_PASSED=$((TOTAL_PASSED + 1))
    PHASE_PASSED[$PHASE]=$((PHASE_PASSED[$PHASE] + 1))
}

fail() {
    TOTAL_FAILED=$((TOTAL_FAILED + 1))
    PHASE_FAILED[$PHASE]=$((PHASE_FAILED[$PHASE] + 1))
    FAILED_ITEMS+=("$PHASE: $1")
    printf 'FAILED: %s\n' "$1"
}

# clang 14 and gcc 12 ThreadSanitizer cannot map their shadow memory when the
# kernel randomizes mmap with more than 28 bits ("unexpected memory
# mapping"); running without ASLR avoids it.  The personality is inherited,
# so wrapping ctest covers the tests it starts.
TSAN_WRAP=()
if [[ $(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0) -gt 28 ]]; then
    if setarch "$(uname -m)" -R true 2>/dev/null; then
        TSAN_WRAP=(setarch "$(uname -m)" -R)
        weft_log "vm.mmap_rnd_bits > 28: running TSan programs with ASLR off"
    else
        weft_warn "vm.mmap_rnd_bits > 28 and setarch -R is refused: TSan may fail to start"
    fi
fi

# configure_and_build DIR COMPILER CMAKE_ARGS... : one item for configure
# (only if it fails) and one for the build (only if it fails).  Returns 1
# when configure failed, since there is then nothing to run.
configure_and_build() {
    local dir=$1 cc
    cc=$(command -v "$2" || printf '%s' "$2")
    shift 2
    # When the compiler of an existing build directory changes, CMake wipes
    # the cache and re-runs without the -D options it was given (so -Werror
    # would silently go); start such a directory afresh instead.
    local cached
    cached=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt" 2>/dev/null || true)
    if [[ -n $cached && $cached != "$cc" ]]; then
        weft_log "$dir was configured with $cached, not $cc: reconfiguring from scratch"
        rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
    fi
    weft_log "configure $dir: $cc $*"
    if ! cmake -S . -B "$dir" -DCMAKE_C_COMPILER="$cc" -DCMAKE_ASM_COMPILER="$cc" "$@"; then
        fail "configure $dir"
        return 1
    fi
    weft_log "build $dir"
    if ! weft_build "$dir"; then
        # Keep going: whatever did build still runs, and what did not shows
        # up as "Not Run" in ctest.
        fail "build $dir"
    fi
    return 0
}

# run_ctest DIR [WRAPPER...] : every test ctest reports is one item.
run_ctest() {
    local dir=$1
    shift
    local log="$dir/ctest.log"
    local rc=0
    weft_log "ctest in $dir"
    "$@" ctest --test-dir "$dir" --output-on-failure -j2 2>&1 | tee "$log" || rc=$?

    # Result lines look like "  3/12 Test  #3: test_loop ....   Passed  0.01 sec"
    # or "... ***Failed", "***Timeout", "***Exception: ...", "***Not Run".
    local line name seen=0 failed=0
    while IFS= read -r line; do
        [[ $line =~ ^\ *[0-9]+/[0-9]+\ +Test\ +#[0-9]+:\ +([^ ]+)\ (.*)$ ]] || continue
        name=${BASH_REMATCH[1]}
        seen=$((seen + 1))
        if [[ ${BASH_REMATCH[2]} =~ \ Passed\  ]]; then
            pass
        else
            fail "$name ($dir)"
            failed=$((failed + 1))
        fi
    done <"$log"

    local -a test_sources
    shopt -s nullglob
    test_sources=(test/test_*.c)
    shopt -u nullglob
    local expected=${#test_sources[@]}
    if ((seen == 0 && expected > 0)); then
        fail "ctest in $dir ran no tests (test/ has $expected)"
    elif ((seen == 0)); then
        weft_warn "no tests yet (test/test_*.c)"
    elif ((rc != 0 && failed == 0)); then
        fail "ctest in $dir exited $rc"
    fi
}

# run_stress DIR : each stress/stress_*.c is one item, run from DIR/stress.
run_stress() {
    local dir=$1
    local src name exe rc log
    local logdir="$dir/stress-logs"
    mkdir -p "$logdir"
    weft_log "stress: workers=$STRESS_WORKERS iterations=$STRESS_ITERS seed=$SEED"
    shopt -s nullglob
    local -a sources=(stress/stress_*.c)
    shopt -u nullglob
    if ((${#sources[@]} == 0)); then
        weft_warn "no stress programs yet (stress/stress_*.c)"
        return 0
    fi
    for src in "${sources[@]}"; do
        name=$(basename "$src" .c)
        exe="$dir/stress/$name"
        log="$logdir/$name.log"
        if [[ ! -x $exe ]]; then
            fail "$name (not built)"
            continue
        fi
        printf -- '--- %s %s %s %s\n' "$name" "$STRESS_WORKERS" "$STRESS_ITERS" "$SEED"
        rc=0
        timeout "$STRESS_TIMEOUT" "${TSAN_WRAP[@]}" "$exe" "$STRESS_WORKERS" "$STRESS_ITERS" \
            "$SEED" >"$log" 2>&1 || rc=$?
        if ((rc == 0)); then
            pass
            tail -n 3 "$log"
        else
            if ((rc == 124)); then
                printf 'timed out after %ss\n' "$STRESS_TIMEOUT"
            fi
            tail -n 100 "$log"
            fail "$name (exit $rc, seed $SEED, log $log)"
        fi
    done
}

# run_bench_smoke DIR : each workload of DIR/bench/weft-bench, run once at
# its tiny smoke size (BENCH_SMOKE=1), is one item: a check that its
# self-check passes, not a measurement (scripts/bench.sh measures).  A
# workload weft-bench reports as skipped is printed, not counted.
run_bench_smoke() {
    local exe=$1/bench/weft-bench w rc out
    if [[ ! -x $exe ]]; then
        if compgen -G 'bench/*.c' >/dev/null; then
            fail "weft-bench (not built)"
        fi
        return 0
    fi
    weft_log "weft-bench smoke run: BENCH_SMOKE=1, each workload once"
    for w in W1 W2 W3 W4 W5 W6 W7 W8 W9 W10 W11; do
        rc=0
        out=$(BENCH_SMOKE=1 BENCH_WORKERS=2 timeout 60 "$exe" "$w" 2>&1) || rc=$?
        printf '%s\n' "$out"
        if ((rc != 0)); then
            fail "weft-bench $w (smoke run exited $rc)"
        elif [[ $out != *" skipped "* ]]; then
            pass
        fi
    done
}

# ---------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------
weft_install_deps
printf 'stress seed: %s (set WEFT_SEED=%s to repeat)\n' "$SEED" "$SEED"

phase format "format"
if scripts/format.sh --check; then
    pass
else
    fail "sources need formatting (run scripts/format.sh)"
fi

phase A "A: gcc, RelWithDebInfo, jemalloc (build/)"
if configure_and_build build gcc \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWEFT_WERROR=ON -DWEFT_SANITIZE=none \
    -DWEFT_ALLOCATOR=jemalloc -DWEFT_BUILD_TESTS=ON -DWEFT_BUILD_STRESS=ON \
    -DWEFT_BUILD_EXAMPLES=ON -DWEFT_BUILD_BENCH=ON; then
    run_ctest build
    run_bench_smoke build
fi

if [[ $QUICK == 1 ]]; then
    weft_log "WEFT_TEST_QUICK=1: skipping builds B (TSan), C (ASan+UBSan), U (ucontext) and R (aarch64)"
else
    phase B "B: clang, ThreadSanitizer (build-tsan/)"
    if configure_and_build build-tsan clang \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWEFT_WERROR=ON -DWEFT_SANITIZE=thread \
        -DWEFT_BUILD_TESTS=ON -DWEFT_BUILD_STRESS=ON -DWEFT_BUILD_EXAMPLES=ON \
        -DWEFT_BUILD_BENCH=OFF; then
        run_ctest build-tsan "${TSAN_WRAP[@]}"
        run_stress build-tsan
    fi

    # No -Werror here: gcc's -fsanitize=address adds false-positive
    # -Wmaybe-uninitialized/-Wstringop-* warnings, and A and B already hold
    # both compilers to zero warnings.
    phase C "C: gcc, AddressSanitizer + UBSan (build-asan/)"
    if configure_and_build build-asan gcc \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWEFT_WERROR=OFF -DWEFT_SANITIZE=address \
        -DWEFT_BUILD_TESTS=ON -DWEFT_BUILD_STRESS=OFF -DWEFT_BUILD_EXAMPLES=OFF \
        -DWEFT_BUILD_BENCH=OFF; then
        run_ctest build-asan
    fi

    # The portable coroutine fallback, forced, so it cannot rot on x86-64.
    phase U "U: gcc, WEFT_CORO=ucontext fallback (build-ucontext/)"
    if configure_and_build build-ucontext gcc \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWEFT_WERROR=ON -DWEFT_CORO=ucontext \
        -DWEFT_BUILD_TESTS=ON -DWEFT_BUILD_STRESS=OFF -DWEFT_BUILD_EXAMPLES=OFF \
        -DWEFT_BUILD_BENCH=OFF; then
        run_ctest build-ucontext
    fi

    # The aarch64 context switch, cross-compiled and run under qemu-user.
    phase R "R: aarch64 coroutine switch under qemu (build-aarch64/)"
    if scripts/test_aarch64.sh; then
        pass
    else
        fail "aarch64 coroutine check (scripts/test_aarch64.sh)"
    fi
fi

# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
printf '\n==================== summary ====================\n'
printf 'stress seed: %s\n' "$SEED"
for p in "${PHASES[@]}"; do
    printf '%-48s %4d passed, %d failed\n' "${PHASE_TITLE[$p]}" "${PHASE_PASSED[$p]}" \
        "${PHASE_FAILED[$p]}"
done
if ((${#FAILED_ITEMS[@]} > 0)); then
    printf 'failed:\n'
    printf '  - %s\n' "${FAILED_ITEMS[@]}"
fi
printf '%d passed, %d failed\n' "$TOTAL_PASSED" "$TOTAL_FAILED"
((TOTAL_FAILED == 0))
