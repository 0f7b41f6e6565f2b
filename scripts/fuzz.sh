#!/bin/sh
# fuzz.sh: smoke run of the libFuzzer targets in tests/fuzz/. Builds them in
# build-fuzz (clang, -DKALE_FUZZ=ON) and runs each over its seed corpus in
# tests/fuzz/corpus/<target>/ for a bounded number of runs. Exits non-zero if
# any target crashes or reports a sanitizer error. Skips (exit 0) without
# clang. Environment: FUZZ_RUNS (2000), FUZZ_TIME (seconds per target, 20),
# FUZZ_JOBS (build parallelism, 2), FUZZ_BUILD (build-fuzz).
set -u

cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
build=${FUZZ_BUILD:-build-fuzz}
runs=${FUZZ_RUNS:-2000}
secs=${FUZZ_TIME:-20}
jobs=${FUZZ_JOBS:-2}
targets="smtp_parse imap_parse pop3_parse mime queue_file conf addr imap_search header maildrop"

clang=$(command -v clang 2>/dev/null || true)
if [ -z "$clang" ]; then
	echo "fuzz: clang not installed, skipped"
	exit 0
fi

mkdir -p "$build" || exit 1
build=$(cd "$build" && pwd)
log=$build/fuzz-build.log
if ! CC=$clang cmake -S . -B "$build" -DKALE_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >"$log" 2>&1 ||
   ! cmake --build "$build" --target fuzz -j "$jobs" >>"$log" 2>&1; then
	tail -n 30 "$log"
	echo "fuzz: build failed (see $log)"
	exit 1
fi

pass=0
fail=0
for t in $targets; do
	bin=$build/fuzz_$t
	corpus=$root/tests/fuzz/corpus/$t
	out=$build/fuzz_$t.log
	work=$(mktemp -d "${TMPDIR:-/tmp}/kale-fuzz-$t.XXXXXX") || exit 1
	# New inputs go to a scratch corpus dir (the seeds stay untouched);
	# crash reproducers go to $build/crash-<target>-*.
	start=$(date +%s)
	if (cd "$work" && "$bin" -runs="$runs" -max_len=4096 -max_total_time="$secs" \
	    -timeout=10 -rss_limit_mb=1024 -print_final_stats=0 \
	    -artifact_prefix="$build/crash-$t-" "$work" "$corpus") >"$out" 2>&1; then
		pass=$((pass + 1))
		echo "fuzz: $t ok ($(($(date +%s) - start))s, $(grep -o 'Done [0-9]* runs' "$out" | tail -n 1))"
	else
		fail=$((fail + 1))
		echo "fuzz: $t FAILED (log: $out)"
		grep -E 'ERROR:|SUMMARY:|runtime error|Test unit written' "$out" | head -n 5 | sed 's/^/    /'
	fi
	rm -rf "$work"
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
