#!/bin/sh
# Runs the unit tests (ctest) and the integration tests (pytest) against one
# build tree: scripts/test.sh build | build-asan
set -e
tree=${1:-build}
cd "$(dirname "$0")/.."
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
echo "== unit tests ($tree)"
(cd "$tree" && ctest --output-on-failure -j2)
echo "== integration tests ($tree)"
KALE_BUILD="$tree" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration
