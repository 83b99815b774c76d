#!/usr/bin/env bash
# examples/rr-check.sh: runs examples/rr_worker.py, the Python worker of the
# README's rr section, under prefork --mode rr and checks with curl that both
# workers answer, that a killed worker is replaced while the port keeps
# answering, and that TERM stops everything with status 0.
source "$(dirname "$0")/lib.sh"
worker=examples/rr_worker.py

[ -f "$worker" ] || skip "no $worker yet"
command -v curl >/dev/null || skip "needs curl"
python3 -c 'import sys, socket; sys.exit(not hasattr(socket, "recv_fds"))' 2>/dev/null ||
  skip "needs python3 3.9 or later (socket.recv_fds)"
prefork=$(prefork_bin)
port=$(free_port)

"$prefork" --mode rr -l "127.0.0.1:$port" -n 2 --ready-delay 300ms --status-file "$tmp/status.json" \
  -- python3 "$worker" >"$tmp/log" 2>&1 &
pf=$!
started+=("$pf")
say "prefork --mode rr -l 127.0.0.1:$port -n 2 -- python3 $worker (pid $pf)"

answer() { curl -fsS --max-time 5 "http://127.0.0.1:$port/"; }
ready() { [ "$(grep -o '"state": "ready"' "$tmp/status.json" | wc -l)" = 2 ]; }
wait_until 30 ready || fail "2 workers not ready; log:
$(cat "$tmp/log")"
seen=
for i in $(seq 20); do
  a=$(answer) || fail "request $i failed; log:
$(cat "$tmp/log")"
  case $a in "hello from python rr worker "*) ;; *) fail "unexpected answer: $a" ;; esac
  seen="$seen ${a##* }"
done
for slot in 0 1; do
  echo "$seen" | grep -qw "$slot" || fail "worker $slot never answered 20 requests:$seen"
done
say "both workers answered"

victim=$(children "$pf" | awk '{ print $1 }')
kill -KILL "$victim"
for i in $(seq 20); do
  answer >/dev/null || fail "request $i failed after a worker was killed; log:
$(cat "$tmp/log")"
done
wait_until 30 ready || fail "the killed worker was not replaced"
alive "$victim" && fail "worker $victim survived SIGKILL"
say "a killed worker was replaced; no request failed"

stop_with_term "$pf" "$tmp/log"
say "ok"
