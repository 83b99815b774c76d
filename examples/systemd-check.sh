#!/usr/bin/env bash
# examples/systemd-check.sh: checks docs/systemd/ without a running systemd. The
# units pass systemd-analyze verify; systemd-socket-activate stands in for
# prefork.socket (it binds the port, waits for the first connection, then execs
# prefork with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES); a python3 reader
# stands in for systemd's notify socket and sees READY=1, RELOADING=1 and
# STOPPING=1 arrive from prefork, as Type=notify needs.
source "$(dirname "$0")/lib.sh"
service=docs/systemd/prefork.service
socket=docs/systemd/prefork.socket

command -v systemd-socket-activate >/dev/null || skip "needs systemd-socket-activate"
command -v curl >/dev/null || skip "needs curl"
prefork=$(prefork_bin)

if command -v systemd-analyze >/dev/null; then
  mkdir "$tmp/units"
  sed "s|/usr/local/bin/prefork|$prefork|" "$service" >"$tmp/units/prefork.service"
  cp "$socket" "$tmp/units/prefork.socket"
  out=$(cd "$tmp/units" && systemd-analyze verify prefork.socket prefork.service 2>&1) ||
    fail "systemd-analyze verify: $out"
  # verify also reads every unit installed on the machine; complaints about
  # those (a Debian package's own unit, say) are not ours to fix.
  theirs=$(printf '%s\n' "$out" | grep -E '^/' | grep -v "^$tmp/units/" || true)
  [ -z "$theirs" ] || say "systemd-analyze verify: ignoring complaints about other units: $theirs"
  out=$(printf '%s\n' "$out" | grep -vE "^/" | grep -v '^$' || true)$(printf '%s\n' "$out" | grep "^$tmp/units/" || true)
  [ -z "$out" ] || fail "systemd-analyze verify complains: $out"
  say "systemd-analyze verify: clean"
fi

# The service's ExecStart, with two workers whatever the CPU count, and the
# socket unit's FileDescriptorName.
args=$(sed -n 's|^ExecStart=/usr/local/bin/prefork ||p' "$service" | sed 's/-n auto/-n 2/')
[ -n "$args" ] || fail "no ExecStart=/usr/local/bin/prefork line in $service"
fdname=$(sed -n 's/^FileDescriptorName=//p' "$socket")
port=$(free_port)

notify=
if command -v python3 >/dev/null; then
  notify=$tmp/notify.sock
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        log.write(s.recv(4096).decode() + "\n")
' "$notify" "$tmp/notify.log" &
  started+=("$!")
  wait_until 10 test -S "$notify" || fail "the notify reader did not start"
else
  say "no python3: not checking sd_notify"
fi

# -E NOTIFY_SOCKET= only where the reader runs; otherwise prefork gets none.
env_opt=()
[ -z "$notify" ] || env_opt=(-E "NOTIFY_SOCKET=$notify")
# shellcheck disable=SC2086 # $args is the unit's word list
systemd-socket-activate -l "127.0.0.1:$port" --fdname="$fdname" "${env_opt[@]}" \
  "$prefork" --status-file "$tmp/status.json" $args >"$tmp/log" 2>&1 &
pf=$!
started+=("$pf")
say "systemd-socket-activate -l 127.0.0.1:$port --fdname=$fdname prefork $args (pid $pf)"

answer() { curl -fsS --max-time 5 "http://127.0.0.1:$port/"; }
# The first connection makes systemd-socket-activate exec prefork in place; it
# waits in the socket's queue until a worker accepts it.
a=$(answer) || fail "no answer on the activated socket; log:
$(cat "$tmp/log")"
say "answer: $a"
case $a in "hello from prefork worker "*) ;; *) fail "unexpected answer: $a" ;; esac
[ "$(readlink "/proc/$pf/exe")" = "$(readlink -f "$prefork")" ] || fail "pid $pf is not prefork: activation must exec in place"
grep -q "listening name=$fdname addr=127.0.0.1:$port" "$tmp/log" || fail "prefork did not adopt the socket as '$fdname'; log:
$(cat "$tmp/log")"

ready() { [ "$(grep -o '"state": "ready"' "$tmp/status.json" | wc -l)" = 2 ]; }
wait_until 30 ready || fail "2 workers not ready; log:
$(cat "$tmp/log")"
say "2 workers ready"

if [ -n "$notify" ]; then
  wait_until 30 grep -qx READY=1 "$tmp/notify.log" || fail "no READY=1 on NOTIFY_SOCKET"
  grep -qx "MAINPID=$pf" "$tmp/notify.log" || fail "READY=1 without MAINPID=$pf: $(cat "$tmp/notify.log")"
  say "READY=1 arrived with MAINPID=$pf"
fi

# systemctl reload: ExecReload=kill -HUP $MAINPID, a rolling reload.
kill -HUP "$pf"
gen2() { [ "$(grep -c '"generation": 2' "$tmp/status.json")" = 3 ] && ready; } # top level + 2 workers
wait_until 60 gen2 || fail "the reload did not bring up generation 2; log:
$(cat "$tmp/log")"
answer | grep -q 'generation 2' || fail "after the reload: $(answer)"
if [ -n "$notify" ]; then
  wait_until 10 sh -c "grep -x RELOADING=1 '$tmp/notify.log' >/dev/null && [ \$(grep -cx READY=1 '$tmp/notify.log') -ge 2 ]" ||
    fail "no RELOADING=1 then READY=1 around the reload: $(cat "$tmp/notify.log")"
  say "RELOADING=1 and READY=1 around the reload"
fi

# systemctl stop with KillMode=mixed: TERM to prefork alone.
stop_with_term "$pf" "$tmp/log"
if [ -n "$notify" ]; then
  wait_until 5 grep -qx STOPPING=1 "$tmp/notify.log" || fail "no STOPPING=1 at stop"
  say "STOPPING=1 at stop"
fi
say "ok"
