//! `install.sh`, building from the checkout on Debian/Ubuntu, installs with
//! apt-get the C build dependencies that are missing — and only those —
//! before `cargo build`. Runs the real script against stub `apt-get`,
//! `cargo`, `cc`, `make` and `pkg-config` on a PATH of its own; the stub
//! cargo fails, so nothing is built or installed. Needs root (install.sh
//! refuses to run without it).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Tools install.sh uses before the build, linked into the stub PATH.
const TOOLS: &[&str] = &[
    "id", "dirname", "mkdir", "mktemp", "rm", "tr", "grep", "ls", "cut", "cat", "chmod",
];

fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run install.sh with `present` of the build tools (`cc`, `make`) and
/// libraries pkg-config knows; what apt-get was asked, and the output.
fn run(present: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in TOOLS {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    let log = dir.path().join("apt-get.log");
    stub(&bin, "apt-get", &format!("echo \"$*\" >>{}", log.display()));
    stub(&bin, "cargo", "echo stub cargo; exit 1");
    for tool in ["cc", "make"] {
        if present.contains(&tool) {
            stub(&bin, tool, "exit 0");
        }
    }
    let libraries: Vec<&str> = present
        .iter()
        .copied()
        .filter(|p| !["cc", "make"].contains(p))
        .collect();
    stub(
        &bin,
        "pkg-config",
        &format!(
            "case \" {} \" in *\" $2 \"*) exit 0 ;; esac; exit 1",
            libraries.join(" ")
        ),
    );
    let out = Command::new("/bin/sh")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh"))
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", dir.path())
        .env("INSTALL_ORCH_BIN_DIR", dir.path().join("install"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the stub build cannot succeed: {text}"
    );
    (std::fs::read_to_string(&log).unwrap_or_default(), text)
}

#[test]
fn install_sh_installs_only_the_missing_build_dependencies() {
    assert!(
        rustix::process::geteuid().is_root(),
        "needs root: install.sh refuses to run without it"
    );
    let (apt, text) = run(&["zlib"]);
    assert_eq!(
        apt.trim(),
        "install -y -qq gcc make libseccomp-dev libelf-dev",
        "{text}"
    );
    // The stub apt-get installed nothing: the checks after it still say
    // what is missing, and nothing is built.
    assert!(
        text.contains("no C compiler") && !text.contains("stub cargo"),
        "{text}"
    );
    let (apt, text) = run(&["cc", "make", "libseccomp", "libelf", "zlib"]);
    assert_eq!(apt, "", "nothing missing, nothing installed: {text}");
    assert!(text.contains("stub cargo"), "then it builds: {text}");
}
