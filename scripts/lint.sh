#!/usr/bin/env bash
# Format and static checks with the checked-in .clang-format and .clang-tidy (Debian 12: clang-format-14,
# clang-tidy-14).
#   scripts/lint.sh format [BASE]     the lines changed since BASE (default main) formatted as .clang-format says
#                                     (git clang-format --diff): the way a branch is checked, since older files (the
#                                     providers) are not clean as a whole and are not reformatted wholesale
#   scripts/lint.sh tidy [DIR...]     clang-tidy on the .cc files of DIR (default: transport dsm), with the compile
#                                     database of build/ (cmake -DCMAKE_EXPORT_COMPILE_COMMANDS=ON, the default here)
set -euo pipefail
cd "$(dirname "$0")/.."
fmt=$(command -v clang-format-14 || command -v clang-format)
tidy=$(command -v clang-tidy-14 || command -v clang-tidy)
mode=${1:-format}
shift || true
case $mode in
  format)
    base=${1:-main}
    gcf=$(command -v git-clang-format-14 || command -v git-clang-format)
    out=$("$gcf" --binary "$fmt" --diff "$base" -- || true)
    if [[ -n $out && $out != *"no modified files to format"* && $out != *"did not modify any files"* ]]; then
      echo "$out"
      echo "lint: lines changed since $base are not formatted (fix: $gcf --binary $fmt $base)" >&2
      exit 1
    fi
    echo "lint: the lines changed since $base are formatted as .clang-format says"
    ;;
  tidy)
    [[ -f build/compile_commands.json ]] || { echo "lint: build/compile_commands.json missing: configure build/ first" >&2; exit 2; }
    dirs=("$@")
    [[ ${#dirs[@]} -eq 0 ]] && dirs=(transport dsm)
    mapfile -t files < <(find "${dirs[@]}" -name '*.cc' | sort)
    status=0
    for f in "${files[@]}"; do
      "$tidy" -p build --quiet "$f" || status=1
    done
    exit $status
    ;;
  *)
    echo "usage: $0 format [BASE] | tidy [DIR...]" >&2
    exit 2
    ;;
esac
