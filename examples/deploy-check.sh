#!/usr/bin/env bash
# examples/deploy-check.sh: runs the deploy recipe of docs/recipes.md ("Deploy
# with a reload that reports its outcome"): a release whose workers never come
# up makes `prefork --ctl … reload` exit 1 while the old workers keep serving,
# the rollback's reload exits 0, and `prefork --ctl … stop` returns once prefork
# has exited.
source "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null || skip "needs python3"
prefork=$(prefork_bin)
port=$(free_port)
ctl="$tmp/ctl.sock"

# Two releases of a tiny HTTP server; the second is broken (exits at start).
# The good one says READY=1: an interpreter can take a while to read its
# script (pyenv's shims, a loaded machine), and a worker that is "up" after a
# fixed delay may read the next release's file instead.
mkdir -p "$tmp/releases/good" "$tmp/releases/bad"
cat >"$tmp/releases/good/server" <<'PY'
#!/usr/bin/env python3
import http.server, os, socket
sock = socket.socket(fileno=3)  # the listener prefork passes (LISTEN_FDS=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("generation %s\n" % os.environ["PREFORK_GENERATION"]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(sock.getsockname(), H, bind_and_activate=False)
srv.socket = sock
# Up once this code runs, not once the process exists: sd_notify READY=1.
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
srv.serve_forever()
PY
printf '#!/bin/sh\necho "bad release: missing config" >&2\nexit 3\n' >"$tmp/releases/bad/server"
chmod +x "$tmp/releases/good/server" "$tmp/releases/bad/server"
ln -sfn "$tmp/releases/good" "$tmp/current"

"$prefork" -l "127.0.0.1:$port" -n 2 --ready notify --ready-timeout 30s --control "$ctl" \
  -- "$tmp/current/server" >"$tmp/log" 2>&1 &
pf=$!
started+=("$pf")
say "prefork -n 2 --control $ctl -- current/server (pid $pf)"
up() { "$prefork" --ctl "$ctl" status | grep -c ' ready ' | grep -qx 2; }
wait_until 20 up || fail "2 workers not ready; log:
$(cat "$tmp/log")"

# The recipe: deploy, reload, roll back when the reload is abandoned.
previous=$(readlink "$tmp/current")
ln -sfn "$tmp/releases/bad" "$tmp/current"
if "$prefork" --ctl "$ctl" reload --timeout 60s 2>"$tmp/reload.err"; then
  fail "the reload of a broken release exited 0"
fi
grep -q 'abandoned' "$tmp/reload.err" || fail "the failed reload does not say why: $(cat "$tmp/reload.err")"
say "broken release: $(cat "$tmp/reload.err")"
answer=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/") || fail "the old workers do not answer; log:
$(cat "$tmp/log")"
[ "$answer" = "generation 1" ] || fail "after the failed reload the answer is '$answer', want generation 1"
ln -sfn "$previous" "$tmp/current"
"$prefork" --ctl "$ctl" reload --timeout 60s || fail "the rollback's reload failed"
answer=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/")
[ "$answer" = "generation 3" ] || fail "after the rollback the answer is '$answer', want generation 3"
say "rolled back: every slot runs generation 3"

"$prefork" --ctl "$ctl" metrics | grep -qx 'prefork_reload_failures_total 1' || fail "metrics do not count the failed reload"
"$prefork" --ctl "$ctl" stop >/dev/null || fail "stop failed"
gone() { ! alive "$pf"; }
wait_until 5 gone || fail "prefork still runs 5s after stop returned"
wait "$pf" || fail "prefork exited $? after stop"
[ ! -e "$ctl" ] || fail "the control socket outlived prefork"
say "ok"
