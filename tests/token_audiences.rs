//! Service account tokens against the API (issue #21): a token made for
//! another audience is refused with 401 as kube-apiserver refuses it,
//! `--api-audiences` says which audiences the API is, and a service
//! account may ask who it is and what it may do (upstream's
//! `system:basic-user`), answered with the authorizer chain's decisions.

mod support;

use std::process::Command;

use serde_json::Value;
use support::Cluster;

/// The issuer, and the API's audience unless `--api-audiences` says otherwise.
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// `curl` of `path` on the server with `token`, `body` POSTed when given:
/// the status code and the body as JSON.
fn call(server: &Cluster, token: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("curl is needed for these tests (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status code line");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (code.trim().parse().unwrap_or(0), json)
}

/// GET the default namespace's pods with `token`.
fn list_pods(server: &Cluster, token: &str) -> (u16, Value) {
    call(server, token, "/api/v1/namespaces/default/pods", None)
}

/// `kubectl create token default` with `args`, once the service account
/// controller has made `default`.
fn create_token(server: &Cluster, args: &[&str]) -> String {
    let mut full = vec!["create", "token", "default"];
    full.extend(args);
    server
        .eventually(&full, "a token for service account default", |t| {
            t.split('.').count() == 3
        })
        .trim()
        .to_owned()
}

/// Is this upstream's 401 Status?
fn is_unauthorized(code: u16, body: &Value) -> bool {
    code == 401
        && body["kind"] == "Status"
        && body["status"] == "Failure"
        && body["message"] == "Unauthorized"
        && body["reason"] == "Unauthorized"
        && body["code"] == 401
}

/// Authenticated (a 403 naming the service account, as no RBAC lets it
/// list pods yet), not refused as a stranger.
fn is_the_default_service_account(code: u16, body: &Value) -> bool {
    code == 403
        && body["message"]
            .as_str()
            .is_some_and(|m| m.contains("User \"system:serviceaccount:default:default\""))
}

#[test]
fn tokens_for_another_audience_are_unauthorized() {
    let server = Cluster::start();
    let vault = create_token(&server, &["--audience", "vault"]);
    let own = create_token(&server, &[]);
    let (code, body) = list_pods(&server, &vault);
    assert!(
        is_unauthorized(code, &body),
        "a token for vault is not one for the API: {code} {body}"
    );
    let (code, body) = list_pods(&server, &own);
    assert!(
        is_the_default_service_account(code, &body),
        "a token for the API authenticates: {code} {body}"
    );
    let both = create_token(&server, &["--audience", "vault", "--audience", ISSUER]);
    let (code, body) = list_pods(&server, &both);
    assert!(
        is_the_default_service_account(code, &body),
        "a token for vault and the API authenticates: {code} {body}"
    );
    // kubectl with the token: refused before it gets anywhere.
    let kubeconfig = server.bare_kubeconfig();
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    for v in ["1.27", "1.33"] {
        let err = server.fails(
            v,
            &["--kubeconfig", kubeconfig, "--token", &vault, "get", "pods"],
        );
        assert!(
            err.contains("Unauthorized") || err.contains("provide credentials"),
            "kubectl {v}: {err}"
        );
        let err = server.fails(
            v,
            &["--kubeconfig", kubeconfig, "--token", &own, "get", "pods"],
        );
        assert!(
            err.contains(
                "User \"system:serviceaccount:default:default\" cannot list resource \"pods\""
            ),
            "kubectl {v}: discovery allowed, then refused the list: {err}"
        );
    }
}

#[test]
fn api_audiences_name_what_tokens_are_accepted_for() {
    let server = Cluster::start_with(&["--api-audiences", &format!("vault,{ISSUER}")]);
    // A token asked for with no audience gets the API's, all of them.
    let made = server.eventually(
        &["create", "token", "default", "-o", "json"],
        "a TokenRequest for service account default",
        |t| t.contains("\"token\""),
    );
    let request: Value = serde_json::from_str(&made).expect("TokenRequest JSON");
    assert_eq!(
        request["spec"]["audiences"],
        serde_json::json!(["vault", ISSUER]),
        "{request}"
    );
    let vault = create_token(&server, &["--audience", "vault"]);
    let own = create_token(&server, &["--audience", ISSUER]);
    for token in [&vault, &own] {
        let (code, body) = list_pods(&server, token);
        assert!(is_the_default_service_account(code, &body), "{code} {body}");
    }
    // The API is no longer vault: its tokens stop working, ours go on.
    let server = server.restart(&[]);
    let (code, body) = list_pods(&server, &vault);
    assert!(
        is_unauthorized(code, &body),
        "vault is no longer one of the API's audiences: {code} {body}"
    );
    let (code, body) = list_pods(&server, &own);
    assert!(is_the_default_service_account(code, &body), "{code} {body}");
}

#[test]
fn service_accounts_ask_who_they_are_and_what_they_may_do() {
    let server = Cluster::start();
    let token = create_token(&server, &[]);
    let kubeconfig = server.bare_kubeconfig();
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let as_sa = |v: &str, args: &[&str]| {
        let mut full = vec!["--kubeconfig", kubeconfig, "--token", token.as_str()];
        full.extend(args);
        server.kubectl(v, &full)
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // kubectl 1.27 asks authentication.k8s.io/v1beta1, later ones v1.
    for v in ["1.27", "1.33"] {
        let out = as_sa(v, &["auth", "whoami", "-o", "json"]);
        assert!(
            out.status.success(),
            "kubectl {v} auth whoami: {}",
            text(&out)
        );
        let review: Value = serde_json::from_slice(&out.stdout).expect("a SelfSubjectReview");
        let info = &review["status"]["userInfo"];
        assert_eq!(
            info["username"], "system:serviceaccount:default:default",
            "{v}: {review}"
        );
        assert_eq!(
            info["groups"],
            serde_json::json!([
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]),
            "{v}: {review}"
        );
        let want = if v == "1.27" { "v1beta1" } else { "v1" };
        assert_eq!(
            review["apiVersion"],
            format!("authentication.k8s.io/{want}"),
            "{v}: answered in the version asked"
        );
        let out = as_sa(v, &["auth", "whoami"]);
        let table = text(&out);
        assert!(
            out.status.success()
                && table.contains("system:serviceaccount:default:default")
                && table.contains("system:serviceaccounts:default"),
            "kubectl {v} auth whoami: {table}"
        );
        // The real decisions: the self reviews yes, pods no (no RBAC yet).
        for (what, answer, code) in [
            ("selfsubjectreviews.authentication.k8s.io", "yes", 0),
            ("selfsubjectaccessreviews.authorization.k8s.io", "yes", 0),
            ("pods", "no", 1),
        ] {
            let out = as_sa(v, &["auth", "can-i", "create", what]);
            assert_eq!(
                (
                    String::from_utf8_lossy(&out.stdout).trim(),
                    out.status.code()
                ),
                (answer, Some(code)),
                "kubectl {v} auth can-i create {what}: {}",
                text(&out)
            );
        }
        let out = as_sa(v, &["auth", "can-i", "--list"]);
        let list = text(&out);
        assert!(
            out.status.success()
                && list.contains("selfsubjectreviews.authentication.k8s.io")
                && list.contains("selfsubjectrulesreviews.authorization.k8s.io")
                && list.contains("[/api/*]")
                && !list.contains("pods"),
            "kubectl {v} auth can-i --list: {list}"
        );
    }
    // The admin's answers come from the same chain: everything.
    let out = server.kubectl("1.33", &["auth", "can-i", "create", "pods"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    // Through the API: the decision, not a guess.
    let ask = |attrs: &str| {
        call(
            &server,
            &token,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(&format!(
                r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{attrs}}}"#
            )),
        )
    };
    let (code, review) =
        ask(r#"{"resourceAttributes":{"verb":"get","resource":"secrets","namespace":"default"}}"#);
    assert_eq!(
        (code, &review["status"]["allowed"]),
        (201, &Value::Bool(false)),
        "{review}"
    );
    let (code, review) = ask(r#"{"nonResourceAttributes":{"verb":"get","path":"/apis"}}"#);
    assert_eq!(
        (code, &review["status"]["allowed"]),
        (201, &Value::Bool(true)),
        "{review}"
    );
    let (code, review) = ask("{}");
    assert_eq!(
        (code, &review["reason"]),
        (422, &Value::from("Invalid")),
        "{review}"
    );
}
