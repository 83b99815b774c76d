#!/usr/bin/env bash
# examples/run.sh: runs every examples/*-check.sh against one build of prefork,
# each bounded in time and in its own process group, and exits non-zero if any
# failed. A check that this machine cannot run exits 77 and counts as skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

limit=${CHECK_TIMEOUT:-300} # seconds per check; the Dockerfile check compiles
tmp=$(mktemp -d "${TMPDIR:-/tmp}/prefork-examples.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/prefork" . || exit 1
export PREFORK=$tmp/prefork

# timeout(1) runs the check in a process group of its own and signals all of it:
# TERM first (each check's trap kills what it started), KILL 10s later.
bounded=()
command -v timeout >/dev/null && bounded=(timeout --kill-after=10 "$limit")

passed=() skipped=() failed=()
for check in examples/*-check.sh; do
  echo "== $check"
  start=$SECONDS
  "${bounded[@]}" "$check"
  rc=$?
  case $rc in
  0) passed+=("$check") ;;
  77) skipped+=("$check") ;;
  124 | 137) echo "$check: timed out after ${limit}s"; failed+=("$check") ;;
  *) echo "$check: exit status $rc"; failed+=("$check") ;;
  esac
  echo "   ($((SECONDS - start))s)"
done
echo "examples: ${#passed[@]} passed, ${#skipped[@]} skipped${skipped:+ (${skipped[*]})}, ${#failed[@]} failed${failed:+ (${failed[*]})}"
[ ${#failed[@]} -eq 0 ]
