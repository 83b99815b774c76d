#!/usr/bin/env bash
# bench/run.sh: prefork's benchmarks in one command. Installs what it needs
# (wrk from Debian, pm2 from npm into bench/.cache), builds prefork and the
# bench programs, runs every contender side by side on loopback (bench/harness)
# and writes docs/benchmarks.md and docs/benchmarks.svg (bench/report).
#
#   bench/run.sh           full run, about 10 minutes; rewrites docs/benchmarks.*
#   bench/run.sh --smoke   every code path with tiny durations, under a minute;
#                          writes bench/out/benchmarks.* and leaves docs/ alone
#   bench/run.sh --rr      the Go and C tables only (rr against shared and the
#                          reference master), 7 rounds; bench/out/ only
#   PREFORK_BEFORE=BIN     also measure an earlier prefork binary in rr mode
#   bench/run.sh --pool    only the elastic pool's step load, about 2 minutes;
#                          writes bench/out/pool.md and leaves docs/ alone
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

smoke=0
rronly=0
pool=0
for a in "$@"; do
	case $a in
	--smoke) smoke=1 ;;
	--rr) rronly=1 ;;
	--pool) pool=1 ;;
	-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "bench/run.sh: unknown argument $a (try --smoke)" >&2; exit 2 ;;
	esac
done
command="bench/run.sh$([ $smoke = 1 ] && echo ' --smoke' || true)$([ $rronly = 1 ] && echo ' --rr' || true)$([ $pool = 1 ] && echo ' --pool' || true)"

say() { echo "bench: $*" >&2; }
cache=$root/bench/.cache
out=$root/bench/out
mkdir -p "$cache" "$out/bin"

if [ $pool = 1 ]; then # the blocking worker under prefork: no wrk, Node or PM2
	say "building prefork and the bench programs"
	CGO_ENABLED=0 go build -o "$out/bin/prefork" .
	for p in blockserver harness report; do
		go build -C bench -o "$out/bin/$p" "./$p"
	done
	args=(-only pool -bench "$root/bench" -bin "$out/bin" -out "$out" -command "$command" -o "$out/pool.json")
	[ $smoke = 1 ] && args+=(-smoke)
	"$out/bin/harness" "${args[@]}"
	"$out/bin/report" -i "$out/pool.json" -md "$out/pool.md" -svg "$out/pool.svg" -svg-ref pool.svg
	say "wrote bench/out/pool.md"
	exit 0
fi

# wrk: from Debian when missing and installable; otherwise bench/load stands in.
if ! command -v wrk >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		say "installing wrk with apt-get"
		DEBIAN_FRONTEND=noninteractive timeout 120 apt-get install -y -q wrk >"$out/apt.log" 2>&1 ||
			{ DEBIAN_FRONTEND=noninteractive timeout 60 apt-get update -q >>"$out/apt.log" 2>&1 &&
				DEBIAN_FRONTEND=noninteractive timeout 120 apt-get install -y -q wrk >>"$out/apt.log" 2>&1; } ||
			say "SKIP wrk: apt-get install wrk failed (see $out/apt.log); bench/load measures req/s instead"
	else
		say "SKIP wrk: not installed and cannot apt-get (need root); bench/load measures req/s instead"
	fi
fi
wrk=$(command -v wrk || true)

node=$(command -v node || true)
if [ -z "$node" ]; then
	say "FAIL: node is not installed; the Node.js contenders need it"
	exit 1
fi

# pm2: pinned, into a local prefix; skipped with a message when npm cannot get it.
pm2_version=7.0.4
pm2=$cache/npm/node_modules/.bin/pm2
if [ $rronly = 0 ] && [ ! -x "$pm2" ]; then
	if command -v npm >/dev/null; then
		say "installing pm2@$pm2_version into bench/.cache/npm"
		t=120
		[ $smoke = 1 ] && t=45
		timeout $t npm install --prefix "$cache/npm" --no-audit --no-fund --no-save --fetch-retries=0 \
			--fetch-timeout=15000 "pm2@$pm2_version" >"$out/npm.log" 2>&1 ||
			say "SKIP pm2: npm install pm2@$pm2_version failed or timed out (offline?), see $out/npm.log"
	else
		say "SKIP pm2: npm is not installed"
	fi
fi
[ -x "$pm2" ] || pm2=

say "building prefork and the bench programs"
CGO_ENABLED=0 go build -o "$out/bin/prefork" . # static, as released (README)
for p in goserver barelaunch blockserver refmaster spawnref load harness report; do
	go build -C bench -o "$out/bin/$p" "./$p"
done
rm -f "$out/bin/cworker"
if command -v cc >/dev/null; then
	cc -O2 -Wall -o "$out/bin/cworker" bench/cworker/cworker.c || say "SKIP the C server: cc failed"
else
	say "SKIP the C server: no cc"
fi

args=(-bench "$root/bench" -bin "$out/bin" -out "$out" -node "$node" -wrk "$wrk"
	-pm2 "$pm2" -pm2-home "$cache/pm2home" -command "$command" -o "$out/results.json")
[ $smoke = 1 ] && args+=(-smoke)
[ $rronly = 1 ] && args+=(-groups go,c -life=false -rounds 7 -dist-d 1s)
[ -n "${PREFORK_BEFORE:-}" ] && args+=(-before "$PREFORK_BEFORE") # an earlier prefork, measured beside in rr mode
mkdir -p docs
say "running the harness ($([ $smoke = 1 ] && echo smoke || echo full) run)"
"$out/bin/harness" "${args[@]}"

if [ $smoke = 1 ] || [ $rronly = 1 ]; then
	"$out/bin/report" -i "$out/results.json" -md "$out/benchmarks.md" -svg "$out/benchmarks.svg" -svg-ref benchmarks.svg
	say "smoke run passed; report in bench/out/benchmarks.md"
else
	"$out/bin/report" -i "$out/results.json" -md docs/benchmarks.md -svg docs/benchmarks.svg -svg-ref benchmarks.svg
	say "wrote docs/benchmarks.md and docs/benchmarks.svg"
fi
