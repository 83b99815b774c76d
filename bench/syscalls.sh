#!/usr/bin/env bash
# bench/syscalls.sh: where a handed connection's CPU goes, counted by the
# kernel. Runs each contender with 2 workers on 127.0.0.1, loads it with
# `wrk -t1 -c16 -d${SECS}s -H 'Connection: close'`, and prints, per
# connection, the CPU time and the system calls of the master (prefork or the
# reference master) and of one worker, from `perf stat` tracepoints (no PMU
# needed; this VM has none). On this VM a system call costs about 5 us, which is
# nearly all of what the rr dispatcher spends.
#
#   bench/syscalls.sh [c|go] [ROUNDS]     default: c, 2 rounds
#   PF=/path/to/prefork bench/syscalls.sh  measure another prefork build
#   WORKER=/path/to/goserver ...            or another worker build (A/B)
#   REFBATCH=8 bench/syscalls.sh c          add the reference master sending up
#                                           to 8 connections per message (C only)
#
# Contenders, interleaved within each round: prefork --mode rr, the reference
# master (bench/refmaster), prefork --mode shared.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
group=${1:-c}
rounds=${2:-2}
secs=${SECS:-4}
out=$root/bench/out
bin=$out/bin
port=18580

say() { echo "syscalls: $*" >&2; }
need() {
	command -v "$1" >/dev/null && return 0
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		say "installing $2 with apt-get"
		DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -q "$2" >/dev/null 2>&1 ||
			{ DEBIAN_FRONTEND=noninteractive timeout 90 apt-get update -q >/dev/null 2>&1 &&
				DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -q "$2" >/dev/null 2>&1; } || true
	fi
	command -v "$1" >/dev/null || { say "SKIP: $1 is missing and could not be installed ($2)"; exit 0; }
}
need wrk wrk
need perf linux-perf

mkdir -p "$bin"
CGO_ENABLED=0 go build -o "$bin/prefork" .
go build -C bench -o "$bin/refmaster" ./refmaster
case $group in
c) cc -O2 -Wall -o "$bin/cworker" bench/cworker/cworker.c; worker=${WORKER:-$bin/cworker} ;;
go) go build -C bench -o "$bin/goserver" ./goserver; worker=${WORKER:-$bin/goserver} ;;
*) say "unknown group $group (c or go)"; exit 2 ;;
esac
pf=${PF:-$bin/prefork}

calls="accept4 recvmsg recvmmsg sendmsg write read close fcntl setsockopt getsockopt getsockname getpeername epoll_ctl epoll_wait epoll_pwait futex nanosleep"
events=task-clock,context-switches,raw_syscalls:sys_enter
for s in $calls; do events=$events,syscalls:sys_enter_$s; done

# measure NAME CMD...: start CMD (a master with 2 workers), load it, print.
measure() {
	local name=$1
	shift
	"$@" >/dev/null 2>&1 &
	local master=$!
	local w="" i
	for i in $(seq 100); do # up: answering, and a worker to watch
		w=$(pgrep -P "$master" | head -1 || true)
		[ -n "$w" ] && curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/" && break
		sleep 0.1
	done
	wrk -t1 -c16 -d1s -H 'Connection: close' "http://127.0.0.1:$port/" >/dev/null # warm-up
	perf stat -x, -e "$events" -p "$master" -o "$out/perf.master" -- sleep $((secs + 1)) &
	local p1=$!
	perf stat -x, -e "$events" -p "$w" -o "$out/perf.worker" -- sleep $((secs + 1)) &
	local p2=$!
	sleep 0.3
	local n
	n=$(wrk -t1 -c16 -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
	wait $p1 $p2 || true
	local wcmd; wcmd=$(tr "\0" " " <"/proc/$w/cmdline" 2>/dev/null | cut -c1-50 || true)
	kill -TERM "$master" 2>/dev/null || true
	wait "$master" 2>/dev/null || true
	printf "%-16s %6d conn/s (worker: %s)" "$name" $((n / secs)) "$wcmd"
	for f in master worker; do
		awk -F, -v n="$n" -v who=$f '
			$3 == "task-clock" { cpu = $1 * 1000 / n }
			$3 == "context-switches" { cs = $1 / n }
			$3 ~ /^raw_syscalls/ { all = $1 / n }
			$3 ~ /^syscalls:sys_enter_/ && $1 / n >= 0.01 { sub("syscalls:sys_enter_", "", $3); list = list sprintf(" %s %.2f", $3, $1 / n) }
			END { printf "\n    %-6s %5.1f us/conn, %4.2f switches, %5.2f syscalls:%s", who, cpu, cs, all, list }' "$out/perf.$f"
	done
	echo
	sleep 0.5
}

say "$group workers, $rounds rounds of ${secs}s; figures are per connection (the worker shown serves about half)"
for r in $(seq "$rounds"); do
	echo "round $r"
	measure "prefork rr" "$pf" --mode rr -n 2 -q -l "127.0.0.1:$port" -- "$worker"
	measure "reference" "$bin/refmaster" -addr "127.0.0.1:$port" -n 2 -- "$worker"
	if [ -n "${REFBATCH:-}" ] && [ "$group" = c ]; then
		measure "reference x$REFBATCH" "$bin/refmaster" -batch "$REFBATCH" -addr "127.0.0.1:$port" -n 2 -- "$worker"
	fi
	measure "prefork shared" "$pf" --mode shared -n 2 -q -l "127.0.0.1:$port" -- "$worker"
done
