#!/usr/bin/env bash
# bench/readiness.sh: what seeing workers wait for connections (--ready auto
# and listen, issue 21) costs and what it buys, with bench/bootserver, a
# release that boots for a while and never says READY=1.
#
#   1. CPU: prefork's own CPU time (utime+stime from /proc) over the same
#      15 s while 64 workers boot for 10 s, under --ready listen (sampling)
#      and --ready delay (none); the difference is the sampling.
#   2. A rolling reload of -n 4 workers that boot for 3 s, under load
#      (bench/load, 8 connections, one request each, 400/s): the fewest
#      workers really serving meanwhile (bootserver's marks), failed
#      requests and p99, under the default --ready auto and --ready delay.
#
# Linux only (the sampling reads /proc). About a minute. Prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(uname)" = Linux ] || { echo "bench/readiness.sh: Linux only" >&2; exit 77; }
out=bench/out/readiness
rm -rf "$out"
mkdir -p "$out/bin"
CGO_ENABLED=0 go build -o "$out/bin/prefork" .
go build -C bench -o "$PWD/$out/bin/bootserver" ./bootserver
go build -C bench -o "$PWD/$out/bin/load" ./load
pf=$out/bin/prefork

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ms() { # utime + stime of pid, in ms
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / hz }' "/proc/$1/stat"
}
ready() { [ -f "$1" ] && [ "$(grep -c '"state": "ready"' "$1")" = "$2" ] && ! grep -q '"state": "st' "$1"; }

echo "| what | --ready | figure |"
echo "|---|---|---|"
for rule in delay listen; do
	st=$out/cpu-$rule.json
	BOOT=10s "$pf" -q -n 64 --ready "$rule" --ready-timeout 30s -l "127.0.0.1:$(port)" --status-file "$st" -- "$out/bin/bootserver" &
	p=$!
	sleep 15
	ms=$(cpu_ms $p)
	up=$(grep -c '"state": "ready"' "$st" || true)
	kill -TERM $p
	wait $p || true
	echo "| prefork CPU, 15 s, 64 workers booting 10 s ($up up at the end) | $rule | ${ms} ms |"
done

for rule in auto delay; do
	marks=$out/marks-$rule
	mkdir -p "$marks"
	st=$out/reload-$rule.json
	pt=$(port)
	args=(-q -n 4 -l "127.0.0.1:$pt" --status-file "$st" --grace 10s)
	[ $rule = auto ] || args+=(--ready "$rule")
	MARKS=$marks BOOT=3s "$pf" "${args[@]}" -- "$out/bin/bootserver" &
	p=$!
	until ready "$st" 4 && [ "$(ls "$marks" | wc -l)" = 4 ]; do sleep 0.1; done
	"$out/bin/load" -url "http://127.0.0.1:$pt/" -c 8 -close -rate 400 -d 22s >"$out/load-$rule.json" &
	l=$!
	sleep 1
	kill -HUP $p
	fewest=4 t0=$SECONDS
	while [ $((SECONDS - t0)) -lt 20 ]; do
		n=0
		for m in "$marks"/serving.*; do
			[ -e "$m" ] && kill -0 "${m##*.}" 2>/dev/null && n=$((n + 1))
		done
		[ $n -lt $fewest ] && fewest=$n
		sleep 0.05
	done
	wait $l
	kill -TERM $p
	wait $p || true
	read -r req err p99 < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["requests"], r["errors"], r["p99_ms"])' "$out/load-$rule.json")
	echo "| reload of -n 4 booting 3 s under load: fewest serving, failed of requests, p99 | $rule | $fewest; $err of $req; ${p99} ms |"
done
