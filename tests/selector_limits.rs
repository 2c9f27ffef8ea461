//! Long label selectors (issue #21): accepted up to the request target
//! limit (65,534 bytes of path and query, the `http` crate's, which hyper
//! and h2 enforce before any handler runs; about 64 KiB of headers over
//! HTTP/2), and answered with a plain HTTP status beyond it on both
//! protocols — never a reset stream, which client-go retried on a new
//! connection without end.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, wait};

/// `app in (web,v000000,v000001,…)`, about `len` bytes long. kubectl sends
/// it percent-encoded: each `,` becomes `%2C`, so the URL is ~1.3 times
/// as long.
fn selector(len: usize) -> String {
    let values: Vec<String> = (0..len / 8).map(|i| format!("v{i:06}")).collect();
    format!("app in (web,{})", values.join(","))
}

/// Run kubectl of `version` with `env` and wait at most 60 s for it to
/// end: (success, stdout, stderr).
fn kubectl_within(server: &Cluster, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = server.kubectl_command("1.33", args);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    // Pipes are drained on threads: a child blocked on a full pipe never ends.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let Some(status) = wait::poll(Duration::from_secs(60), || child.try_wait().unwrap()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "kubectl {} did not end within 60 s: it retries a refused request forever",
            args[..2].join(" ")
        );
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// A raw HTTP/1.1 GET of `target` over TLS: the response head, and whether
/// the server closed the connection after it.
fn http1_get(server: &Cluster, target: &str) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_file(server.dir.path().join("server/tls/ca.crt"))
            .expect("the server's CA certificate")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = server.url().trim_start_matches("https://").to_owned();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // The server may answer (and close) before it has read it all.
        let _ = tls.write_all(request.as_bytes()).await;
        let _ = tls.flush().await;
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut seen)).await;
        let text = String::from_utf8_lossy(&seen).into_owned();
        let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
        (head, read.is_ok())
    })
}

#[test]
fn long_label_selectors_are_served_up_to_the_request_target_limit() {
    let server = Cluster::start();
    for (name, app) in [("web", "web"), ("db", "db")] {
        server.ok("1.33", &["create", "configmap", name, "--from-literal=a=1"]);
        server.ok("1.33", &["label", "configmap", name, &format!("app={app}")]);
    }
    // 40 KB, about 50 KB as sent.
    let fits = selector(40_000);
    for env in [&[][..], &[("DISABLE_HTTP2", "1")][..]] {
        let (ok, out, err) = kubectl_within(
            &server,
            &["get", "configmaps", "-l", &fits, "-o", "name"],
            env,
        );
        assert!(ok, "{env:?}: {err}");
        assert_eq!(out.trim(), "configmap/web", "{env:?}");
    }
    // curl over HTTP/1.1.
    let token = std::fs::read_to_string(server.dir.path().join("server/tls/admin.token")).unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "--http1.1",
            "-G",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(server.dir.path().join("server/tls/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .arg("--data-urlencode")
        .arg(format!("labelSelector={fits}"))
        .arg(format!(
            "{}/api/v1/namespaces/default/configmaps",
            server.url()
        ))
        .output()
        .expect("curl is needed for these tests (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "1.1 200", "{body}");
    let list: Value = serde_json::from_str(body).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"]);
}

#[test]
fn selectors_past_the_limit_get_an_http_status_not_a_reset() {
    let server = Cluster::start();
    // 100 KB: about as long as one command-line argument may be.
    let long = selector(100_000);
    // HTTP/2 (before #21 the stream was reset and kubectl redialled
    // without end): client-go refuses to send a header list over the limit
    // the server advertised, or, when the request goes out before the
    // server's SETTINGS arrived, gets h2's 431.
    let (ok, _, err) = kubectl_within(&server, &["get", "configmaps", "-l", &long], &[]);
    assert!(!ok);
    assert!(
        err.contains("http2: request header list larger than peer's advertised limit")
            || err.contains("the server responded with the status code 431"),
        "{err}"
    );
    // HTTP/1.1: hyper's 414.
    let (ok, _, err) = kubectl_within(
        &server,
        &["get", "configmaps", "-l", &long],
        &[("DISABLE_HTTP2", "1")],
    );
    assert!(!ok);
    assert!(
        err.contains("the server responded with the status code 414"),
        "{err}"
    );
    // 200 KB and 700 KB (too long for a command line): 414, then the
    // connection is closed.
    for len in [200_000, 700_000] {
        let target = format!(
            "/api/v1/namespaces/default/configmaps?labelSelector={}",
            selector(len).replace(' ', "+").replace(',', "%2C")
        );
        let (head, closed) = http1_get(&server, &target);
        assert!(
            head.starts_with("HTTP/1.1 414 URI Too Long"),
            "{len}: {head}"
        );
        assert!(closed, "{len}: the connection is closed after the 414");
    }
    // The server is fine.
    server.ok("1.33", &["get", "configmaps"]);
}
