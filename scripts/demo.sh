#!/usr/bin/env bash
# Build weft in Release (build-demo/) and run the examples, in order.
# Works from any directory; installs missing Debian packages when root.
set -euo pipefail

# The examples to run, in order; each is examples/<name minus "example_">.c.
EXAMPLES=(example_timers example_threadsafe example_reader example_embed_pthreads)
# An example that has not returned by then is hung.
EXAMPLE_TIMEOUT=60

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

weft_install_deps

dir=build-demo
weft_log "configure $dir"
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DWEFT_BUILD_EXAMPLES=ON \
    -DWEFT_BUILD_TESTS=OFF -DWEFT_BUILD_STRESS=OFF -DWEFT_BUILD_BENCH=OFF
weft_log "build $dir"
# A broken example should not stop the others from running; a missing one
# is reported below.
weft_build "$dir" || weft_warn "some targets failed to build"

ran=0
failed=()
for name in "${EXAMPLES[@]}"; do
    exe="$dir/examples/$name"
    if [[ ! -x $exe ]]; then
        printf '\n--- %s: not built (examples/%s.c), skipped\n' "$name" "${name#example_}"
        continue
    fi
    printf '\n==================== %s ====================\n' "$name"
    ran=$((ran + 1))
    rc=0
    timeout "$EXAMPLE_TIMEOUT" "$exe" </dev/null || rc=$?
    if ((rc != 0)); then
        printf -- '--- %s exited %d\n' "$name" "$rc"
        failed+=("$name")
    fi
done

printf '\n'
if ((ran == 0)); then
    printf 'demo: no example was built\n' >&2
    exit 1
fi
if ((${#failed[@]} > 0)); then
    printf 'demo: %d of %d examples failed: %s\n' "${#failed[@]}" "$ran" "${failed[*]}" >&2
    exit 1
fi
printf 'demo: %d examples ran\n' "$ran"
