//! The `orch` binary as a user runs it: version, usage errors, and the
//! server's start, refusal of a bad store, and clean stop on SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod support;

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

fn orch(args: &[&str]) -> Output {
    Command::new(ORCH)
        .args(args)
        .env_remove("ORCH_DATA_DIR")
        .output()
        .expect("run orch")
}

/// A join token of the right shape, for agents pointed at a server that
/// is not there: they get as far as their checks and stop.
fn agent_token() -> String {
    format!("K10{}::server:secret", "ab".repeat(32))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_prints_version_commit_and_target() {
    let out = orch(&["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("orch version v{} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let commit = text.split(['(', ')']).nth(1).unwrap();
    assert!(!commit.is_empty(), "commit missing: {text}");
    assert!(
        text.contains("target: x86_64") || text.contains("target: aarch64"),
        "{text}"
    );
}

/// A usage error is one line saying what is wrong, then the usage; exit 2.
fn assert_usage_error(args: &[&str], mentions: &str, usage: &str) {
    let out = orch(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "orch {args:?}: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "orch {args:?} printed:\n{err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(mentions),
        "{err}"
    );
    assert!(lines[1].starts_with(&format!("usage: {usage}")), "{err}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    assert_usage_error(&["server", "--bogus"], "'--bogus'", "orch server");
}

#[test]
fn misspelt_flag_names_the_right_one() {
    assert_usage_error(&["server", "--data-dri", "/x"], "--data-dir", "orch server");
}

#[test]
fn missing_flag_value_is_a_usage_error() {
    assert_usage_error(&["server", "--data-dir"], "--data-dir", "orch server");
}

#[test]
fn missing_required_flag_is_a_usage_error() {
    assert_usage_error(&["agent"], "--server", "orch agent");
}

#[test]
fn missing_subcommand_is_a_usage_error() {
    let out = orch(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage: orch"), "{}", stderr(&out));
}

#[test]
fn server_creates_its_store_and_stops_cleanly_on_sigterm() {
    let mut server = support::Cluster::start();
    let db = server.dir.path().join("server/db/state.db");
    assert!(db.exists(), "store file {} missing", db.display());
    let exit = server.terminate(support::wait::secs(30));
    assert!(
        exit.success(),
        "orch server exited with {exit} after SIGTERM"
    );
    // The file it left is a valid orch store.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(id, 0x6f72_6368);
}

#[test]
fn server_refuses_a_file_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server/db/state.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, b"not a database at all\n".repeat(50)).unwrap();
    let out = support::refused_server(&["--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot open ") && last.contains(&db.display().to_string()),
        "{err}"
    );
    assert!(last.contains("not a SQLite database"), "{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"not a database at all\n".repeat(50)
    );
}

/// Issue #21: a 0-byte state.db was adopted as a new, empty store.
#[test]
fn server_refuses_an_empty_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server/db/state.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, b"").unwrap();
    let out = support::refused_server(&["--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot open ")
            && last.contains(&db.display().to_string())
            && last.contains("the file is empty")
            && last.contains("remove it to start an empty store"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), b"", "the file is left alone");
}

/// Issue #21: a TTL past u64 seconds overflowed into a token valid for
/// about 17 hours; it is refused, in one line, before anything is read.
#[test]
fn token_create_refuses_an_out_of_range_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(ORCH)
        .args(["token", "create", "--ttl", "213503982334602d", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: invalid --ttl \"213503982334602d\": too long"),
        "{err}"
    );
}

#[test]
fn second_server_on_the_same_data_dir_is_refused() {
    let mut first = support::Cluster::start();
    let out = support::refused_server(&["--data-dir", first.dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use by another process"),
        "{}",
        stderr(&out)
    );
    assert!(first.running(), "the first server keeps running");
}

#[test]
fn certificate_rotate_renews_the_leaves_at_the_next_start() {
    let server = support::Cluster::start();
    let tls = server.dir.path().join("server/tls");
    let serving = std::fs::read_to_string(tls.join("serving.crt")).unwrap();
    let admin = std::fs::read_to_string(tls.join("admin.crt")).unwrap();
    let ca = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
    let data = server.dir.path().to_str().unwrap().to_owned();
    let (server, out) = server.restart_with(&[], |_| {
        orch(&["certificate", "rotate", "--data-dir", &data])
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restart orch"));
    // New leaves, the same CA (clients keep trusting it), and the admin
    // kubeconfig rewritten with the new client certificate works.
    assert_ne!(
        std::fs::read_to_string(tls.join("serving.crt")).unwrap(),
        serving
    );
    assert_ne!(
        std::fs::read_to_string(tls.join("admin.crt")).unwrap(),
        admin
    );
    assert_eq!(std::fs::read_to_string(tls.join("ca.crt")).unwrap(), ca);
    let backups: Vec<_> = std::fs::read_dir(&tls)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rotated-"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        std::fs::read_to_string(backups[0].path().join("serving.crt")).unwrap(),
        serving
    );
    server.ok("1.33", &["get", "namespaces"]);

    let empty = tempfile::tempdir().unwrap();
    let out = orch(&[
        "certificate",
        "rotate",
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no certificates under"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_server_tells_systemd_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(ORCH)
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .args(["--https-listen-port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig.yaml"))
        .env("NOTIFY_SOCKET", &socket)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = listener.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("no READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Serving by then: the kubeconfig is written.
    assert!(dir.path().join("kubeconfig.yaml").exists());
}

#[test]
fn a_machine_without_nftables_is_told_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // No nft on this PATH.
    let run = |args: &[&str]| {
        Command::new(ORCH)
            .args(args)
            .env("PATH", "/nonexistent")
            .env_remove("ORCH_DATA_DIR")
            .output()
            .expect("run orch")
    };
    let token = agent_token();
    for (args, hint) in [
        (
            vec![
                "agent",
                "--server",
                "https://127.0.0.1:1",
                "--token",
                &token,
                "--data-dir",
                data,
            ],
            "",
        ),
        (
            vec!["server", "--data-dir", data, "--https-listen-port", "0"],
            "--disable-agent",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("nft is not installed") && err.contains("apt-get install nftables"),
            "{args:?}: {err}"
        );
        assert!(err.contains(hint), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn token_sets_the_join_secret_on_first_start_and_must_match_later() {
    let server = support::Cluster::start_with(&["--token", "edge-cluster-secret"]);
    let token_file = server.dir.path().join("server/token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let hash = orch::api::join::ca_hash(
        &std::fs::read_to_string(server.dir.path().join("server/tls/ca.crt")).unwrap(),
    );
    assert_eq!(
        token.trim(),
        format!("K10{hash}::server:edge-cluster-secret")
    );
    let data = server.dir.path().to_str().unwrap().to_owned();
    let (server, refused) = server.restart_with(&[], |_| {
        orch(&[
            "server",
            "--disable-agent",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "0",
            "--data-dir",
            &data,
            "--write-kubeconfig",
            &format!("{data}/other.yaml"),
            "--token",
            "another-secret",
        ])
    });
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--token differs from the token this server already has"),
        "{}",
        stderr(&refused)
    );
    // Without --token the server keeps its token.
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    server.ok("1.33", &["get", "namespaces"]);
}

#[test]
fn an_unreadable_resolv_conf_is_named_before_the_agent_starts() {
    let dir = tempfile::tempdir().unwrap();
    let token = agent_token();
    let out = orch(&[
        "agent",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        &token,
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--resolv-conf",
        "/nonexistent/resolv.conf",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--resolv-conf /nonexistent/resolv.conf")
            && err.contains("give a readable file with nameserver lines"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // Nothing was set up for the agent.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn log_rotation_flags_are_checked() {
    let token = agent_token();
    let base = [
        "agent",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        &token,
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    assert_usage_error(
        &with(&["--container-log-max-size", "tiny"]),
        "\"tiny\" is not a size of at least 1Ki (e.g. 10Mi)",
        "orch agent",
    );
    assert_usage_error(
        &with(&["--container-log-max-size", "100"]),
        "--container-log-max-size",
        "orch agent",
    );
    assert_usage_error(
        &with(&["--container-log-max-files", "1"]),
        "--container-log-max-files",
        "orch agent",
    );
}

#[test]
fn an_old_nft_is_named_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let nft = bin.join("nft");
    std::fs::write(&nft, "#!/bin/sh\necho 'nftables v0.9.8 (E.D.S.)'\n").unwrap();
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = agent_token();
    let out = Command::new(ORCH)
        .args([
            "agent",
            "--server",
            "https://127.0.0.1:1",
            "--token",
            &token,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("nft 0.9.8 is too old (orch needs nftables 1.0.1 or newer)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn an_empty_api_audience_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for value in ["", "vault,,https://kubernetes.default.svc.cluster.local"] {
        let out = support::refused_server(&["--data-dir", data, "--api-audiences", value]);
        assert_eq!(out.status.code(), Some(2), "{value:?}: {}", stderr(&out));
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{value:?}: one line, then the usage: {err}");
        assert!(
            lines[0].starts_with("error: ")
                && lines[0].contains("--api-audiences")
                && lines[0].contains("may not be empty"),
            "{value:?}: {err}"
        );
    }
}
