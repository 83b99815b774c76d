#!/usr/bin/env bash
# examples/docker-check.sh: checks docs/docker/Dockerfile without a Docker engine.
# It builds prefork with the Dockerfile's own RUN line, then runs its CMD line as
# a container would: pid 1 of new pid and network namespaces (loopback only),
# limited to one CPU (a cgroup CPU quota as docker run --cpus 1 sets, or a CPU
# affinity mask), and checks that -n auto started one worker, that the demo
# answers, that pid 1 reaps an orphan, and that TERM stops it with status 0.
source "$(dirname "$0")/lib.sh"
dockerfile=docs/docker/Dockerfile

box_usable

# The build, as the Dockerfile's RUN line does it, into $tmp instead of /out.
build=$(sed -n 's|^RUN \(.*go build .*\) -o /out/prefork \(.*\)$|\1 -o "$tmp/prefork" \2|p' "$dockerfile")
[ -n "$build" ] || fail "no 'RUN ... go build ... -o /out/prefork' line in $dockerfile"
say "build: $build"
eval "$build"

# The CMD line (exec form), with the image's path to prefork mapped to the build.
cmd=$(sed -n 's|^CMD \[\(.*\)\]$|\1|p' "$dockerfile" | tr -d '",')
[ -n "$cmd" ] || fail "no exec-form CMD line in $dockerfile"
read -r -a argv <<<"$cmd"
[ "${argv[0]}" = /usr/local/bin/prefork ] || fail "CMD does not start /usr/local/bin/prefork: ${argv[*]}"
argv[0]=$tmp/prefork
port=
for ((i = 0; i < ${#argv[@]}; i++)); do
  [ "${argv[i]}" = -p ] && port=${argv[i + 1]}
done
[ -n "$port" ] || fail "CMD has no -p PORT"
say "CMD: ${argv[*]}"

# One CPU: a cgroup quota if this machine lets us make one, else affinity.
box_cgroup=
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
  box_cgroup=/sys/fs/cgroup/prefork-check.$$
  mkdir "$box_cgroup" 2>/dev/null && echo "100000 100000" >"$box_cgroup/cpu.max" 2>/dev/null || box_cgroup=
elif [ -d /sys/fs/cgroup/cpu ]; then
  box_cgroup=/sys/fs/cgroup/cpu/prefork-check.$$
  mkdir "$box_cgroup" 2>/dev/null && echo 100000 >"$box_cgroup/cpu.cfs_period_us" &&
    echo 100000 >"$box_cgroup/cpu.cfs_quota_us" 2>/dev/null || box_cgroup=
fi
if [ -n "$box_cgroup" ]; then
  trap 'cleanup; rmdir "$box_cgroup" 2>/dev/null || true' EXIT
  say "CPU limit: cgroup quota of one CPU ($box_cgroup)"
else
  command -v taskset >/dev/null || skip "no cgroup CPU quota and no taskset"
  box_wrap="taskset -c 0"
  say "CPU limit: affinity to CPU 0"
fi

box_start "${argv[@]}"
nspid=$(awk '/^NSpid:/ { print $NF }' "/proc/$pf/status")
[ "$nspid" = 1 ] || fail "prefork is pid $nspid in its namespace, want 1"

answer() { inside curl -fsS --max-time 5 "http://127.0.0.1:$port/"; }
wait_until 30 answer || fail "the demo does not answer on port $port; log:
$(cat "$tmp/box.log")"
say "answer: $(answer)"
answer | grep -q '^hello from prefork worker 0 ' || fail "unexpected answer: $(answer)"

workers=$(children "$pf" | wc -w)
[ "$workers" = 1 ] || fail "-n auto under a one-CPU limit started $workers workers, want 1"
say "-n auto under a one-CPU limit: $workers worker"

# An orphan in the container is reparented to pid 1, which must reap it.
kids() { [ "$(children "$pf" | wc -w)" = "$1" ]; }
inside sh -c '(sleep 2 &) ; exit 0'
wait_until 10 kids 2 || fail "the orphan did not become a child of pid 1: $(children "$pf")"
wait_until 20 kids 1 || fail "pid 1 did not reap the orphan: children $(children "$pf")"
say "pid 1 reaped an orphan"

kill -TERM "$pf"
box_wait 30
[ "$box_status" = 0 ] || fail "exit status $box_status after TERM, want 0; log:
$(cat "$tmp/box.log")"
grep -q 'prefork: stopped' "$tmp/box.log" || fail "no 'stopped' line in the log"
say "ok"
