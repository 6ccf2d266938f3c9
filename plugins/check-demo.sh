#!/usr/bin/env bash
# Checks that the committed demo plugins in plugins/demo/ are exactly what
# plugins/build.sh builds from the C examples today, byte for byte (the C
# builds are reproducible: the same bytes whatever the source path).
#
#   plugins/check-demo.sh            rebuild into a temporary directory, compare
#   plugins/check-demo.sh --update   rebuild and copy into plugins/demo/
#
# plugins/demo/NAME.wasm is plugins/c/NAME.c built (NAME.c.wasm in
# build.sh's output), for NAME in count, latency, mallocsize: the plugins
# `wprobe demo` uploads, committed so that the demo needs no wasm toolchain.
# A mismatch (after a change to plugins/c/, plugin-sdk/c/wprobe.h, build.sh's
# flags or the C toolchain) stops with a message naming the file; run with
# --update and commit the result.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
demo="$root/plugins/demo"
names=(count latency mallocsize)

die() {
    echo "plugins/check-demo.sh: $*" >&2
    exit 1
}

update=false
case "${1:-}" in
"") ;;
--update) update=true ;;
-h | --help)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*) die "unknown argument \`$1\`; give nothing (compare) or --update (copy)" ;;
esac
[ $# -le 1 ] || die "one argument at most (--update)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
out="$tmp/out"
if ! bash "$root/plugins/build.sh" "$out" >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log" >&2
    die "plugins/build.sh failed (its output is above)"
fi

if $update; then
    mkdir -p "$demo"
    for n in "${names[@]}"; do
        cp "$out/$n.c.wasm" "$demo/$n.wasm"
        echo "plugins/demo/$n.wasm  $(wc -c <"$demo/$n.wasm") bytes  $(sha256sum "$demo/$n.wasm" | cut -c1-16)…"
    done
    echo "updated plugins/demo/; commit it"
    exit 0
fi

bad=0
for n in "${names[@]}"; do
    committed="$demo/$n.wasm"
    built="$out/$n.c.wasm"
    if [ ! -f "$committed" ]; then
        echo "plugins/demo/$n.wasm is missing (it is plugins/c/$n.c built)" >&2
        bad=1
    elif ! cmp -s "$committed" "$built"; then
        echo "plugins/demo/$n.wasm differs from plugins/c/$n.c as built now:" \
            "$(wc -c <"$committed") bytes, sha256 $(sha256sum "$committed" | cut -c1-16)… committed;" \
            "$(wc -c <"$built") bytes, sha256 $(sha256sum "$built" | cut -c1-16)… built" >&2
        bad=1
    else
        echo "plugins/demo/$n.wasm  $(wc -c <"$committed") bytes  same as built"
    fi
done
[ "$bad" -eq 0 ] ||
    die "the demo plugins are stale; refresh them with \`plugins/check-demo.sh --update\` and commit plugins/demo/"
