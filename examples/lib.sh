# examples/lib.sh: what every examples/*-check.sh sources: a scratch directory,
# cleanup of every process the script started, a free loopback port, polling.
# A check exits 0 when it passes, 77 when this machine cannot run it, else 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tmp=$(mktemp -d "${TMPDIR:-/tmp}/prefork-check.XXXXXX")
started=() # pids to kill on exit

cleanup() {
  local pid
  for pid in "${started[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say() { echo "${0##*/}: $*"; }
fail() {
  say "FAIL: $*" >&2
  exit 1
}
skip() {
  say "skipped: $*"
  exit 77
}

# prefork_bin prints the prefork binary: $PREFORK (examples/run.sh builds it
# once) or a fresh build.
prefork_bin() {
  if [ -n "${PREFORK:-}" ]; then
    echo "$PREFORK"
  else
    go build -o "$tmp/prefork" . && echo "$tmp/prefork"
  fi
}

# free_port prints a TCP port on 127.0.0.1 that no socket holds. It picks from
# below the kernel's ephemeral range (ip_local_port_range): a port in that range
# can be the local end of any outgoing connection on the machine at the moment
# prefork binds it, and bind then fails with EADDRINUSE although nothing
# listens. A port is taken as free when no TCP socket, listening or connected,
# has it as its local port (/proc/net/tcp and tcp6).
free_port() {
  local lo=32768 hi port try
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  [ "$lo" -gt 12000 ] || lo=32768
  for try in $(seq 100); do
    port=$((10000 + RANDOM % (lo - 10000)))
    if ! port_held "$port"; then
      echo "$port"
      return 0
    fi
  done
  fail "no free port found"
}

# port_held PORT: some TCP socket has PORT as its local port.
port_held() {
  if [ -r /proc/net/tcp ]; then
    awk -v p="$(printf ':%04X' "$1")" 'FNR > 1 && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# wait_until SECONDS COMMAND...: run COMMAND every 0.1s until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# alive PID: the process runs and is no zombie.
alive() {
  [ -r "/proc/$1/stat" ] && ! awk '{ sub(/.*\) /, ""); exit !($1 == "Z") }' "/proc/$1/stat"
}

# children PID: the pids of PID's child processes.
children() {
  cat /proc/"$1"/task/*/children 2>/dev/null || true
}

# Containers without an engine: box_start runs ARGV as pid 1 of new pid, mount and
# network namespaces (loopback only, up), as a container runtime would, with
# output to $tmp/box.log. It sets box (the unshare process, whose exit status is
# ARGV's) and pf (ARGV's pid as seen from here). $box_cgroup, if set, is a cgroup
# directory to run it in; $box_wrap, if set, a command to run it under (taskset).
box_usable() {
  [ "$(uname -s)" = Linux ] || skip "needs Linux namespaces"
  command -v unshare >/dev/null && command -v nsenter >/dev/null && command -v curl >/dev/null &&
    command -v ip >/dev/null || skip "needs unshare, nsenter, ip and curl"
  unshare --fork --pid --net --mount-proc true 2>/dev/null || skip "cannot create namespaces here (needs root)"
}

box_start() {
  # unshare --kill-child: if this script dies, the whole "container" dies with it.
  (
    [ -z "${box_cgroup:-}" ] || echo "$BASHPID" >"$box_cgroup/cgroup.procs"
    exec ${box_wrap:-} unshare --kill-child --pid --net --mount-proc \
      sh -c 'ip link set lo up && exec "$@"' sh "$@"
  ) >"$tmp/box.log" 2>&1 &
  box=$!
  started+=("$box")
  wait_until 20 sh -c "grep -q . /proc/$box/task/*/children" || fail "no process in the container"
  pf=$(children "$box" | awk '{ print $1 }')
  wait_until 20 sh -c "[ \"\$(readlink /proc/$pf/exe)\" = \"\$(readlink -f '$1')\" ]" || fail "pid 1 is not $1"
}

# inside COMMAND...: run COMMAND in the box's namespaces.
inside() { nsenter --target "$pf" --net --pid --mount "$@"; }

# box_wait SECONDS: wait for the box to end; fails after SECONDS; sets box_status.
box_wait() {
  wait_until "$1" sh -c "! kill -0 $box" || fail "pid 1 still runs ${1}s later"
  box_status=0
  wait "$box" || box_status=$?
}

# stop_with_term PID LOG [WHAT]: TERM to prefork, which must exit 0 within 45s;
# LOG is shown when it does not.
stop_with_term() {
  local pid=$1 log=$2 what=${3:+$3: } status=0
  kill -TERM "$pid"
  wait_until 45 sh -c "! kill -0 $pid" || fail "${what}prefork did not stop within 45s of TERM"
  wait "$pid" || status=$?
  [ "$status" = 0 ] || fail "${what}exit status $status after TERM, want 0; log:
$(cat "$log")"
}

# ready_workers STATUS_FILE N: the status file shows N ready workers and none
# starting or stopping.
ready_workers() {
  [ "$(grep -o '"state": "ready"' "$1" | wc -l)" = "$2" ] && ! grep -q '"state": "st' "$1"
}
