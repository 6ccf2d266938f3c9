#!/usr/bin/env bash
# Installs schemathesis (PyPI), at the version pinned here, in a virtualenv
# of its own under target/, for tests/api_schema.rs. Does nothing when that
# version is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=4.32.5
venv=target/schemathesis-venv

if "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $VERSION"; then
    exit 0
fi
echo "installing schemathesis $VERSION in $venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
"$venv/bin/schemathesis" --version
