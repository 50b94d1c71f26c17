#!/usr/bin/env bash
# Every C file of the tree is as .clang-format writes it (clang-format
# --dry-run --Werror).  To fix: clang-format -i on the files it names.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
if ! command -v clang-format >/dev/null; then
  echo "format-check: clang-format is not installed" >&2
  exit 77
fi
mapfile -t files < <(git ls-files -- '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*')
clang-format --dry-run --Werror "${files[@]}"
echo "format-check: ${#files[@]} files as .clang-format writes them"
