#!/usr/bin/env bash
# Runs the cargo-fuzz targets for a bounded time each and prints one line per target:
#   fuzz: TARGET  runs N  exec/s E  corpus C  OK|CRASH (artifact)
#
#   fuzz/run.sh SECONDS [TARGET...]      (default: every target in fuzz/fuzz_targets)
#
# SECONDS=0 only builds the targets.
#
# libFuzzer needs a nightly toolchain. Without one this prints a SKIP line and exits 0 (exit 77
# with TS_SKIP_CODE=77, as the netns runner wants). cargo-fuzz is installed from crates.io when
# missing. The working corpus (fuzz/corpus/TARGET, not committed) starts from the committed seeds
# (fuzz/seeds/TARGET) and keeps what earlier runs found. A crash leaves its input in
# fuzz/artifacts/TARGET/ and makes the script exit 1 after the remaining targets ran.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
skip_code=${TS_SKIP_CODE:-0}

if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "SKIP: libFuzzer smoke needs a nightly toolchain (rustup toolchain list)"
	exit "$skip_code"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz"
	if ! cargo install cargo-fuzz --locked; then
		echo "SKIP: cargo-fuzz could not be installed"
		exit "$skip_code"
	fi
fi

if (($# > 0)); then
	targets=("$@")
else
	targets=()
	for f in fuzz/fuzz_targets/*.rs; do
		targets+=("$(basename "$f" .rs)")
	done
fi

# -a: debug assertions, hence overflow checks, in the fuzzed build.
flags=(-O -a)
cargo +nightly fuzz build "${flags[@]}"
if ((seconds == 0)); then
	echo "fuzz: targets built (${targets[*]})"
	exit 0
fi

crashed=()
for t in "${targets[@]}"; do
	corpus=fuzz/corpus/$t
	mkdir -p "$corpus" "fuzz/artifacts/$t"
	if [[ -d fuzz/seeds/$t ]]; then
		cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
	fi
	log=$(mktemp)
	set +e
	cargo +nightly fuzz run "${flags[@]}" "$t" "$corpus" -- \
		-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		>"$log" 2>&1
	rc=$?
	set -e
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	size=$(find "$corpus" -type f | wc -l)
	if ((rc == 0)); then
		printf 'fuzz: %-16s runs %-9s exec/s %-7s corpus %-5s OK\n' "$t" "${runs:-?}" "${eps:-?}" "$size"
	else
		artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -1 || true)
		printf 'fuzz: %-16s runs %-9s exec/s %-7s corpus %-5s CRASH %s\n' "$t" "${runs:-?}" "${eps:-?}" "$size" "${artifact:-(see log)}"
		grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 | sed 's/^/    /'
		cp "$log" "fuzz/artifacts/$t/last-run.log"
		crashed+=("$t")
	fi
	rm -f "$log"
done

if ((${#crashed[@]} > 0)); then
	echo "fuzz: crashes in ${crashed[*]}; inputs in fuzz/artifacts/<target>/"
	exit 1
fi
