#!/usr/bin/env bash
# Compiles bpf/kfast.c (the tc kernel fast path, issue 16) and embeds the result as
# src/kfast/tc_prog.gen.ts (committed: the daemon and CI need no clang). Needs Debian's clang
# (apt-get install -y clang) and the kernel uapi headers (linux-libc-dev).
# Usage: scripts/build_bpf.sh [OUT.ts]   (default src/kfast/tc_prog.gen.ts)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-src/kfast/tc_prog.gen.ts}
deno=${DENO:-$PWD/.tools/node_modules/.bin/deno}
[[ -x $deno ]] || deno=deno
obj=$(mktemp --suffix=.o)
trap 'rm -f "$obj"' EXIT
inc=/usr/include/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
clang -O2 -target bpf -I"$inc" -Wall -Werror -c bpf/kfast.c -o "$obj"
"$deno" run --allow-read --allow-write scripts/bpf_embed.ts "$obj" bpf/kfast.c "$out"
"$deno" fmt -q --config deno.json "$out"
