#!/usr/bin/env bash
# Format weft's C sources with the committed .clang-format.
#
#   scripts/format.sh           rewrite files in place
#   scripts/format.sh --check   change nothing; list files that need
#                               formatting and exit 1 if there are any
#
# Covers *.c and *.h under sched io include test stress examples bench,
# tracked or untracked (files matched by .gitignore are left out).
# CLANG_FORMAT=/path/to/clang-format picks the binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIRS=(sched io include test stress examples bench)

check=0
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *)
        printf 'usage: %s [--check]\n' "$0" >&2
        exit 2
        ;;
esac

cf=${CLANG_FORMAT:-}
if [[ -z $cf ]]; then
    for candidate in clang-format clang-format-14; do
        if command -v "$candidate" >/dev/null 2>&1; then
            cf=$candidate
            break
        fi
    done
fi
if [[ -z $cf ]] || ! command -v "$cf" >/dev/null 2>&1; then
    printf 'format.sh: clang-format not found (apt-get install clang-format)\n' >&2
    exit 1
fi

# Listing the files: git knows what is ignored; without git, find.
list_files() {
    local -a existing=()
    local d
    for d in "${DIRS[@]}"; do
        [[ -d $d ]] && existing+=("$d")
    done
    ((${#existing[@]} > 0)) || return 0
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z -co --exclude-standard -- "${existing[@]}"
    else
        find "${existing[@]}" -type f -print0
    fi
}

files=()
while IFS= read -r -d '' f; do
    # ls-files -c also lists tracked files deleted from the work tree.
    [[ -f $f ]] || continue
    case "$f" in
        *.c | *.h) files+=("$f") ;;
    esac
done < <(list_files)

if ((${#files[@]} == 0)); then
    printf 'format.sh: no C sources to format\n'
    exit 0
fi

if ((check == 0)); then
    "$cf" -i --style=file -- "${files[@]}"
    printf 'format.sh: formatted %d files\n' "${#files[@]}"
    exit 0
fi

bad=()
for f in "${files[@]}"; do
    if ! "$cf" --dry-run --Werror --style=file -- "$f" >/dev/null 2>&1; then
        bad+=("$f")
    fi
done
if ((${#bad[@]} > 0)); then
    printf 'format.sh: %d of %d files need formatting (run scripts/format.sh):\n' \
        "${#bad[@]}" "${#files[@]}" >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
fi
printf 'format.sh: %d files formatted correctly\n' "${#files[@]}"
