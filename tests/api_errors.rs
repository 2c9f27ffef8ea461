//! Bad input over HTTP gets the right 4xx `Status`, and nothing stored
//! changes. Driven with curl so the requests are exactly what is sent.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Cluster, wait};

struct Api<'a> {
    server: &'a Cluster,
    base: String,
    token: String,
}

struct Reply {
    code: u16,
    body: String,
    headers: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A `metav1.Status` with this code and reason.
    fn status(&self, code: u16, reason: &str) -> Value {
        let s = self.json();
        assert_eq!(
            (
                self.code,
                s["kind"].as_str(),
                s["code"].as_u64(),
                // An empty reason is left out, as upstream leaves it.
                s["reason"].as_str().unwrap_or_default()
            ),
            (code, Some("Status"), Some(u64::from(code)), reason),
            "{}",
            self.body
        );
        s
    }
}

impl<'a> Api<'a> {
    fn new(server: &'a Cluster) -> Self {
        let kubeconfig = std::fs::read_to_string(&server.kubeconfig).unwrap();
        let base = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("server URL")
            .to_owned();
        let token =
            std::fs::read_to_string(server.dir.path().join("server/tls/admin.token")).unwrap();
        Self {
            server,
            base,
            token: token.trim().to_owned(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        auth: bool,
    ) -> Reply {
        let body_file = self.server.dir.path().join("body");
        let header_file = self.server.dir.path().join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", method, "-o", "-", "-w", "\n%{http_code}", "-D"])
            .arg(&header_file)
            .arg("--cacert")
            .arg(self.server.dir.path().join("server/tls/ca.crt"))
            .args(["-H", &format!("Content-Type: {content_type}")]);
        if auth {
            cmd.args(["-H", &format!("Authorization: Bearer {}", self.token)]);
        }
        if let Some(body) = body {
            std::fs::write(&body_file, body).unwrap();
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_file.display()));
        }
        cmd.arg(format!("{}{path}", self.base));
        let out = cmd
            .output()
            .expect("curl is needed for these tests (scripts/test.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status code line");
        Reply {
            code: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            headers: std::fs::read_to_string(&header_file).unwrap_or_default(),
        }
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        self.call(
            "POST",
            path,
            "application/json",
            Some(body.as_bytes()),
            true,
        )
    }
}

#[test]
fn identity_and_health() {
    let server = Cluster::start();
    let api = Api::new(&server);
    let v = api.call("GET", "/version", "application/json", None, false);
    assert_eq!(v.code, 200);
    let git = v.json()["gitVersion"].as_str().unwrap().to_owned();
    assert!(git.starts_with("v1.33.") && git.contains("+orch"), "{git}");
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(
            api.call("GET", path, "application/json", None, false).code,
            200,
            "{path}"
        );
    }
    // Without credentials: system:anonymous, with what RBAC gives it.
    let anonymous = api
        .call("GET", "/api/v1/namespaces", "application/json", None, false)
        .status(403, "Forbidden");
    assert_eq!(
        anonymous["message"],
        "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    api.call("GET", "/api", "application/json", None, false)
        .status(403, "Forbidden");
    let ok = api.call("GET", "/api/v1/namespaces", "application/json", None, true);
    assert_eq!(ok.code, 200, "{}", ok.body);
    assert!(
        ok.headers
            .to_lowercase()
            .contains("content-type: application/json"),
        "{}",
        ok.headers
    );
}

#[test]
fn anonymous_requests_are_refused_when_anonymous_auth_is_off() {
    let server = Cluster::start_with(&["--anonymous-auth=false"]);
    let api = Api::new(&server);
    for path in ["/version", "/healthz", "/api/v1/namespaces"] {
        api.call("GET", path, "application/json", None, false)
            .status(401, "Unauthorized");
    }
    // A credential still works, and /cacerts stays open for joining agents.
    assert_eq!(
        api.call("GET", "/healthz", "text/plain", None, true).code,
        200
    );
    let ca = api.call("GET", "/cacerts", "text/plain", None, false);
    assert!(
        ca.code == 200 && ca.body.contains("BEGIN CERTIFICATE"),
        "{}",
        ca.body
    );
}

#[test]
fn malformed_and_mismatched_bodies_are_rejected() {
    let server = Cluster::start();
    let api = Api::new(&server);
    let cms = "/api/v1/namespaces/default/configmaps";
    api.post(
        cms,
        r#"{"kind": "ConfigMap", "metadata": {"name": "ok"}, "data": {"a": "1"}}"#,
    );
    let before = api
        .call("GET", &format!("{cms}/ok"), "application/json", None, true)
        .json();

    api.post(cms, "{not json").status(400, "BadRequest");
    api.post(
        cms,
        r#"{"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}}"#,
    )
    .status(400, "BadRequest");
    api.post(cms, r#"{"kind": "Secret", "metadata": {"name": "x"}}"#)
        .status(400, "BadRequest");
    api.post(
        cms,
        r#"{"kind": "ConfigMap", "metadata": {"name": "x"}, "data": "not a map"}"#,
    )
    .status(400, "BadRequest");
    let big = format!(
        r#"{{"kind": "ConfigMap", "metadata": {{"name": "big"}}, "data": {{"a": "{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    api.post(cms, &big).status(413, "RequestEntityTooLarge");
    api.call("POST", cms, "text/plain", Some(b"hello"), true)
        .status(415, "UnsupportedMediaType");
    api.call("GET", "/api/v1/widgets", "application/json", None, true)
        .status(404, "NotFound");
    api.call(
        "GET",
        &format!("{cms}?labelSelector=a%20in%20b"),
        "application/json",
        None,
        true,
    )
    .status(400, "BadRequest");
    api.call(
        "PATCH",
        &format!("{cms}/ok"),
        "text/plain",
        Some(b"{}"),
        true,
    )
    .status(415, "UnsupportedMediaType");
    api.call(
        "PATCH",
        &format!("{cms}/ok"),
        "application/json-patch+json",
        Some(b"{\"not\": \"a list\"}"),
        true,
    )
    .status(400, "BadRequest");

    // Duplicate fields: an error under Strict, a warning by default.
    let dup =
        r#"{"kind": "ConfigMap", "metadata": {"name": "dup", "name": "dup"}, "data": {"a": "1"}}"#;
    let strict = api
        .post(&format!("{cms}?fieldValidation=Strict"), dup)
        .status(400, "BadRequest");
    assert!(
        strict["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field \"metadata.name\""),
        "{strict}"
    );
    // Unknown fields under Strict: upstream's transformDecodeError words,
    // with the version alone (not the group) in quotes.
    let unknown = api
        .post(
            "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Strict",
            r#"{"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "u"}, "spec": {"bogus": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}"#,
        )
        .status(400, "BadRequest");
    assert_eq!(
        unknown["message"],
        r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.bogus""#,
        "{unknown}"
    );
    let warned = api.post(cms, dup);
    assert_eq!(warned.code, 201, "{}", warned.body);
    assert!(
        warned.headers.to_lowercase().contains("warning: 299")
            && warned.headers.contains("duplicate field"),
        "{}",
        warned.headers
    );

    let after = api
        .call("GET", &format!("{cms}/ok"), "application/json", None, true)
        .json();
    assert_eq!(before, after, "nothing stored changed");
    let list = api.call("GET", cms, "application/json", None, true).json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"x") && !names.contains(&"big"),
        "{names:?}"
    );
}

#[test]
fn conflicts_and_invalid_objects() {
    let server = Cluster::start();
    let api = Api::new(&server);
    let cms = "/api/v1/namespaces/default/configmaps";
    let created = api.post(
        cms,
        r#"{"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}"#,
    );
    assert_eq!(created.code, 201, "{}", created.body);
    let s = api
        .post(cms, r#"{"kind": "ConfigMap", "metadata": {"name": "c"}}"#)
        .status(409, "AlreadyExists");
    assert_eq!(s["details"]["name"], "c");
    let stale = r#"{"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "1"}, "data": {"a": "2"}}"#;
    api.call(
        "PUT",
        &format!("{cms}/c"),
        "application/json",
        Some(stale.as_bytes()),
        true,
    )
    .status(409, "Conflict");
    api.call(
        "GET",
        &format!("{cms}/nope"),
        "application/json",
        None,
        true,
    )
    .status(404, "NotFound");
    let invalid = api
        .post("/api/v1/namespaces/default/pods", r#"{"kind": "Pod", "metadata": {"name": "Bad"}, "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x"}]}}"#)
        .status(422, "Invalid");
    let causes: Vec<&str> = invalid["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        [
            "metadata.name",
            "spec.containers[0].image",
            "spec.containers[1].name"
        ],
        "{invalid}"
    );
    api.post(
        "/api/v1/namespaces/missing/configmaps",
        r#"{"kind": "ConfigMap", "metadata": {"name": "c"}}"#,
    )
    .status(404, "NotFound");
    let svc = r#"{"kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 80}]}}"#;
    let s = api
        .post("/api/v1/namespaces/default/services", svc)
        .status(422, "Invalid");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("not in the valid range"),
        "{s}"
    );
}

/// `curl -N` on a watch URL: the event lines it printed before `max_time`.
fn watch_lines(api: &Api<'_>, path: &str, max_time: &str) -> Vec<Value> {
    let out = Command::new("curl")
        .args(["-s", "-N", "--max-time", max_time, "--cacert"])
        .arg(api.server.dir.path().join("server/tls/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", api.token)])
        .arg(format!("{}{path}", api.base))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {l}"))
        })
        .collect()
}

#[test]
fn watch_semantics_over_the_wire() {
    let server = Cluster::start_with(&[
        "--compaction-interval",
        "1",
        "--compaction-retention",
        "0",
        "--compaction-min-revisions",
        "2",
    ]);
    let api = Api::new(&server);
    let cms = "/api/v1/namespaces/default/configmaps";
    for i in 0..5 {
        api.post(
            cms,
            &format!(
                r#"{{"kind": "ConfigMap", "metadata": {{"name": "w{i}", "labels": {{"w": "1"}}}}}}"#
            ),
        );
    }
    // Initial state as ADDED events, then a bookmark marking their end.
    let events = watch_lines(
        &api,
        &format!(
            "{cms}?watch=1&labelSelector=w%3D1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"
        ),
        "5",
    );
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["ADDED", "ADDED", "ADDED", "ADDED", "ADDED", "BOOKMARK"],
        "{events:?}"
    );
    assert_eq!(
        events[5]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // timeoutSeconds ends the stream (curl's own limit is longer).
    let started = std::time::Instant::now();
    watch_lines(
        &api,
        &format!("{cms}?watch=1&resourceVersion=0&timeoutSeconds=1"),
        "10",
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "the watch outlived timeoutSeconds"
    );
    // Once history is compacted, an old resourceVersion gets 410 Expired.
    let expired = wait::until_ok(wait::secs(20), "history compacted", || {
        api.post(
            cms,
            r#"{"kind": "ConfigMap", "metadata": {"generateName": "tick-"}}"#,
        );
        let events = watch_lines(
            &api,
            &format!("{cms}?watch=1&resourceVersion=1&timeoutSeconds=1"),
            "5",
        );
        match events.first() {
            Some(e) if e["type"] == "ERROR" => Ok(e.clone()),
            _ => Err(format!("{events:?}")),
        }
    });
    assert_eq!(expired["object"]["code"], 410, "{expired}");
    assert_eq!(expired["object"]["reason"], "Expired", "{expired}");
    // A list at a compacted revision is 410 Gone.
    api.call(
        "GET",
        &format!("{cms}?resourceVersion=1&resourceVersionMatch=Exact"),
        "application/json",
        None,
        true,
    )
    .status(410, "Gone");
}

/// Some clients compare error text byte for byte: the body is kube-apiserver's,
/// field order, omitted empty fields and the encoder's trailing newline included.
#[test]
fn not_found_body_is_byte_for_byte_upstreams() {
    let server = Cluster::start();
    let api = Api::new(&server);
    let reply = api.call(
        "GET",
        "/api/v1/namespaces/default/pods/x",
        "application/json",
        None,
        true,
    );
    assert_eq!(reply.code, 404);
    assert_eq!(
        reply.body,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"pods \\\"x\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"x\",\"kind\":\"pods\"},\"code\":404}\n"
    );
}

/// A cluster-scoped definition `<plural>.fv.example.com` served at v1.
fn field_validation_crd(plural: &str, kind: &str, schema: &Value) -> String {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.fv.example.com")},
        "spec": {"group": "fv.example.com", "scope": "Cluster",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": schema}}]}
    })
    .to_string()
}

/// The cases of upstream's FieldValidation conformance tests
/// (test/e2e/apimachinery/field_validation.go), with their bodies and the
/// messages they look for.
#[test]
fn field_validation_answers_as_upstreams_conformance_tests_expect() {
    let server = Cluster::start();
    let api = Api::new(&server);
    let deployments = "/apis/apps/v1/namespaces/default/deployments?fieldManager=field_validation_mgr&fieldValidation=Strict";
    // Unknown and duplicate fields of a typed object: one strict error.
    let typed = r#"{"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "my-dep", "labels": {"app": "nginx"}},
        "spec": {"unknownField": "foo", "replicas": 2, "replicas": 3,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {"metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:latest"}]}}}}"#;
    let err = api.post(deployments, typed).status(400, "BadRequest");
    assert!(
        err["message"].as_str().unwrap().contains(
            r#"strict decoding error: unknown field "spec.unknownField", duplicate field "spec.replicas""#
        ),
        "{err}"
    );
    let meta = typed
        .replace(
            r#""name": "my-dep","#,
            r#""name": "my-dep", "unknownMeta": "foo","#,
        )
        .replace(r#""unknownField": "foo", "replicas": 2,"#, "");
    let err = api.post(deployments, &meta).status(400, "BadRequest");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(r#"strict decoding error: unknown field "metadata.unknownMeta""#),
        "{err}"
    );

    // Custom resources, applied as YAML.
    let ports = serde_json::json!({"type": "array", "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
        "items": {"type": "object", "required": ["containerPort", "protocol"], "properties": {
            "containerPort": {"type": "integer", "format": "int32"},
            "name": {"type": "string"}, "protocol": {"type": "string"}}}});
    let spec = |preserve: bool, template: bool| {
        let mut spec = serde_json::json!({"type": "object", "properties": {
            "foo": {"type": "string"}, "cronSpec": {"type": "string"}, "ports": ports}});
        if preserve {
            spec["x-kubernetes-preserve-unknown-fields"] = true.into();
        }
        if template {
            spec["properties"]["template"] = serde_json::json!({"type": "object",
                "x-kubernetes-embedded-resource": true, "properties": {
                    "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "spec": {"type": "object"}}});
        }
        serde_json::json!({"type": "object", "properties": {"spec": spec}})
    };
    let free = serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    for (plural, kind, schema) in [
        ("schemas", "Schema", spec(false, false)),
        ("frees", "Free", free),
        ("embeds", "Embed", spec(true, true)),
        ("keeps", "Keep", spec(true, false)),
    ] {
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let created = api.post(crds, &field_validation_crd(plural, kind, &schema));
        assert_eq!(created.code, 201, "{}", created.body);
        wait::until_true(wait::secs(10), "the definition is served", || {
            api.call(
                "GET",
                &format!("/apis/fv.example.com/v1/{plural}"),
                "application/json",
                None,
                true,
            )
            .code
                == 200
        });
    }
    let apply = |plural: &str, name: &str, yaml: &str| {
        api.call(
            "PATCH",
            &format!("/apis/fv.example.com/v1/{plural}/{name}?fieldManager=field_validation_mgr&fieldValidation=Strict"),
            "application/apply-patch+yaml",
            Some(yaml.as_bytes()),
            true,
        )
    };
    let body = |kind: &str, name: &str, extra_top: &str, spec: &str| {
        format!(
            "\napiVersion: fv.example.com/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  finalizers:\n  - test-finalizer\n{extra_top}spec:\n{spec}  cronSpec: \"* * * * */5\"\n  ports:\n  - name: x\n    containerPort: 80\n    protocol: TCP"
        )
    };
    let ok = apply(
        "schemas",
        "mytest",
        &body("Schema", "mytest", "", "  foo: foo1\n"),
    );
    assert_eq!(ok.code, 201, "{}", ok.body);
    let ok = apply(
        "frees",
        "mytest",
        &body("Free", "mytest", "", "  unknown: uk1\n"),
    );
    assert_eq!(ok.code, 201, "{}", ok.body);

    // Fields a schema does not declare: structured-merge-diff's 500.
    let extra = apply(
        "schemas",
        "extra",
        &body(
            "Schema",
            "extra",
            "unknownField: unknown\n",
            "  foo: foo1\n",
        ),
    );
    let err = extra.status(500, "");
    assert_eq!(
        err["message"],
        "failed to create typed patch object (/extra; fv.example.com/v1, Kind=Schema): .unknownField: field not declared in schema"
    );
    let embedded = body("Embed", "meta", "", "  template:\n    apiversion: foo/v1\n    kind: Sub\n    metadata:\n        unknownSubMeta: unknown\n        name: subobject\n        namespace: default\n  foo: foo1\n")
        .replace("  name: meta\n", "  name: meta\n  unknownMeta: unknown\n");
    let err = apply("embeds", "meta", &embedded).status(500, "");
    let message = err["message"].as_str().unwrap();
    for expected in [
        ".metadata.unknownMeta: field not declared in schema",
        ".spec.template.metadata.unknownSubMeta: field not declared in schema",
        ".spec.template.apiversion: field not declared in schema",
    ] {
        assert!(message.contains(expected), "{expected} missing: {message}");
    }
    // Embedded metadata is ObjectMeta, whatever its schema lists.
    assert!(!message.contains("namespace"), "{message}");

    // A key repeated in the YAML, even where unknown fields are kept.
    let repeated = body(
        "Keep",
        "dup",
        "",
        "  unknown: uk1\n  foo: foo1\n  foo: foo2\n",
    );
    let err = apply("keeps", "dup", &repeated).status(400, "BadRequest");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(r#"line 11: key "foo" already set in map"#),
        "{err}"
    );

    // Nothing was stored for the refused ones.
    for (plural, name) in [("schemas", "extra"), ("embeds", "meta"), ("keeps", "dup")] {
        let got = api.call(
            "GET",
            &format!("/apis/fv.example.com/v1/{plural}/{name}"),
            "application/json",
            None,
            true,
        );
        assert_eq!(got.code, 404, "{plural}/{name}: {}", got.body);
    }

    // Built-in kinds too, whatever fieldValidation says, and items of a
    // map list may not share a key in what is applied.
    for validation in ["Strict", "Ignore"] {
        let err = api
            .call(
                "PATCH",
                &format!("/api/v1/namespaces/default/configmaps/sops?fieldManager=m&fieldValidation={validation}"),
                "application/apply-patch+yaml",
                Some(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sops\ndata:\n  a: b\nsops:\n  mac: x\n"),
                true,
            )
            .status(500, "");
        assert_eq!(
            err["message"],
            "failed to create typed patch object (default/sops; /v1, Kind=ConfigMap): .sops: field not declared in schema"
        );
    }
    // An apply sent as CBOR (client-go with its CBOR gates on):
    // self-described, as upstream's serializer writes it.
    use ciborium::Value as C;
    let text = |s: &str| C::Text(s.into());
    let config = C::Map(vec![
        (text("apiVersion"), text("v1")),
        (text("kind"), text("ConfigMap")),
        (text("metadata"), C::Map(vec![(text("name"), text("cbor"))])),
        (text("data"), C::Map(vec![(text("via"), text("cbor"))])),
    ]);
    let mut cbor = Vec::new();
    ciborium::ser::into_writer(&C::Tag(55799, Box::new(config)), &mut cbor).unwrap();
    let path = "/api/v1/namespaces/default/configmaps/cbor?fieldManager=cbor-client";
    let created = api.call(
        "PATCH",
        path,
        "application/apply-patch+cbor",
        Some(&cbor),
        true,
    );
    assert_eq!(created.code, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(created["data"]["via"], "cbor");
    assert_eq!(
        created["metadata"]["managedFields"][0]["operation"],
        "Apply"
    );
    let garbled = api.call(
        "PATCH",
        path,
        "application/apply-patch+cbor",
        Some(b"\xff\x00"),
        true,
    );
    let err = garbled.status(400, "BadRequest");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("the patch is not valid CBOR"),
        "{err}"
    );

    let err = api
        .call(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/env?fieldManager=m",
            "application/apply-patch+yaml",
            Some(b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: env\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      containers:\n      - name: c\n        image: x\n        env:\n        - {name: A, value: '1'}\n        - {name: A, value: '2'}\n"),
            true,
        )
        .status(500, "");
    assert_eq!(
        err["message"],
        r#"failed to create typed patch object (default/env; apps/v1, Kind=Deployment): .spec.template.spec.containers[name="c"].env: duplicate entries for key [name="A"]"#
    );
}
