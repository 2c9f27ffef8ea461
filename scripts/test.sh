#!/usr/bin/env bash
# Run orch's whole test suite, installing what the tests need first.
#
#   sudo ./scripts/test.sh
#
# Later suites (agents, containers, nftables) need root, network namespaces
# and the Debian packages below; the script installs the packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian/Ubuntu packages the tests use: gcc builds the bundled SQLite and
# zstd; openssl makes the keys and certificate requests of tests/rbac.rs;
# libseccomp-dev and pkg-config link the container runtime, libelf-dev and
# zlib1g-dev the libbpf it builds (cgroup v2 device rules); curl sends raw HTTP requests in tests/api_errors.rs; busybox-static,
# umoci and skopeo build and write the test images (tests/images.rs);
# docker-registry serves them to the pulls in tests/agent_images.rs, whose private
# registry's htpasswd file apache2-utils writes; shellcheck checks install.sh
# and nftables is what install.sh would otherwise install (tests/install.rs);
# procps gives pgrep, which tests/agent_security.rs looks for leftover processes with;
# qemu-system-x86 boots the kernel tests/cgroup_v2.rs runs pods on (cgroup v2,
# which this kind of machine's v1 controllers rule out), kmod's depmod indexes
# that kernel's modules.
packages=(openssl gcc pkg-config libseccomp-dev libelf-dev zlib1g-dev make curl busybox-static umoci skopeo docker-registry apache2-utils shellcheck nftables procps qemu-system-x86 kmod)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages ${missing[*]}; run this script as root (sudo) so it can install them" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Debian's kernel, unpacked (not installed) for tests/cgroup_v2.rs's VM.
vm_kernel=target/vm-kernel
if ! ls "$vm_kernel"/lib/modules/*/modules.dep >/dev/null 2>&1; then
    echo "== downloading Debian's kernel for the cgroup v2 VM test"
    kernel_package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
    pkg=$(kernel_package)
    [ -n "$pkg" ] || { apt-get update -qq; pkg=$(kernel_package); }
    download=$(mktemp -d)
    (cd "$download" && apt-get download -qq "$pkg" 2>/dev/null) || { apt-get update -qq; (cd "$download" && apt-get download -qq "$pkg"); }
    rm -rf "$vm_kernel"
    mkdir -p "$vm_kernel"
    dpkg-deb -x "$download"/*.deb "$vm_kernel"
    rm -rf "$download"
    depmod -b "$vm_kernel" "$(basename "$vm_kernel"/lib/modules/*)"
fi

# The official Python client, for tests/python_client.rs.
if ! python3 -c "import kubernetes" >/dev/null 2>&1; then
    echo "== installing the Python kubernetes client"
    python3 -m pip install --quiet kubernetes
fi
# The API tests drive the real kubectl binaries (kubectl and kubectl.1.31…1.33
# beside it); they fail with a message naming what is missing.
command -v kubectl >/dev/null 2>&1 || echo "warning: kubectl is not on PATH; the kubectl tests will fail" >&2

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust from https://rustup.rs and run this script again" >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked
