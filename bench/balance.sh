#!/usr/bin/env bash
# bench/balance.sh: connection churn (one request per connection) under
# --mode rr for each --balance policy, with the Go bench server; the rounds
# interleave the policies, so that whatever else the machine does hits each
# alike. The load client connects from 16 loopback addresses (127.0.0.2…17,
# Linux), so that source spreads as the others do. Prints conn/s per round,
# the median per policy and its ratio to roundrobin's.
#
#   bench/balance.sh                 5 rounds of 4 s, 2 workers, 16 connections
#   ROUNDS=9 DUR=5s WORKERS=4 CONNS=32 bench/balance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5} dur=${DUR:-4s} workers=${WORKERS:-2} conns=${CONNS:-16}
out=$PWD/bench/out/balance
mkdir -p "$out/bin"
CGO_ENABLED=0 go build -o "$out/bin/prefork" .
go build -C bench -o "$out/bin/goserver" ./goserver
go build -C bench -o "$out/bin/load" ./load
policies=(roundrobin least source)

# run POLICY: one round, prints conn/s.
run() {
	local sf=$out/status.json pid port rps
	rm -f "$sf"
	"$out/bin/prefork" -q -n "$workers" --mode rr --balance "$1" --ready notify --status-file "$sf" \
		-l 127.0.0.1:0 -- "$out/bin/goserver" &
	pid=$!
	for _ in $(seq 200); do
		port=$(python3 -c 'import json,sys
s=json.load(open(sys.argv[1]))
ok=len([w for w in s["workers"] if w["state"]=="ready"])==int(sys.argv[2])
print(s["listeners"][0].rsplit(":",1)[1] if ok else "")' "$sf" "$workers" 2>/dev/null || true)
		[ -n "$port" ] && break
		sleep 0.05
	done
	[ -n "$port" ] || { kill "$pid"; echo "bench: prefork --balance $1 did not come up" >&2; exit 1; }
	rps=$("$out/bin/load" -url "http://127.0.0.1:$port/" -c "$conns" -d "$dur" -close -sources 16 |
		python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %d" % (r["rps"], r["errors"]))')
	kill -TERM "$pid"
	wait "$pid" || true
	echo "$rps"
}

declare -A all
echo "round $(printf '%12s' "${policies[@]}")  (conn/s; errors)"
for r in $(seq "$rounds"); do
	line="$(printf '%5d' "$r")"
	for p in "${policies[@]}"; do
		read -r rps errs < <(run "$p")
		all[$p]+="$rps "
		line+="$(printf '%12s' "$rps;$errs")"
	done
	echo "$line"
done
base=$(echo ${all[roundrobin]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
for p in "${policies[@]}"; do
	med=$(echo ${all[$p]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
	echo "median $p: $med conn/s, $(python3 -c "print('%.3f' % ($med/$base))")x roundrobin"
done

[ "${MIXED:-1}" = 1 ] || exit 0
node=$(command -v node || true)
[ -n "$node" ] || { echo "bench: no node: the mixed load is skipped"; exit 0; }

# mixed NAME START...: run START (a command line serving on $port), then the
# mixed load; prints one table row.
mixed() {
	local name=$1 pid fast
	shift
	"$@" &
	pid=$!
	for _ in $(seq 400); do
		curl -s -o /dev/null "http://127.0.0.1:$port/" && break
		sleep 0.05
	done
	sleep 1 # every worker up
	"$out/bin/load" -url "http://127.0.0.1:$port/slow" -c 1 -d 6s -close >"$out/slow.json" &
	fast=$("$out/bin/load" -url "http://127.0.0.1:$port/fast" -c 6 -d 6s -close)
	wait %2 2>/dev/null || wait
	kill -TERM "$pid"
	wait "$pid" 2>/dev/null || true
	echo "$fast" | python3 -c 'import json,sys
r=json.load(sys.stdin); s=json.load(open(sys.argv[2]))
print("| %s | %d | %.1f ms | %.0f ms | %d |" % (sys.argv[1], r["requests"], r["p50_ms"], r["p99_ms"], s["requests"]))' "$name" "$out/slow.json"
}

echo
echo "| mixed load, $workers workers | /fast answered | p50 | p99 | /slow answered |"
echo "|---|---|---|---|---|"
for c in "rr least" "rr roundrobin" shared reuseport; do
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	set -- $c
	bal=()
	[ $# = 2 ] && bal=(--balance "$2")
	mixed "prefork $c" env PORT="$port" "$out/bin/prefork" -q -n "$workers" --mode "$1" "${bal[@]}" \
		-l "127.0.0.1:$port" -- "$node" bench/app.js
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mixed "Node cluster round robin" env SCHED=rr WORKERS="$workers" PORT="$port" "$node" bench/cluster.js
