#!/usr/bin/env bash
# Cross-check weft's coroutine switch and stacks on aarch64 under qemu-user.
# Works from any directory.
#
# Builds sched/coro.c, sched/stack.c and their few dependencies together
# with the plain C driver test/aarch64/coro_smoke.c, statically, with
# aarch64-linux-gnu-gcc -O2 -Werror, in two variants:
#
#   asm        the hand-written switch (sched/coro_aarch64.S)
#   ucontext   the glibc makecontext/swapcontext fallback
#
# and runs each under qemu-aarch64.  Each variant is one item; the last line
# printed is "N passed, N failed" and the exit status is non-zero if any
# variant failed to build or run cleanly.
#
# Missing Debian packages (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
# qemu-user) are installed first when running as root.
#
# Knobs (environment):
#   WEFT_AARCH64_OUT=DIR   where the binaries go (default: build-aarch64/)
#   CROSS_CC=...           the cross compiler (default: aarch64-linux-gnu-gcc)
#   QEMU=...               the emulator (default: qemu-aarch64)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

OUT=${WEFT_AARCH64_OUT:-build-aarch64}
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-qemu-aarch64}
SYSROOT=/usr/aarch64-linux-gnu
# qemu-user emulates in software; a hang must still end.
RUN_TIMEOUT=300

# lib.sh's installer, pointed at the cross toolchain instead of the build
# dependencies (in a subshell, so the arrays stay as lib.sh set them).
# shellcheck disable=SC2034 # both arrays are read by weft_install_deps
(
    WEFT_DEPS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
    WEFT_OPTIONAL_DEPS=()
    weft_install_deps
)

PASSED=0
FAILED=0
FAILED_ITEMS=()

fail() {
    FAILED=$((FAILED + 1))
    FAILED_ITEMS+=("$1")
    printf 'FAILED: %s\n' "$1"
}

summary() {
    if ((${#FAILED_ITEMS[@]} > 0)); then
        printf 'failed:\n'
        printf '  - %s\n' "${FAILED_ITEMS[@]}"
    fi
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
}

missing=()
for tool in "$CROSS_CC" "$QEMU"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
    fail "missing tools: ${missing[*]} (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)"
    summary
    exit 1
fi

SOURCES=(sched/coro.c sched/stack.c sched/alloc.c sched/log.c sched/coro_aarch64.S
         test/aarch64/coro_smoke.c)
CFLAGS=(-std=gnu11 -D_GNU_SOURCE -DWEFT_ENABLE_ASSERTS=1 -O2 -g -Wall -Wextra -Werror
        -static -pthread -I. -Iinclude)

mkdir -p "$OUT"

# variant NAME EXTRA_CFLAGS... : build and run one variant; one item.
variant() {
    local name=$1
    shift
    local exe="$OUT/coro_smoke_$name"
    local log="$OUT/coro_smoke_$name.log"
    weft_log "build $exe"
    if ! "$CROSS_CC" "${CFLAGS[@]}" "$@" -o "$exe" "${SOURCES[@]}"; then
        fail "build $name"
        return 0
    fi
    weft_log "run $exe under $QEMU"
    local rc=0
    timeout "$RUN_TIMEOUT" "$QEMU" -L "$SYSROOT" "$exe" >"$log" 2>&1 || rc=$?
    cat "$log"
    if ((rc == 0)) && tail -n 1 "$log" | grep -Eq '^[0-9]+ passed, 0 failed$'; then
        PASSED=$((PASSED + 1))
    else
        ((rc == 124)) && printf 'timed out after %ss\n' "$RUN_TIMEOUT"
        fail "run $name (exit $rc, log $log)"
    fi
}

variant asm
variant ucontext -DWEFT_CORO_UCONTEXT=1

summary
((FAILED == 0))
