//! Slow, greedy and confused clients (issue #21): the probes that found
//! each defect, kept so it stays fixed.

mod support;

use std::path::Path;
use std::process::Command;

use support::TestServer;

/// `curl --http2` sending `body_file` to `url` with `method`: the exit
/// code, the HTTP version and the status curl saw.
fn curl_h2(method: &str, url: &str, token: Option<&str>, body_file: &Path) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k", "--http2", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}", "-X", method])
        .args(["-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()));
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("curl is needed for these tests (scripts/test.sh installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every answer given before the request body was read (401, 403, 404,
/// 405, 413) reaches an HTTP/2 client that is still sending its body.
/// Before the fix, h2 reset the stream in the same write as the response
/// and curl exited 92 for most of them.
#[test]
fn early_answers_reach_http2_clients_still_sending() {
    let server = TestServer::start();
    let base = server.url();
    let admin = std::fs::read_to_string(server.dir.path().join("server/tls/admin.token"))
        .expect("admin token");
    let admin = admin.trim();
    // Authenticated, and allowed nothing (there is no RBAC role for it).
    server.eventually(
        &["get", "serviceaccount", "default", "-o", "name"],
        "the default service account",
        |out| !out.trim().is_empty(),
    );
    let service_account = server.ok("1.33", &["create", "token", "default"]);
    let service_account = service_account.trim();

    let small = server.write("body-100k", &"x".repeat(100 * 1024));
    let large = server.write("body-4m", &"x".repeat(4 * 1024 * 1024));
    let configmaps = format!("{base}/api/v1/namespaces/default/configmaps");
    let cases = [
        ("401", "POST", configmaps.clone(), None, &small),
        (
            "403",
            "POST",
            configmaps.clone(),
            Some(service_account),
            &small,
        ),
        (
            "404",
            "POST",
            format!("{base}/api/v1/namespaces/default/nothings"),
            Some(admin),
            &small,
        ),
        ("405", "PUT", format!("{base}/api"), Some(admin), &small),
        ("413", "POST", configmaps.clone(), Some(admin), &large),
    ];
    for (want, method, url, token, body) in cases {
        let seen: Vec<(i32, String)> = (0..20)
            .map(|_| curl_h2(method, &url, token, body))
            .collect();
        let wrong: Vec<_> = seen
            .iter()
            .filter(|(code, out)| *code != 0 || *out != format!("2 {want}"))
            .collect();
        assert!(
            wrong.is_empty(),
            "{method} {url} over HTTP/2 should answer {want} every time; \
             {} of 20 were (curl exit, \"version status\"): {wrong:?}",
            wrong.len()
        );
    }
}
