#!/usr/bin/env bash
# Builds the plugin SDK and every example plugin, in Rust and in C, from
# source into WebAssembly modules, then checks each module against the
# plugin ABI (docs/plugin-abi.md): it imports only from `wprobe` and
# `wasi_snapshot_preview1`; it exports `memory`, `wprobe_abi_version`,
# `wprobe_alloc` and its handlers; it has a `wprobe.manifest` section.
#
#   plugins/build.sh [OUT_DIR]
#
# OUT_DIR: the first argument, else $WPROBE_PLUGIN_OUT, else target/plugins
# in the repository. It receives NAME.rust.wasm and NAME.c.wasm for each
# example (count, args, latency, mallocsize, strings); intermediate files go
# to OUT_DIR/.build.
#
# Tools, all Debian packages, installed with apt-get when missing (which
# needs root; `apt-get update` runs only when an install fails without it):
#   C     clang, lld (wasm-ld), wasi-libc, libclang-rt-dev-wasm32
#   Rust  rustc, libstd-rust-dev-wasm32 (Debian's rustc 1.63 and its wasm32
#         standard library; rustup's rustc usually has no wasm32 target)
#   check wabt (wasm-objdump)
# Overrides: WPROBE_RUSTC (default /usr/bin/rustc), WPROBE_CLANG (default
# clang), WPROBE_WASI_SYSROOT (a wasi-libc sysroot for clang, when clang
# does not find one by itself).
#
# Any failure stops the script with a message and a non-zero exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${WPROBE_PLUGIN_OUT:-$root/target/plugins}}"
rustc="${WPROBE_RUSTC:-/usr/bin/rustc}"
clang="${WPROBE_CLANG:-clang}"

# Each example and the handlers it must export (the host calls a plugin
# only for the kinds it has handlers for).
examples=(
    "count:wprobe_on_entry"
    "args:wprobe_on_entry"
    "latency:wprobe_on_entry,wprobe_on_return"
    "mallocsize:wprobe_on_entry"
    "strings:wprobe_init,wprobe_on_entry"
)

die() {
    echo "plugins/build.sh: $*" >&2
    exit 1
}

# --- Tools -----------------------------------------------------------------

packages=(clang lld wasi-libc libclang-rt-dev-wasm32 rustc libstd-rust-dev-wasm32 wabt)

install_missing() {
    local missing=()
    if command -v dpkg >/dev/null 2>&1; then
        local p
        for p in "${packages[@]}"; do
            dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
        done
    else
        # Not Debian: only say which tools are absent.
        local t
        for t in "$clang" wasm-ld wasm-objdump "$rustc"; do
            command -v "$t" >/dev/null 2>&1 || missing+=("$t")
        done
        [ ${#missing[@]} -eq 0 ] && return 0
        die "missing ${missing[*]} and no dpkg to install them; install clang, lld, wasi-libc, rustc with a wasm32-wasi standard library and wabt"
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    # As tests/run-all.sh does: root installs, anyone else through sudo
    # (without a password prompt), or is told what to run.
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
        fi
    fi
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; then
        echo "apt-get install failed; updating the package lists and trying again"
        "${sudo[@]}" apt-get update -q >/dev/null
        "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    fi
}

install_missing
command -v "$clang" >/dev/null 2>&1 || die "no C compiler \`$clang\` (set WPROBE_CLANG)"
command -v wasm-objdump >/dev/null 2>&1 || die "no wasm-objdump (package wabt)"
command -v "$rustc" >/dev/null 2>&1 ||
    die "no rustc at $rustc (set WPROBE_RUSTC to a rustc with a wasm32-wasi standard library)"

# The Rust target: wasm32-wasi up to Rust 1.77, wasm32-wasip1 after.
sysroot="$("$rustc" --print sysroot)"
target=""
for t in wasm32-wasip1 wasm32-wasi; do
    if [ -d "$sysroot/lib/rustlib/$t/lib" ]; then
        target="$t"
        break
    fi
done
[ -n "$target" ] ||
    die "$rustc ($("$rustc" --version)) has no wasm32-wasi standard library in $sysroot/lib/rustlib; install libstd-rust-dev-wasm32 or set WPROBE_RUSTC"

clang_sysroot=()
[ -n "${WPROBE_WASI_SYSROOT:-}" ] && clang_sysroot=("--sysroot=$WPROBE_WASI_SYSROOT")

echo "rust: $("$rustc" --version) --target $target"
echo "c:    $("$clang" --version | head -n 1) --target wasm32-wasi"
echo "out:  $out"

# --- Build -----------------------------------------------------------------

build="$out/.build"
mkdir -p "$out" "$build"

# Size over speed (handlers are small; modules load faster), no unwinding
# (a panic traps, which the host counts as a fault), no debug info.
rust_flags=(--edition 2021 --target "$target" -C opt-level=s -C panic=abort -D warnings)

sdk="$build/libwprobe_plugin_sdk.rlib"
"$rustc" "${rust_flags[@]}" --crate-type rlib --crate-name wprobe_plugin_sdk \
    -o "$sdk" "$root/plugin-sdk/src/lib.rs" || die "the SDK did not build"

built=()
for ex in "${examples[@]}"; do
    name="${ex%%:*}"
    "$rustc" "${rust_flags[@]}" --crate-type cdylib --crate-name "$name" \
        -C lto -C codegen-units=1 -C strip=debuginfo \
        --extern wprobe_plugin_sdk="$sdk" -L "$build" \
        -o "$out/$name.rust.wasm" "$root/plugins/rust/$name.rs" ||
        die "plugins/rust/$name.rs did not build"
    "$clang" --target=wasm32-wasi "${clang_sysroot[@]}" -mexec-model=reactor -O2 -std=c11 \
        -Wall -Wextra -Werror -I "$root/plugin-sdk/c" -Wl,--strip-debug \
        -o "$out/$name.c.wasm" "$root/plugins/c/$name.c" ||
        die "plugins/c/$name.c did not build"
    built+=("$name.rust.wasm:${ex#*:}" "$name.c.wasm:${ex#*:}")
done

# --- Check -----------------------------------------------------------------

# The payload of custom section `name` of module $1, from wasm-objdump's
# section offsets (the section starts with the name's length and the name).
custom_section() {
    local wasm="$1" name="$2" line start end skip
    line="$(wasm-objdump -h "$wasm" | grep -F "\"$name\"")" || return 1
    start=$(($(sed -E 's/.*start=(0x[0-9a-f]+).*/\1/' <<<"$line")))
    end=$(($(sed -E 's/.*end=(0x[0-9a-f]+).*/\1/' <<<"$line")))
    skip=$((start + 1 + ${#name}))
    # head reads the file itself, so no stage of the pipe stops early
    # (a SIGPIPE would fail it under pipefail).
    head -c "$end" "$wasm" | tail -c "$((end - skip))"
}

check() {
    local wasm="$1" handlers="$2" dump modules exports want e manifest
    dump="$(wasm-objdump -x "$wasm")" || die "wasm-objdump cannot read $wasm"

    # Import lines end in `<- module.field`.
    modules="$(grep -oE '<- [^ .]+\.' <<<"$dump" | sed -E 's/<- (.*)\./\1/' | sort -u | tr '\n' ' ')"
    for m in $modules; do
        case "$m" in
        wprobe | wasi_snapshot_preview1) ;;
        *) die "$wasm imports from module \`$m\`; the host refuses any but wprobe and wasi_snapshot_preview1" ;;
        esac
    done

    # Export lines end in `-> "name"`.
    exports="$(grep -oE -- '-> "[^"]+"' <<<"$dump" | sed -E 's/-> "(.*)"/\1/' | sort | tr '\n' ' ')"
    want="memory wprobe_abi_version wprobe_alloc ${handlers//,/ }"
    for e in $want; do
        grep -qw -- "$e" <<<"$exports" || die "$wasm does not export $e (exports: $exports)"
    done
    for e in $exports; do
        case "$e" in
        wprobe_on_*) grep -qw -- "$e" <<<"$want" || die "$wasm exports $e, which it should not" ;;
        esac
    done

    manifest="$(custom_section "$wasm" wprobe.manifest)" ||
        die "$wasm has no wprobe.manifest custom section"
    grep -qE '"abi": *1[,} ]' <<<"$manifest" || die "$wasm: the manifest does not say \"abi\": 1: $manifest"

    printf '%-22s %7s bytes  imports: %-35s exports: %s\n' \
        "$(basename "$wasm")" "$(wc -c <"$wasm")" "${modules% }" "${exports% }"
    printf '%-22s manifest: %s\n' "" "$manifest"
}

echo
for b in "${built[@]}"; do
    check "$out/${b%%:*}" "${b#*:}"
done
echo
echo "built ${#built[@]} plugins into $out"
