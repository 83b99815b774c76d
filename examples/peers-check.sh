#!/usr/bin/env bash
# examples/peers-check.sh: systemd-aware programs that nobody here wrote, run
# under prefork unchanged: a python3-systemd worker (listen_fds() believes fd 3
# only when LISTEN_PID is its own pid; READY=1 through sd_notify) and gunicorn
# (adopts LISTEN_FDS, says READY=1 from its arbiter). Both with --ready notify,
# a rolling reload, and TERM. Installs the Debian packages when it can.
source "$(dirname "$0")/lib.sh"

py=/usr/bin/python3
need() { [ -x /usr/bin/gunicorn ] && "$py" -c 'import systemd.daemon' 2>/dev/null; }
if ! need && command -v apt-get >/dev/null; then
  say "installing gunicorn and python3-systemd (Debian packages)"
  apt-get install -y --no-install-recommends gunicorn python3-systemd >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends gunicorn python3-systemd >/dev/null 2>&1; } || true
fi
need || skip "needs Debian's gunicorn and python3-systemd"
command -v curl >/dev/null || skip "needs curl"
prefork=$(prefork_bin)


# check NAME PATTERN COMMAND...: prefork -n 2 --ready notify COMMAND; both
# slots answer; HUP brings generation 2 up (every worker said READY=1 again);
# TERM stops everything with status 0.
check() {
  local name=$1 pattern=$2
  shift 2
  local port
  port=$(free_port)
  rm -f "$tmp/status.json"
  "$prefork" -l "127.0.0.1:$port" -n 2 --ready notify --ready-timeout 20s --grace 10s \
    --status-file "$tmp/status.json" -- "$@" >"$tmp/$name.log" 2>&1 &
  local pf=$!
  started+=("$pf")
  if ! wait_until 30 ready_workers "$tmp/status.json" 2; then
    alive "$pf" || fail "$name: prefork exited before 2 workers were ready; log:
$(cat "$tmp/$name.log")"
    fail "$name: 2 workers not ready (READY=1 never credited?); log:
$(cat "$tmp/$name.log")"
  fi
  local seen="" a i
  for i in $(seq 30); do
    a=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/") || fail "$name: request $i failed; log:
$(cat "$tmp/$name.log")"
    case $a in $pattern*) ;; *) fail "$name: unexpected answer: $a" ;; esac
    a=${a#"$pattern"}
    seen="$seen ${a%% *}"
  done
  for slot in 0 1; do
    echo "$seen " | grep -q " $slot " || fail "$name: slot $slot never answered 30 requests:$seen"
  done
  say "$name: both slots answered"
  kill -HUP "$pf"
  wait_until 40 sh -c "grep -q '\"generation\": 2' '$tmp/status.json' && ! grep -q '\"generation\": 1,' '$tmp/status.json'" ||
    fail "$name: the reload did not bring generation 2 up; log:
$(cat "$tmp/$name.log")"
  wait_until 20 ready_workers "$tmp/status.json" 2 || fail "$name: not 2 ready workers after the reload"
  curl -fsS --max-time 5 "http://127.0.0.1:$port/" >/dev/null || fail "$name: no answer after the reload"
  say "$name: rolling reload done"
  stop_with_term "$pf" "$tmp/$name.log" "$name"
  say "$name: TERM stopped it with status 0"
}

check python3-systemd "worker " "$py" examples/systemd_worker.py
check gunicorn "gunicorn slot " /usr/bin/gunicorn --chdir examples -w 1 --graceful-timeout 5 wsgi_app:app
say "ok"
