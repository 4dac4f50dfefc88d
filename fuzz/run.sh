#!/usr/bin/env bash
# Short fuzzing run of the open path and of record trees, for CI or by hand:
#   fuzz/run.sh [SECONDS]        (default 60 for each of the three targets)
# 1. libFuzzer target fuzz/fuzz_open.c over the C core, built with clang
#    -fsanitize=fuzzer,address,undefined (Debian: clang, libclang-rt-<ver>-dev);
# 2. libFuzzer target fuzz/fuzz_tree.c over record trees (pages and batches of
#    any bytes), built the same way;
# 3. atheris target fuzz/fuzz_open.py over Pager.open / ReadOnlyPager.open
#    (pip install atheris).
# They start from seed corpora of valid inputs (fuzz/make_seeds.py). Work files
# go to $FUZZ_OUT (default /tmp/mappedpages-fuzz); crashing inputs are kept in
# $FUZZ_OUT/artifacts. Exit status: 0 when neither target found anything.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
PY=${PYTHON:-python3}
CLANG=${CLANG:-clang}
OUT=${FUZZ_OUT:-/tmp/mappedpages-fuzz}
MAXLEN=${FUZZ_MAX_LEN:-65536}
rm -rf "$OUT/artifacts"
mkdir -p "$OUT/build" "$OUT/seeds" "$OUT/corpus-c" "$OUT/corpus-py" "$OUT/artifacts"
mkdir -p "$OUT/seeds-tree" "$OUT/corpus-tree"
"$PY" fuzz/make_seeds.py "$OUT/seeds"
"$PY" fuzz/make_seeds.py --tree "$OUT/seeds-tree"

status=0
# A machine without the tools skips with a reason (FUZZ_REQUIRE=1 makes that an error).
missing=""
command -v "$CLANG" >/dev/null || missing="$missing $CLANG"
"$PY" -c "import atheris" 2>/dev/null || missing="$missing atheris"
if [ -n "$missing" ]; then
  echo "fuzz/run.sh: skipped, missing:$missing (apt-get install clang libclang-rt-<ver>-dev; pip install atheris)"
  [ "${FUZZ_REQUIRE:-0}" = 1 ] && exit 1
  exit 0
fi
# The inputs are written to a memory file system when there is one.
FUZZ_TMPDIR=$(mktemp -d -p "$( [ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")" mp-fuzz.XXXXXX)
export FUZZ_TMPDIR
trap 'rm -rf "$FUZZ_TMPDIR"' EXIT
# One libFuzzer target: built from the core's sources, run for SECS seconds.
libfuzzer() { # name, source, what, max length, corpus, seeds
  echo "== libFuzzer: $3 under ASan+UBSan, ${SECS}s"
  "$CLANG" -g -O1 -std=c11 -DMAPPEDPAGES_CHECK -fsanitize=fuzzer,address,undefined \
      -fno-sanitize-recover=undefined -Icsrc csrc/*.c "$2" -o "$OUT/build/$1"
  set +e
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} "$OUT/build/$1" \
      -max_total_time="$SECS" -max_len="$4" -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$1-" \
      "$5" "$6" > "$OUT/$1.log" 2>&1
  local rc=$?
  set -e
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" "$OUT/$1.log" || true
  if [ $rc -ne 0 ]; then echo "libFuzzer target $1 found a problem (exit $rc): see $OUT/$1.log"; status=1; fi
}
libfuzzer fuzz_open fuzz/fuzz_open.c "C open path" "$MAXLEN" "$OUT/corpus-c" "$OUT/seeds"
libfuzzer fuzz_tree fuzz/fuzz_tree.c "record trees" 9300 "$OUT/corpus-tree" "$OUT/seeds-tree"

echo "== atheris: Pager.open / ReadOnlyPager.open, ${SECS}s"
set +e
"$PY" fuzz/fuzz_open.py -max_total_time="$SECS" -max_len="$MAXLEN" -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$OUT/artifacts/py-" \
    "$OUT/corpus-py" "$OUT/seeds" > "$OUT/atheris.log" 2>&1
rc=$?
set -e
grep -E "^Done|stat::number_of_executed_units|Uncaught|Error" "$OUT/atheris.log" | head -20 || true
if [ $rc -ne 0 ]; then echo "atheris target found a problem (exit $rc): see $OUT/atheris.log"; status=1; fi

echo "crashing inputs, if any: $(ls "$OUT/artifacts" | wc -l) in $OUT/artifacts"
exit $status
