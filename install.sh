#!/usr/bin/env bash
# Build orch from this checkout and install it as /usr/local/bin/orch.
#
#   ./install.sh            then   sudo orch server
#
# Needs a Rust toolchain (https://rustup.rs), a C compiler and libseccomp
# (apt-get install gcc pkg-config libseccomp-dev).
# A later release adds downloads of prebuilt binaries and a systemd unit.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust from https://rustup.rs, then run ./install.sh again" >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "error: no C compiler found (needed for the bundled SQLite); run: sudo apt-get install gcc" >&2
    exit 1
fi

if ! pkg-config --exists libseccomp 2>/dev/null; then
    echo "error: libseccomp not found (containers get seccomp filters); run: sudo apt-get install pkg-config libseccomp-dev" >&2
    exit 1
fi

cargo build --release --locked
dest=${ORCH_INSTALL_DIR:-/usr/local/bin}
sudo_cmd=""
if [ ! -w "$dest" ]; then
    sudo_cmd="sudo"
fi
$sudo_cmd install -m 0755 target/release/orch "$dest/orch"
echo "installed $dest/orch: $("$dest/orch" version | head -n1)"
echo "start the server with: sudo orch server"
