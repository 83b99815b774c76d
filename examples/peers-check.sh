#!/usr/bin/env bash
# examples/peers-check.sh: servers that nobody here wrote, the Debian-packaged
# ones of docs/servers.md, run under prefork unchanged with the command line
# and stop signal that table gives. For each: 2 workers on a loopback port
# answer, a rolling reload (HUP) brings generation 2 up with no request failed
# meanwhile, and TERM stops prefork with status 0.
#
# The python3-systemd worker and gunicorn run with --ready notify (they say
# READY=1); the others with the default --ready auto, and each must come up
# by READY=1 or by being seen waiting for connections, never by the delay
# rule: the status file says how (up_by, seen_in). Packages are installed
# with apt-get when they can be; a server whose package cannot be had is
# skipped with a message, never a failure. The whole script skips (77) only when none ran.
source "$(dirname "$0")/lib.sh"

command -v curl >/dev/null || skip "needs curl"
py=/usr/bin/python3

# have NAME: the server NAME is installed.
have() {
  case $1 in
  python3-systemd) "$py" -c 'import systemd.daemon' 2>/dev/null ;;
  uvicorn) "$py" -c 'import uvicorn' 2>/dev/null ;;
  twisted) [ -x /usr/bin/twistd3 ] ;;
  uwsgi) [ -x /usr/bin/uwsgi ] && [ -e /usr/lib/uwsgi/plugins/python3_plugin.so ] ;;
  lighttpd | haproxy) [ -x "/usr/sbin/$1" ] ;;
  *) [ -x "/usr/bin/$1" ] ;;
  esac
}
declare -A package=(
  [python3-systemd]=python3-systemd [gunicorn]=gunicorn [uvicorn]=python3-uvicorn
  [hypercorn]=python3-hypercorn [twisted]=python3-twisted [uwsgi]="uwsgi uwsgi-plugin-python3"
  [starman]="starman libplack-perl" [puma]=puma [unicorn]=unicorn [haproxy]=haproxy [lighttpd]=lighttpd
)
servers=(python3-systemd gunicorn uvicorn hypercorn twisted uwsgi starman puma unicorn haproxy lighttpd)

# Install what is missing, one server at a time (one unavailable package must
# not keep the others out); apt-get update once, only if an install failed.
# Installing gets 150 s in all, so that the checks (about a minute) stay inside
# examples/run.sh's 300 s per check on a machine that has none of them yet.
install_until=$((SECONDS + 150))
apt() {
  local left=$((install_until - SECONDS))
  [ "$left" -gt 0 ] && timeout "$left" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null 2>&1
}
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  updated=
  for s in "${servers[@]}"; do
    have "$s" && continue
    [ "$SECONDS" -lt "$install_until" ] || { say "no time left to install ${package[$s]}"; continue; }
    say "installing ${package[$s]} (Debian)"
    # shellcheck disable=SC2086 # a list of packages
    apt install -y --no-install-recommends ${package[$s]} && continue
    [ -n "$updated" ] || { apt update || true; updated=1; }
    # shellcheck disable=SC2086
    apt install -y --no-install-recommends ${package[$s]} || say "could not install ${package[$s]}"
  done
fi
prefork=$(prefork_bin)

# get PORT: one request; prints the body.
get() { curl -fsS --max-time 10 "http://127.0.0.1:$1/"; }

# check NAME PATTERN [PREFORK-OPTIONS...] -- COMMAND...: the word PORT in the
# options and the command is the port. Without -p in the options prefork
# listens on -l 127.0.0.1:PORT.
ran=() skipped=()
check() {
  local name=$1 pattern=$2
  shift 2
  if ! have "$name"; then
    say "$name: skipped, not installed (Debian: ${package[$name]})"
    skipped+=("$name")
    return
  fi
  local port opts=() cmd=() a
  port=$(free_port)
  while [ "$1" != -- ]; do opts+=("${1//PORT/$port}"); shift; done
  shift
  for a in "$@"; do cmd+=("${a//PORT/$port}"); done
  case " ${opts[*]} " in *" -p "*) ;; *) opts+=(-l "127.0.0.1:$port") ;; esac
  local log=$tmp/$name.log st=$tmp/$name.json
  PEER=$name "$prefork" -n 2 --grace 10s --status-file "$st" "${opts[@]}" -- "${cmd[@]}" >"$log" 2>&1 &
  local pf=$!
  started+=("$pf")
  wait_until 30 ready_workers "$st" 2 || fail "$name: 2 workers not up within 30s; log:
$(cat "$log")"
  local how seen
  # (no seen_in for a worker up by READY=1: uWSGI's master sends it)
  how=$(grep -o '"up_by": "[^"]*"' "$st" | head -1 | cut -d'"' -f4 || true)
  seen=$(grep -o '"seen_in": "[^"]*"' "$st" | head -1 | cut -d'"' -f4 || true)
  [ -z "$seen" ] || how="$how ($seen)"
  ! grep -q '"up_by": "delay"' "$st" || fail "$name: up by the delay rule, not seen waiting for connections ($how); log:
$(cat "$log")"
  wait_until 20 get "$port" || fail "$name: no answer on port $port; log:
$(cat "$log")"
  local i
  for i in $(seq 10); do
    a=$(get "$port") || fail "$name: request $i failed; log:
$(cat "$log")"
    case $a in "$pattern"*) ;; *) fail "$name: unexpected answer: $a" ;; esac
  done
  # Requests one after another all through the reload: none may fail.
  (
    n=0 failed=0
    while [ ! -e "$tmp/$name.done" ] && [ $n -lt 2000 ]; do
      get "$port" >/dev/null 2>&1 || failed=$((failed + 1))
      n=$((n + 1))
    done
    echo "$n $failed" >"$tmp/$name.count"
  ) &
  local load=$!
  started+=("$load")
  kill -HUP "$pf"
  wait_until 60 sh -c "grep -q '\"generation\": 2' '$st' && ! grep -q '\"generation\": 1,' '$st'" ||
    fail "$name: the reload did not bring generation 2 up within 60s; log:
$(cat "$log")"
  wait_until 30 ready_workers "$st" 2 || fail "$name: not 2 ready workers after the reload"
  ! grep -q '"up_by": "delay"' "$st" || fail "$name: a new worker came up by the delay rule, not seen waiting"
  sleep 0.5
  touch "$tmp/$name.done"
  wait "$load" || true
  local n failed
  read -r n failed <"$tmp/$name.count"
  [ "$failed" = 0 ] || fail "$name: $failed of $n requests failed during the reload; log:
$(cat "$log")"
  get "$port" >/dev/null || fail "$name: no answer after the reload"
  stop_with_term "$pf" "$log" "$name"
  say "$name: up by $how, answered, reloaded with 0 of $n requests failed, TERM: status 0"
  ran+=("$name")
}

# The notify checks of before: both slots answer, and READY=1 is credited.
check_notify() {
  local name=$1 pattern=$2
  shift 2
  if ! have "$name"; then
    say "$name: skipped, not installed (Debian: ${package[$name]})"
    skipped+=("$name")
    return
  fi
  local port
  port=$(free_port)
  rm -f "$tmp/status.json"
  "$prefork" -l "127.0.0.1:$port" -n 2 --ready notify --ready-timeout 20s --grace 10s \
    --status-file "$tmp/status.json" -- "$@" >"$tmp/$name.log" 2>&1 &
  local pf=$!
  started+=("$pf")
  wait_until 30 ready_workers "$tmp/status.json" 2 || fail "$name: 2 workers not ready (READY=1 never credited?); log:
$(cat "$tmp/$name.log")"
  local seen="" a i
  for i in $(seq 30); do
    a=$(get "$port") || fail "$name: request $i failed; log:
$(cat "$tmp/$name.log")"
    case $a in "$pattern"*) ;; *) fail "$name: unexpected answer: $a" ;; esac
    a=${a#"$pattern"}
    seen="$seen ${a%% *}"
  done
  for slot in 0 1; do
    echo "$seen " | grep -q " $slot " || fail "$name: slot $slot never answered 30 requests:$seen"
  done
  kill -HUP "$pf"
  wait_until 40 sh -c "grep -q '\"generation\": 2' '$tmp/status.json' && ! grep -q '\"generation\": 1,' '$tmp/status.json'" ||
    fail "$name: the reload did not bring generation 2 up; log:
$(cat "$tmp/$name.log")"
  wait_until 20 ready_workers "$tmp/status.json" 2 || fail "$name: not 2 ready workers after the reload"
  get "$port" >/dev/null || fail "$name: no answer after the reload"
  stop_with_term "$pf" "$tmp/$name.log" "$name"
  say "$name: both slots answered, READY=1 credited, reloaded, TERM: status 0"
  ran+=("$name")
}

check_notify python3-systemd "worker " "$py" examples/systemd_worker.py
check_notify gunicorn "gunicorn slot " /usr/bin/gunicorn --chdir examples -w 1 --graceful-timeout 5 wsgi_app:app
check uvicorn "uvicorn slot " -- "$py" -m uvicorn --fd 3 --app-dir examples/peers asgi_app:app
check hypercorn "hypercorn slot " -- /usr/bin/hypercorn --bind fd://3 examples.peers.asgi_app:app
PYTHONPATH=examples check twisted "twisted slot " -- /usr/bin/twistd3 -n --pidfile= web --listen systemd:domain=INET:index=0 --wsgi wsgi_app.app
check uwsgi "uwsgi slot " --kill-mode mixed -- /usr/bin/uwsgi --plugin python3 --master --workers 1 \
  --hook-master-start "unix_signal:15 gracefully_kill_them_all" --protocol http --chdir examples --module wsgi_app:app
check starman "starman slot " --kill-mode mixed --stop-signal QUIT -- /usr/bin/starman --workers 1 examples/peers/app.psgi
check puma "puma slot " -p PORT -- /usr/bin/puma -b "tcp://[::]:PORT" examples/peers/config.ru
check unicorn "unicorn slot " --kill-mode mixed --stop-signal QUIT -- /usr/bin/unicorn examples/peers/config.ru
check haproxy "haproxy slot " --stop-signal USR1 -- /usr/sbin/haproxy -db -f examples/peers/haproxy.cfg
check lighttpd "lighttpd answers" --stop-signal INT -- /usr/sbin/lighttpd -D -f examples/peers/lighttpd.conf

say "ran: ${ran[*]:-none}; skipped: ${skipped[*]:-none}"
[ ${#ran[@]} -gt 0 ] || skip "no server could be installed"
say "ok"
