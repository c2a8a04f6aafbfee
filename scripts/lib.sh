# Shared helpers for scripts/test.sh and scripts/demo.sh.  Sourced, not run.
# shellcheck shell=bash

# Debian packages the build, the tests and the checks need.
WEFT_DEPS=(cmake make gcc clang pkg-config libjemalloc-dev libcmocka-dev libck-dev
           clang-format valgrind)
# clang 14's sanitizer runtimes; Debian 12 splits them out, other releases
# may not have the package at all, so its absence is not an error.
WEFT_OPTIONAL_DEPS=(libclang-rt-14-dev)

weft_log() {
    printf '==> %s\n' "$*"
}

weft_warn() {
    printf 'warning: %s\n' "$*" >&2
}

# weft_missing_pkgs PKG... : print the packages dpkg does not have installed.
weft_missing_pkgs() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg -s "$pkg" >/dev/null 2>&1; then
            printf '%s\n' "$pkg"
        fi
    done
}

# Install what is missing, when we can: as root on a system with apt-get.
# Never fails; a dependency that is still missing shows up as a failed build.
weft_install_deps() {
    if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        weft_warn "no dpkg/apt-get: not installing dependencies (need: ${WEFT_DEPS[*]})"
        return 0
    fi

    local -a missing optional
    mapfile -t missing < <(weft_missing_pkgs "${WEFT_DEPS[@]}")
    mapfile -t optional < <(weft_missing_pkgs "${WEFT_OPTIONAL_DEPS[@]}")
    if ((${#missing[@]} == 0 && ${#optional[@]} == 0)); then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        weft_warn "not root: not installing missing packages: ${missing[*]} ${optional[*]}"
        return 0
    fi

    export DEBIAN_FRONTEND=noninteractive
    weft_log "installing: ${missing[*]} ${optional[*]}"
    if ! apt-get update </dev/null; then
        weft_warn "apt-get update failed; trying to install anyway"
    fi
    if ((${#missing[@]} > 0)); then
        if ! apt-get install -y --no-install-recommends "${missing[@]}" </dev/null; then
            weft_warn "apt-get install failed for: ${missing[*]}"
        fi
    fi
    if ((${#optional[@]} > 0)); then
        if ! apt-get install -y --no-install-recommends "${optional[@]}" </dev/null; then
            weft_warn "optional package not installed: ${optional[*]}"
        fi
    fi
    return 0
}

# weft_build DIR : build a configured DIR with -j2, going on past errors so
# one broken file does not hide the state of the rest.  Fails if anything
# failed to build.
weft_build() {
    local dir=$1
    local -a keep_going=()
    case "$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$dir/CMakeCache.txt" 2>/dev/null)" in
        "Unix Makefiles") keep_going=(-- -k) ;;
        Ninja*) keep_going=(-- -k 0) ;;
    esac
    cmake --build "$dir" -j2 "${keep_going[@]}"
}
