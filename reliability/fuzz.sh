#!/bin/sh
# This script runs every fuzz target of the module for a short while, one target
# per go test invocation (go fuzzes one target at a time). Crashers that go
# finds land in the package's testdata/fuzz/ and must be committed: they stay
# as seed files that every plain `go test` runs from then on.
#
# usage: reliability/fuzz.sh [FUZZTIME]     (default 5s per target)
set -eu
cd "$(dirname "$0")/.."
fuzztime=${1:-5s}
status=0
count=0
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		count=$((count + 1))
		echo "fuzz: $pkg $target ($fuzztime)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"; then
			echo "fuzz: $target FAILED; the crasher is under testdata/fuzz/$target/ of $pkg" >&2
			status=1
		fi
	done
done
if [ "$count" -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
echo "fuzz: $count targets run"
exit $status
