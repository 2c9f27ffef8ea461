//! `install.sh` as a new user runs it, on a machine of its own: a network
//! namespace and a private mount namespace in which /etc, /usr/local/bin,
//! /var/lib, /var/log and /run are overlays whose writes go to a scratch
//! tmpfs, so the real machine is untouched and what orch leaves behind is
//! exactly what remains in the overlays' upper directories. Needs root.

mod support;

use std::process::Command;

use support::Netns;

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// Runs inside the namespaces; `$1` is the scratch directory.
const SCRIPT: &str = r#"
set -eu
scratch=$1
mount -t tmpfs tmpfs "$scratch"
# Directories that were there before (an overlay copies a directory up
# when something is created in it; that copy is not a leftover).
find /etc /usr/local/bin /var/lib /var/log /run -xdev -type d 2>/dev/null >"$scratch/dirs-before"
for d in /etc /usr/local/bin /var/lib /var/log /run; do
    n=$(echo "$d" | tr / _)
    mkdir -p "$scratch/u$n" "$scratch/w$n"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$scratch/u$n,workdir=$scratch/w$n" "$d"
done
state() {
    echo "links: $(ip -o link | cut -d: -f2 | tr -d ' ' | sort | tr '\n' ' ')"
    echo "nft: $(nft list tables 2>/dev/null | sort | tr '\n' ' ')"
    # Below the overlays (other tests' mounts elsewhere come and go).
    echo "mounts: $(awk '{print $5}' /proc/self/mountinfo | grep -E '^/(etc|usr/local/bin|var/lib|var/log|run)/' | grep -v '^/run/netns' | sort | tr '\n' ' ')"
    echo "cgroups: $(ls -d /sys/fs/cgroup/*/orch /sys/fs/cgroup/orch 2>/dev/null | tr '\n' ' ')"
}
before=$(state)
# Whatever happens, nothing of the installed orch outlives the test.
trap '[ -x /usr/local/bin/orch-killall.sh ] && /usr/local/bin/orch-killall.sh >/dev/null 2>&1' EXIT
k() { kubectl --kubeconfig /etc/orch/orch.yaml --cache-dir "$scratch/kube-cache" "$@"; }
wait_ready() {
    i=0
    until k get node inst -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; do
        i=$((i + 1))
        if [ $i -gt 120 ]; then
            echo "node inst not Ready after 60 s"
            tail -n 30 /var/log/orch.log
            exit 1
        fi
        sleep 0.5
    done
}
export ORCH_BINARY INSTALL_ORCH_INIT=none
export INSTALL_ORCH_EXEC="--bind-address 127.0.0.1 --node-name inst --node-ip 127.0.0.1"
sh "$INSTALL"
test -x /usr/local/bin/orch
test -x /usr/local/bin/orch-killall.sh
test -x /usr/local/bin/orch-uninstall.sh
wait_ready
echo "ready: $(k get nodes --no-headers)"
first=$(cat /run/orch.pid)
# Again: an upgrade in place restarts it.
sh "$INSTALL"
second=$(cat /run/orch.pid)
[ "$first" != "$second" ] || { echo "not restarted"; exit 1; }
! kill -0 "$first" 2>/dev/null || { echo "the old server still runs"; exit 1; }
wait_ready
echo "upgraded"
# An agent joining it with its token (as a second machine would).
ORCH_URL=https://127.0.0.1:6443 ORCH_TOKEN=$(cat /var/lib/orch/server/token) \
    INSTALL_ORCH_EXEC="--node-name second --node-ip 127.0.0.1 --data-dir /var/lib/orch/second" \
    sh "$INSTALL"
i=0
until k get node second -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; do
    i=$((i + 1))
    if [ $i -gt 120 ]; then
        echo "node second not Ready after 60 s"
        tail -n 30 /var/log/orch-agent.log
        exit 1
    fi
    sleep 0.5
done
echo "agent joined"
# The service files as written for systemd and OpenRC (neither runs here,
# so they are only checked, not started).
INSTALL_ORCH_INIT=systemd INSTALL_ORCH_SKIP_START=true sh "$INSTALL" 2>/dev/null
unit=/etc/systemd/system/orch.service
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "systemd-analyze: $out"; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze: $out"; exit 1; }
for line in Type=notify Delegate=yes KillMode=process Restart=always LimitNOFILE=1048576; do
    grep -qx "$line" "$unit" || { echo "$unit lacks $line"; exit 1; }
done
INSTALL_ORCH_INIT=openrc INSTALL_ORCH_SKIP_START=true sh "$INSTALL" 2>/dev/null
sh -n /etc/init.d/orch || { echo "/etc/init.d/orch is not valid sh"; exit 1; }
echo "services written"
/usr/local/bin/orch-uninstall.sh
after=$(state)
if [ "$before" != "$after" ]; then
    echo "left behind:"
    echo "before: $before"
    echo "after:  $after"
    exit 1
fi
for p in /proc/[0-9]*; do
    case "$(readlink "$p/exe" 2>/dev/null)" in
        /usr/local/bin/orch*) echo "process ${p#/proc/} left"; exit 1 ;;
    esac
done
left=""
for entry in $(cd "$scratch" && find u_* -mindepth 1); do
    top=${entry%%/*}
    path=$(echo "${top#u}" | tr _ /)/${entry#*/}
    case "$path" in
        /usr/local/bin/*) path=/usr/local/bin/${entry#u_usr_local_bin/} ;;
        /var/lib/*) path=/var/lib/${entry#u_var_lib/} ;;
        /var/log/*) path=/var/log/${entry#u_var_log/} ;;
        /run/systemd/*) continue ;; # systemd-analyze's own
    esac
    if [ -d "$scratch/$entry" ] && [ ! -L "$scratch/$entry" ] && grep -qx "$path" "$scratch/dirs-before"; then
        continue
    fi
    left="$left $path"
done
[ -z "$left" ] || { echo "files left:$left"; exit 1; }
echo "clean"
"#;

#[test]
fn install_sh_installs_starts_upgrades_and_uninstalls_without_a_trace() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: install.sh installs a service, a binary and network namespaces; run the suite as root (sudo ./scripts/test.sh)"
    );
    let install = concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh");
    // shellcheck, when it is installed (scripts/test.sh installs it).
    if Command::new("shellcheck").arg("--version").output().is_ok() {
        let out = Command::new("shellcheck")
            .args(["-s", "sh", install])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/build-image.sh"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shellcheck install.sh examples/build-image.sh:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let netns = Netns::new("install");
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", netns.0))
        .args(["unshare", "--mount", "--propagation", "private"])
        .args(["sh", "-c", SCRIPT, "sh"])
        .arg(scratch.path())
        .env("INSTALL", install)
        .env("ORCH_BINARY", ORCH)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("clean"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("ready: inst") && stdout.contains("Ready"),
        "{stdout}"
    );
    assert!(stdout.contains("upgraded"), "{stdout}");
    assert!(stdout.contains("agent joined"), "{stdout}");
    assert!(stdout.contains("services written"), "{stdout}");
    assert!(stdout.contains("orch server is ready"), "{stdout}");
    assert!(!stderr.contains("error"), "{stderr}");
}
