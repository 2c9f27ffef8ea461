#!/bin/sh
# Install orch and start it as a service.
#
#   sudo sh install.sh                                             # a server (and this machine as its node)
#   sudo ORCH_URL=https://SERVER:6443 ORCH_TOKEN=K10... sh install.sh   # an agent joining SERVER
#
# The binary comes from this source checkout (cargo build --release, which
# needs Rust, gcc, make, pkg-config, libseccomp-dev, libelf-dev and zlib1g-dev;
# on Debian/Ubuntu the missing ones are installed with apt-get), from
# ORCH_BINARY (a file), or from ORCH_DOWNLOAD_URL, checked against
# ORCH_DOWNLOAD_SHA256.
#
# Environment:
#   ORCH_URL, ORCH_TOKEN       install an agent that joins ORCH_URL with ORCH_TOKEN
#   INSTALL_ORCH_EXEC          extra flags for `orch server` / `orch agent`
#   INSTALL_ORCH_SKIP_START    "true": install, but do not start
#   INSTALL_ORCH_BIN_DIR       where orch and its scripts go (/usr/local/bin)
#   INSTALL_ORCH_INIT          systemd, openrc or none (default: what this machine runs)
#
# Running it again upgrades in place. orch-killall.sh stops everything;
# orch-uninstall.sh removes everything.
set -eu

info() { echo "[orch] $*"; }
warn() { echo "[orch] warning: $*" >&2; }
fatal() {
    echo "[orch] error: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fatal "run as root: sudo sh install.sh"

BIN_DIR=${INSTALL_ORCH_BIN_DIR:-/usr/local/bin}
EXEC_FLAGS=${INSTALL_ORCH_EXEC:-}
ROLE=server
SERVICE=orch
if [ -n "${ORCH_URL:-}" ]; then
    ROLE=agent
    SERVICE=orch-agent
    [ -n "${ORCH_TOKEN:-}" ] || fatal "ORCH_URL is set but ORCH_TOKEN is not: copy /var/lib/orch/server/token from the server, or make one there with 'orch token create'"
fi
LOG=/var/log/$SERVICE.log
PIDFILE=/run/$SERVICE.pid
SRC_DIR=$(cd "$(dirname "$0")" && pwd)

# --- the binary -------------------------------------------------------------

find_cargo() {
    for c in cargo "${HOME:-/root}/.cargo/bin/cargo" /root/.cargo/bin/cargo; do
        if command -v "$c" >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    if [ -n "${SUDO_USER:-}" ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -x "$home/.cargo/bin/cargo" ]; then
            echo "$home/.cargo/bin/cargo"
            return 0
        fi
    fi
    return 1
}

# The Debian/Ubuntu packages the build needs that are not here yet: a C
# compiler (the bundled SQLite), make (libbpf's build), pkg-config and the
# libraries libcontainer (libseccomp) and libbpf (libelf, zlib) link.
missing_build_packages() {
    command -v cc >/dev/null 2>&1 || echo gcc
    command -v make >/dev/null 2>&1 || echo make
    command -v pkg-config >/dev/null 2>&1 || echo pkg-config
    has_library libseccomp libseccomp-dev || echo libseccomp-dev
    has_library libelf libelf-dev || echo libelf-dev
    has_library zlib zlib1g-dev || echo zlib1g-dev
}

# Is library $1 (package $2) installed? pkg-config's answer when it is
# here, else dpkg's.
has_library() {
    if command -v pkg-config >/dev/null 2>&1; then
        pkg-config --exists "$1" 2>/dev/null
    else
        # shellcheck disable=SC2016 # ${Status} is dpkg-query's, not the shell's
        dpkg-query -W -f='${Status}' "$2" 2>/dev/null | grep -q 'ok installed'
    fi
}

install_build_packages() {
    command -v apt-get >/dev/null 2>&1 || return 0
    packages=$(missing_build_packages | tr '\n' ' ')
    [ -n "${packages% }" ] || return 0
    info "installing the build dependencies: $packages"
    # shellcheck disable=SC2086 # one word per package
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null; then
        # A fresh machine may have no package lists yet.
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || warn "apt-get update failed"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null ||
            warn "apt-get install $packages failed"
    fi
}

build_from_checkout() {
    if cargo=$(find_cargo); then
        install_build_packages
        command -v cc >/dev/null 2>&1 || fatal "no C compiler (the bundled SQLite needs one): apt-get install gcc"
        pkg-config --exists libseccomp 2>/dev/null || fatal "libseccomp not found: apt-get install pkg-config libseccomp-dev"
        pkg-config --exists libelf zlib 2>/dev/null || fatal "libelf or zlib not found (libbpf, for cgroup v2 device rules, links them): apt-get install libelf-dev zlib1g-dev"
        command -v make >/dev/null 2>&1 || fatal "make not found (libbpf's build uses it): apt-get install make"
        info "building orch in $SRC_DIR (cargo build --release)"
        (cd "$SRC_DIR" && "$cargo" build --release --locked) || fatal "the build failed (see above)"
    elif [ -x "$SRC_DIR/target/release/orch" ]; then
        warn "cargo not found; installing the existing $SRC_DIR/target/release/orch"
    else
        fatal "cargo not found: install Rust from https://rustup.rs, or set ORCH_DOWNLOAD_URL and ORCH_DOWNLOAD_SHA256"
    fi
}

fetch_binary() {
    target=$1
    if [ -n "${ORCH_DOWNLOAD_URL:-}" ]; then
        [ -n "${ORCH_DOWNLOAD_SHA256:-}" ] || fatal "ORCH_DOWNLOAD_URL needs ORCH_DOWNLOAD_SHA256 (the binary's sha256)"
        info "downloading $ORCH_DOWNLOAD_URL"
        if command -v curl >/dev/null 2>&1; then
            curl -fsSL -o "$target" "$ORCH_DOWNLOAD_URL" || fatal "cannot download $ORCH_DOWNLOAD_URL"
        elif command -v wget >/dev/null 2>&1; then
            wget -qO "$target" "$ORCH_DOWNLOAD_URL" || fatal "cannot download $ORCH_DOWNLOAD_URL"
        else
            fatal "neither curl nor wget is installed"
        fi
        echo "$ORCH_DOWNLOAD_SHA256  $target" | sha256sum -c - >/dev/null 2>&1 ||
            fatal "the download's sha256 is not $ORCH_DOWNLOAD_SHA256: refusing to install it"
    elif [ -n "${ORCH_BINARY:-}" ]; then
        [ -f "$ORCH_BINARY" ] || fatal "ORCH_BINARY=$ORCH_BINARY is not a file"
        cp "$ORCH_BINARY" "$target"
    elif [ -f "$SRC_DIR/Cargo.toml" ]; then
        build_from_checkout
        cp "$SRC_DIR/target/release/orch" "$target"
    else
        fatal "no orch binary: run this from an orch source checkout, or set ORCH_DOWNLOAD_URL and ORCH_DOWNLOAD_SHA256"
    fi
    chmod 0755 "$target"
    "$target" version >/dev/null 2>&1 || fatal "the orch binary does not run on this machine ($(uname -m))"
}

# --- the kernel and nftables ---------------------------------------------------

check_kernel() {
    if ! grep -qw overlay /proc/filesystems; then
        modprobe overlay 2>/dev/null || true
        grep -qw overlay /proc/filesystems || fatal "this kernel has no overlay file system (containers' roots need it): load the overlay module or use a kernel with CONFIG_OVERLAY_FS"
    fi
    if ! grep -q cgroup /proc/filesystems || [ -z "$(ls /sys/fs/cgroup 2>/dev/null)" ]; then
        fatal "no cgroups mounted at /sys/fs/cgroup (pods' CPU and memory limits need them)"
    fi
    if [ ! -d /sys/module/vxlan ] && ! modprobe vxlan 2>/dev/null; then
        warn "the kernel has no vxlan module: pods on different nodes will not reach each other"
    fi
    if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && ! modprobe br_netfilter 2>/dev/null; then
        warn "the kernel has no br_netfilter module: pods cannot reach Services whose endpoints are on their own node"
    fi
}

check_nftables() {
    if ! command -v nft >/dev/null 2>&1; then
        warn "nft is not installed: Services will not work until nftables is installed"
    elif ! nft list tables >/dev/null 2>&1; then
        warn "nftables does not work on this kernel (nf_tables missing?): Services will not work"
    fi
}

install_nftables() {
    command -v nft >/dev/null 2>&1 && return 0
    info "installing nftables"
    if command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null || warn "apt-get install nftables failed"
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y -q nftables || warn "dnf install nftables failed"
    elif command -v yum >/dev/null 2>&1; then
        yum install -y -q nftables || warn "yum install nftables failed"
    elif command -v apk >/dev/null 2>&1; then
        apk add --no-cache nftables || warn "apk add nftables failed"
    elif command -v zypper >/dev/null 2>&1; then
        zypper -n -q install nftables || warn "zypper install nftables failed"
    else
        warn "nft is missing and no known package manager is here: install nftables"
    fi
}

# --- the scripts ---------------------------------------------------------------

write_killall() {
    cat >"$BIN_DIR/orch-killall.sh" <<EOF
#!/bin/sh
# Stop orch, its shims and containers; unmount what they mounted; remove
# pod network namespaces, orch0, the VXLAN device and orch's nft tables.
# Data stays (orch-uninstall.sh removes it).
set -u
[ "\$(id -u)" -eq 0 ] || { echo "run as root: sudo \$0" >&2; exit 1; }
for s in orch orch-agent; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop "\$s" 2>/dev/null
    fi
    if command -v rc-service >/dev/null 2>&1 && [ -f "/etc/init.d/\$s" ]; then
        rc-service "\$s" stop >/dev/null 2>&1
    fi
    if [ -f "/run/\$s.pid" ]; then
        kill "\$(cat "/run/\$s.pid")" 2>/dev/null
        rm -f "/run/\$s.pid"
    fi
done
# Every process of the orch binary: server, agent, shims.
orch_pids() {
    for p in /proc/[0-9]*; do
        case "\$(readlink "\$p/exe" 2>/dev/null)" in
            "$BIN_DIR/orch" | "$BIN_DIR/orch (deleted)") echo "\${p#/proc/}" ;;
        esac
    done
}
for pid in \$(orch_pids); do kill -TERM "\$pid" 2>/dev/null; done
sleep 1
for pid in \$(orch_pids); do kill -KILL "\$pid" 2>/dev/null; done
# Containers: everything in orch's cgroups, then the cgroups.
for root in /sys/fs/cgroup/*/orch /sys/fs/cgroup/orch; do
    [ -d "\$root" ] || continue
    find "\$root" -name cgroup.procs | while read -r procs; do
        while read -r pid; do kill -KILL "\$pid" 2>/dev/null; done <"\$procs"
    done
done
sleep 1
for root in /sys/fs/cgroup/*/orch /sys/fs/cgroup/orch; do
    [ -d "\$root" ] && find "\$root" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# Mounts (deepest first): pods' roots, volumes, namespace pins.
for dir in /var/lib/orch /run/orch; do
    awk -v d="\$dir" '\$5 == d || index(\$5, d "/") == 1 { print \$5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do umount -l "\$m" 2>/dev/null; done
done
# Networking (issue #7 creates these).
ip link delete orch0 2>/dev/null
ip link delete orch-vxlan 2>/dev/null
if command -v nft >/dev/null 2>&1; then
    for family in inet ip ip6; do nft delete table "\$family" orch 2>/dev/null; done
fi
exit 0
EOF
    chmod 0755 "$BIN_DIR/orch-killall.sh"

    cat >"$BIN_DIR/orch-uninstall.sh" <<EOF
#!/bin/sh
# Remove orch from this machine: stop it (orch-killall.sh), then the
# service, the binary, these scripts, its configuration, data and logs.
set -u
[ "\$(id -u)" -eq 0 ] || { echo "run as root: sudo \$0" >&2; exit 1; }
"$BIN_DIR/orch-killall.sh"
for s in orch orch-agent; do
    if [ -f "/etc/systemd/system/\$s.service" ]; then
        systemctl disable "\$s" >/dev/null 2>&1
        rm -f "/etc/systemd/system/\$s.service" "/etc/systemd/system/\$s.service.env"
        systemctl daemon-reload 2>/dev/null
    fi
    if [ -f "/etc/init.d/\$s" ]; then
        rc-update del "\$s" default >/dev/null 2>&1
        rm -f "/etc/init.d/\$s" "/etc/conf.d/\$s"
        rmdir /etc/conf.d 2>/dev/null
    fi
    rm -f "/var/log/\$s.log" "/run/\$s.pid"
done
rm -rf /var/lib/orch /run/orch /etc/orch /var/log/pods
rm -f "$BIN_DIR/orch" "$BIN_DIR/orch-killall.sh" "$BIN_DIR/orch-uninstall.sh"
echo "orch is removed"
EOF
    chmod 0755 "$BIN_DIR/orch-uninstall.sh"
}

# --- the service ---------------------------------------------------------------

init_system() {
    if [ -n "${INSTALL_ORCH_INIT:-}" ]; then
        echo "$INSTALL_ORCH_INIT"
    elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        echo systemd
    elif command -v openrc-run >/dev/null 2>&1 && [ -d /etc/init.d ]; then
        echo openrc
    else
        echo none
    fi
}

write_env() {
    # The agent's server and token, readable by root only.
    file=$1
    prefix=$2
    (
        umask 077
        : >"$file"
        if [ "$ROLE" = agent ]; then
            echo "${prefix}ORCH_URL='$ORCH_URL'" >>"$file"
            echo "${prefix}ORCH_TOKEN='$ORCH_TOKEN'" >>"$file"
        fi
    )
}

install_systemd() {
    write_env "/etc/systemd/system/$SERVICE.service.env" ""
    cat >"/etc/systemd/system/$SERVICE.service" <<EOF
[Unit]
Description=orch $ROLE, a small Kubernetes
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
EnvironmentFile=-/etc/systemd/system/$SERVICE.service.env
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$BIN_DIR/orch $ROLE $EXEC_FLAGS
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s

[Install]
WantedBy=multi-user.target
EOF
    if [ ! -d /run/systemd/system ]; then
        warn "systemd is not running here: /etc/systemd/system/$SERVICE.service is written but not enabled"
        return 0
    fi
    systemctl daemon-reload
    systemctl enable "$SERVICE" >/dev/null 2>&1
    [ "${INSTALL_ORCH_SKIP_START:-}" = true ] && return 0
    info "starting $SERVICE (systemd)"
    systemctl restart "$SERVICE"
}

install_openrc() {
    mkdir -p /etc/conf.d
    write_env "/etc/conf.d/$SERVICE" "export "
    cat >"/etc/init.d/$SERVICE" <<EOF
#!/sbin/openrc-run
description="orch $ROLE, a small Kubernetes"
command="$BIN_DIR/orch"
command_args="$ROLE $EXEC_FLAGS"
command_background=true
supervisor=supervise-daemon
respawn_delay=5
pidfile="/run/$SERVICE.pid"
output_log="$LOG"
error_log="$LOG"
rc_ulimit="-n 1048576"

depend() {
    need net
    after firewall
}

start_pre() {
    modprobe overlay 2>/dev/null || true
}
EOF
    chmod 0755 "/etc/init.d/$SERVICE"
    if ! command -v rc-update >/dev/null 2>&1; then
        warn "OpenRC is not running here: /etc/init.d/$SERVICE is written but not added"
        return 0
    fi
    rc-update add "$SERVICE" default >/dev/null 2>&1
    [ "${INSTALL_ORCH_SKIP_START:-}" = true ] && return 0
    info "starting $SERVICE (OpenRC)"
    rc-service "$SERVICE" restart
}

start_background() {
    # No init system (a container, a bare VM): run it in the background.
    if [ -f "$PIDFILE" ]; then
        old=$(cat "$PIDFILE")
        kill "$old" 2>/dev/null || true
        i=0
        while kill -0 "$old" 2>/dev/null && [ $i -lt 40 ]; do
            i=$((i + 1))
            sleep 0.25
        done
        kill -9 "$old" 2>/dev/null || true
        rm -f "$PIDFILE"
    fi
    [ "${INSTALL_ORCH_SKIP_START:-}" = true ] && return 0
    info "starting orch $ROLE in the background (no init system); log: $LOG"
    if [ "$ROLE" = agent ]; then
        export ORCH_URL ORCH_TOKEN
    fi
    # shellcheck disable=SC2086 # the extra flags are meant to split
    nohup "$BIN_DIR/orch" "$ROLE" $EXEC_FLAGS >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
}

wait_ready() {
    [ "${INSTALL_ORCH_SKIP_START:-}" = true ] && return 0
    [ "$ROLE" = server ] || return 0
    i=0
    while [ $i -lt 60 ]; do
        if [ -s /etc/orch/orch.yaml ] && grep -q "orch server ready" "$LOG" 2>/dev/null; then
            info "orch server is ready: export KUBECONFIG=/etc/orch/orch.yaml; kubectl get nodes"
            return 0
        fi
        i=$((i + 1))
        sleep 0.5
    done
    warn "orch server is not ready after 30 s; see $LOG"
}

# --- main ------------------------------------------------------------------------

check_kernel
mkdir -p "$BIN_DIR"
tmp=$(mktemp "$BIN_DIR/.orch.XXXXXX")
trap 'rm -f "$tmp"' EXIT
fetch_binary "$tmp"
mv -f "$tmp" "$BIN_DIR/orch"
info "installed $BIN_DIR/orch: $("$BIN_DIR/orch" version | head -n 1)"
install_nftables
check_nftables
write_killall
init=$(init_system)
case "$init" in
    systemd) install_systemd ;;
    openrc) install_openrc ;;
    none) start_background ;;
    *) fatal "INSTALL_ORCH_INIT=$init: use systemd, openrc or none" ;;
esac
[ "$init" = none ] && wait_ready
exit 0
