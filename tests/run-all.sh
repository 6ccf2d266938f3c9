#!/usr/bin/env bash
# The one command that runs every test of wprobe on a fresh machine.
# It installs what the machine lacks (a C compiler for the fixtures, the
# wasm toolchains for the plugins, Chromium and playwright-core for the
# browser test), mounts tracefs for the kernel-uprobe cross-checks, then
# runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v objcopy >/dev/null || need+=(binutils)
# The web UI's browser test: Debian's Chromium, driven by playwright-core
# from npm with the machine's Node.js.
command -v chromium >/dev/null || need+=(chromium)
command -v npm >/dev/null || need+=(nodejs npm)
# schemathesis (tests/api_schema.rs) runs in a virtualenv: Python 3 with venv.
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# Kernel uprobes are the oracle for hit counts; they live in tracefs.
if [ ! -e /sys/kernel/tracing/uprobe_events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

# The example plugins (wasm32, with Debian's clang and rustc 1.63; the
# script installs them when missing): the plugin tests run them.
bash plugins/build.sh
# `wprobe demo`'s committed plugins are those sources built, byte for byte.
bash plugins/check-demo.sh

# playwright-core, as package-lock.json pins it (no browser download:
# the test uses /usr/bin/chromium).
npm ci --prefix web-ui/tests --no-audit --no-fund

# schemathesis, as tests/schemathesis/install.sh pins it, in target/.
bash tests/schemathesis/install.sh

cargo build --workspace --all-targets
# The property tests run here with their own bounded case counts; set
# PROPTEST_CASES for a longer run (docs/testing.md).
cargo test --workspace -- --test-threads=2
