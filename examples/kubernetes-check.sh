#!/usr/bin/env bash
# examples/kubernetes-check.sh: checks docs/kubernetes.yaml without a cluster.
# The stop budget adds up (preStop + --drain-delay + --grace, with a margin, fits
# in terminationGracePeriodSeconds), and prefork run with the container's args as
# pid 1 of new namespaces keeps answering during the drain delay after TERM, as
# the kubelet sends it, then exits 0 well before the kubelet would SIGKILL it.
source "$(dirname "$0")/lib.sh"
yaml=docs/kubernetes.yaml

# seconds DURATION: whole seconds of "5s", "1m" or "30".
seconds() {
  case $1 in
  *m) echo $((${1%m} * 60)) ;;
  *s) echo "${1%s}" ;;
  *) echo "$1" ;;
  esac
}

period=$(sed -n 's/^ *terminationGracePeriodSeconds: *\([0-9][0-9]*\).*/\1/p' "$yaml")
prestop=$(sed -n 's/^ *seconds: *\([0-9][0-9]*\).*/\1/p' "$yaml" | head -1) # a preStop sleep; not in comments
prestop=${prestop:-0}
args=$(sed -n 's/^ *args: *\[\(.*\)\] *$/\1/p' "$yaml" | tr -d '",')
command=$(sed -n 's/^ *command: *\["\(.*\)"\] *$/\1/p' "$yaml")
[ -n "$period" ] && [ -n "$args" ] && [ "$command" = /usr/local/bin/prefork ] ||
  fail "$yaml lacks terminationGracePeriodSeconds, command [\"/usr/local/bin/prefork\"] or args"
read -r -a argv <<<"$args"
drain=0 grace=30 port=
for ((i = 0; i < ${#argv[@]}; i++)); do
  case ${argv[i]} in
  --drain-delay) drain=$(seconds "${argv[i + 1]}") ;;
  --grace) grace=$(seconds "${argv[i + 1]}") ;;
  -p) port=${argv[i + 1]} ;;
  -n) argv[i + 1]=2 ;; # two workers, whatever this machine's CPUs
  esac
done
[ -n "$port" ] || fail "args have no -p PORT"
need=$((prestop + drain + grace))
say "stop budget: preStop ${prestop}s + --drain-delay ${drain}s + --grace ${grace}s = ${need}s; terminationGracePeriodSeconds ${period}s"
[ $((need + 5)) -le "$period" ] || fail "terminationGracePeriodSeconds $period leaves under 5s beyond ${need}s: the kubelet would SIGKILL a stop in progress"
[ "$drain" -ge 2 ] || fail "--drain-delay ${drain}s: give the endpoints a few seconds to drop the pod"

box_usable
prefork=$(prefork_bin)
box_start "$prefork" "${argv[@]}"
say "prefork ${argv[*]} (pid $pf, pid 1 inside)"
answer() { inside curl -fsS --max-time 5 "http://127.0.0.1:$port/"; }
wait_until 30 answer || fail "no answer on port $port; log:
$(cat "$tmp/box.log")"

kill -TERM "$pf" # what the kubelet sends once preStop is done
start=$SECONDS
sleep 1
answer >/dev/null || fail "no answer 1s into the ${drain}s drain delay; log:
$(cat "$tmp/box.log")"
say "still answering 1s after TERM, during the drain delay"
box_wait $((period - prestop))
took=$((SECONDS - start))
[ "$box_status" = 0 ] || fail "exit status $box_status after TERM, want 0; log:
$(cat "$tmp/box.log")"
[ "$took" -ge "$drain" ] || fail "prefork stopped after ${took}s, before the ${drain}s drain delay ended"
say "stopped with status 0 ${took}s after TERM (the kubelet's SIGKILL would come at $((period - prestop))s)"
say "ok"
