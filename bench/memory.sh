#!/usr/bin/env bash
# bench/memory.sh: prefork's own resident memory over time, idle, the way an
# operator's long-running prefork sits: 4 `sleep` workers, a --status-file,
# no load. Samples VmRSS (and the anonymous part, RssAnon) of the supervisor
# alone every 30 s. Go collects at least every 2 minutes, so a few minutes
# show whether the garbage made between collections keeps RSS where it
# started.
#
#   bench/memory.sh [MINUTES]                   default 6
#   BEFORE=/path/to/old/prefork bench/memory.sh  the same, side by side
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-6}
out=$PWD/bench/out
mkdir -p "$out/bin"
CGO_ENABLED=0 go build -o "$out/bin/prefork" .

pids=()
names=()
start() { # NAME BINARY PORT
	"$2" -n 4 -q --status-file "$out/memory-$3.json" -l "127.0.0.1:$3" -- sleep 100000 >/dev/null 2>&1 &
	pids+=($!)
	names+=("$1")
}
stop() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap stop EXIT
start "prefork" "$out/bin/prefork" 18591
[ -n "${BEFORE:-}" ] && start "before" "$BEFORE" 18592
sleep 2

printf '%-8s' "minute"
for n in "${names[@]}"; do printf '  %-22s' "$n RSS (anon) MB"; done
echo
for ((i = 0; i <= minutes * 2; i++)); do
	printf '%-8s' "$(awk -v i="$i" 'BEGIN { printf "%.1f", i / 2 }')"
	for p in "${pids[@]}"; do
		awk '/^VmRSS/ { r = $2 } /^RssAnon/ { a = $2 } END { printf "  %-22s", sprintf("%.1f (%.1f)", r / 1024, a / 1024) }' "/proc/$p/status"
	done
	echo
	if [ "$i" -lt $((minutes * 2)) ]; then sleep 30; fi
done
