#!/usr/bin/env bash
# examples/pool-check.sh: runs examples/sync_worker.py (one request at a time,
# 200 ms each) under prefork -n 1:4, the README's pool sizing example, and
# checks that 8 concurrent curl loops make the pool grow to 4 workers, that no
# request fails, that the pool returns to 1 worker once the load stops and
# --idle-timeout has passed, and that TERM stops everything with status 0.
source "$(dirname "$0")/lib.sh"
worker=examples/sync_worker.py

[ "$(uname -s)" = Linux ] || skip "the accept queue is read on Linux only"
command -v curl >/dev/null || skip "needs curl"
command -v python3 >/dev/null || skip "needs python3"
prefork=$(prefork_bin)
port=$(free_port)

"$prefork" -l "127.0.0.1:$port" -n 1:4 --idle-timeout 2s --ready notify --status-file "$tmp/status.json" \
  -- python3 "$worker" >"$tmp/log" 2>&1 &
pf=$!
started+=("$pf")
say "prefork -l 127.0.0.1:$port -n 1:4 --idle-timeout 2s -- python3 $worker (pid $pf)"

wait_until 30 ready_workers "$tmp/status.json" 1 || fail "the first worker is not ready; log:
$(cat "$tmp/log")"

touch "$tmp/go"
for c in $(seq 8); do
  (
    while [ -e "$tmp/go" ]; do
      curl -fsS --max-time 20 "http://127.0.0.1:$port/" >>"$tmp/answers.$c" || echo failed >>"$tmp/failed"
    done
  ) &
  started+=("$!")
done
wait_until 30 ready_workers "$tmp/status.json" 4 || fail "the pool did not grow to 4 workers under load; log:
$(cat "$tmp/log")"
say "8 clients: the pool grew to 4 workers"
rm "$tmp/go"
for pid in "${started[@]:1}"; do wait "$pid" || true; done
[ ! -e "$tmp/failed" ] || fail "$(wc -l <"$tmp/failed") requests failed; log:
$(cat "$tmp/log")"
answers=$(cat "$tmp"/answers.* | wc -l)
pids=$(cat "$tmp"/answers.* | sort -u | wc -l)
say "$answers requests answered by $pids workers, none failed"

wait_until 30 ready_workers "$tmp/status.json" 1 || fail "the pool did not return to 1 worker once idle; log:
$(cat "$tmp/log")"
grep -q "pool: idle; stopping a worker" "$tmp/log" || fail "the log does not say why the pool shrank"
say "idle: back to 1 worker"

stop_with_term "$pf" "$tmp/log"
say "ok"
