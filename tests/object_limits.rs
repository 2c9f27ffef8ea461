//! How large an object may be (issue #21), as upstream: ConfigMap and
//! Secret data up to 1 MiB (422 Invalid beyond), every object up to etcd's
//! 1.5 MiB request limit as stored (upstream's 500 "etcdserver: request is
//! too large" beyond), request bodies up to 3 MiB (413 beyond). A refused
//! write stores nothing and leaves the old object as it was. Driven with
//! curl for the exact Status and with kubectl for what users see.

mod support;

use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use support::Cluster;

const MIB: usize = 1024 * 1024;

/// The 422 text upstream (1.32 and later) gives for 1 MiB of data.
const TOO_LONG: &str = "Too long: may not be more than 1048576 bytes";

/// curl as the admin against the cluster's API.
struct Api<'a> {
    server: &'a Cluster,
    token: String,
}

impl<'a> Api<'a> {
    fn new(server: &'a Cluster) -> Self {
        let token =
            std::fs::read_to_string(server.dir.path().join("server/tls/admin.token")).unwrap();
        Self {
            server,
            token: token.trim().to_owned(),
        }
    }

    /// `method path` with `body` (JSON, or the patch type `content_type`
    /// names): the status code and the response body.
    fn call(&self, method: &str, path: &str, content_type: &str, body: Option<&[u8]>) -> Reply {
        let body_file = self.server.dir.path().join("request-body");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", method, "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.server.dir.path().join("server/tls/ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", &format!("Content-Type: {content_type}")]);
        if let Some(body) = body {
            std::fs::write(&body_file, body).unwrap();
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_file.display()));
        }
        let out = cmd
            .arg(format!("{}{path}", self.server.url()))
            .output()
            .expect("curl is needed for these tests (scripts/test.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status code line");
        Reply {
            code: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.call("GET", path, "application/json", None)
    }

    fn post(&self, path: &str, obj: &Value) -> Reply {
        let body = serde_json::to_vec(obj).unwrap();
        self.call("POST", path, "application/json", Some(&body))
    }

    fn put(&self, path: &str, obj: &Value) -> Reply {
        let body = serde_json::to_vec(obj).unwrap();
        self.call("PUT", path, "application/json", Some(&body))
    }

    fn merge_patch(&self, path: &str, patch: &Value) -> Reply {
        let body = serde_json::to_vec(patch).unwrap();
        self.call("PATCH", path, "application/merge-patch+json", Some(&body))
    }

    fn strategic_patch(&self, path: &str, patch: &Value) -> Reply {
        let body = serde_json::to_vec(patch).unwrap();
        self.call(
            "PATCH",
            path,
            "application/strategic-merge-patch+json",
            Some(&body),
        )
    }
}

struct Reply {
    code: u16,
    body: String,
}

impl Reply {
    /// The start of the body, for failure messages (bodies here are MBs).
    fn shown(&self) -> String {
        self.body.chars().take(500).collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.shown()))
    }

    /// The reply is a success with this code; the object.
    fn ok(&self, code: u16) -> Value {
        assert_eq!(self.code, code, "{}", self.shown());
        self.json()
    }

    /// The reply is upstream's 422 for data over 1 MiB on `field` of
    /// `kind` `name`, every byte of it.
    fn data_too_long(&self, kind: &str, name: &str, field: &str) {
        assert_eq!(self.code, 422, "{}", self.shown());
        assert_eq!(
            self.body,
            format!(
                "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\
                 \"message\":\"{kind} \\\"{name}\\\" is invalid: {field}: {TOO_LONG}\",\"reason\":\"Invalid\",\
                 \"details\":{{\"name\":\"{name}\",\"kind\":\"{kind}\",\"causes\":[{{\"reason\":\"FieldValueTooLong\",\
                 \"message\":\"{TOO_LONG}\",\"field\":\"{field}\"}}]}},\"code\":422}}\n"
            )
        );
    }

    /// The reply is upstream's answer to etcd refusing the write.
    fn too_large_to_store(&self) {
        assert_eq!(self.code, 500, "{}", self.shown());
        assert_eq!(
            (self.code, self.body.as_str()),
            (
                500,
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"etcdserver: request is too large\",\"code\":500}\n"
            )
        );
    }
}

fn b64(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n])
}

fn config_map(name: &str, data: usize, binary: usize) -> Value {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "x".repeat(data)}});
    if binary > 0 {
        cm["binaryData"] = json!({"b": b64(binary)});
    }
    cm
}

fn secret(name: &str, data: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"a": b64(data)}})
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

#[test]
fn config_map_data_is_limited_to_one_mib() {
    let server = Cluster::start();
    let api = Api::new(&server);
    // Exactly 1 MiB, counting data and decoded binaryData, is accepted.
    api.post(CMS, &config_map("full", MIB, 0)).ok(201);
    api.post(CMS, &config_map("split", MIB / 2, MIB / 2))
        .ok(201);
    // A byte more is upstream's TooLong on the whole object ("[]").
    api.post(CMS, &config_map("over", MIB + 1, 0))
        .data_too_long("ConfigMap", "over", "[]");
    api.post(CMS, &config_map("over", MIB / 2, MIB / 2 + 1))
        .data_too_long("ConfigMap", "over", "[]");
    assert_eq!(api.get(&format!("{CMS}/over")).code, 404, "nothing stored");

    // Updates are held to it too, and leave the stored object alone.
    let full = format!("{CMS}/full");
    let before = api.get(&full).ok(200);
    let mut bigger = before.clone();
    bigger["data"]["b"] = json!("x");
    api.put(&full, &bigger)
        .data_too_long("ConfigMap", "full", "[]");
    api.merge_patch(&full, &json!({"binaryData": {"c": b64(1)}}))
        .data_too_long("ConfigMap", "full", "[]");
    assert_eq!(api.get(&full).ok(200), before, "the old object is intact");
    // Making room is fine.
    let mut smaller = before.clone();
    smaller["data"]["a"] = json!("x".repeat(MIB - 1));
    smaller["data"]["b"] = json!("x");
    api.put(&full, &smaller).ok(200);

    // What kubectl users see.
    let file = server.write(
        "over.json",
        &config_map("kubectl-over", MIB + 1, 0).to_string(),
    );
    let err = server.fails("1.33", &["create", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "The ConfigMap \"kubectl-over\" is invalid: []: {TOO_LONG}"
        )),
        "{err}"
    );
    let file = server.write(
        "under.json",
        &config_map("kubectl-under", MIB, 0).to_string(),
    );
    server.ok("1.33", &["create", "-f", file.to_str().unwrap()]);
    let file = server.write(
        "replace.json",
        &config_map("kubectl-under", MIB, 1).to_string(),
    );
    let err = server.fails("1.33", &["replace", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "The ConfigMap \"kubectl-under\" is invalid: []: {TOO_LONG}"
        )),
        "{err}"
    );
}

#[test]
fn secret_data_is_limited_to_one_mib_decoded() {
    let server = Cluster::start();
    let api = Api::new(&server);
    // 1 MiB decoded is about 1.4 MB of base64 on the wire.
    api.post(SECRETS, &secret("full", MIB)).ok(201);
    api.post(SECRETS, &secret("over", MIB + 1))
        .data_too_long("Secret", "over", "data");
    // stringData counts: it is folded into data before validation.
    let mut with_string_data = secret("over", MIB);
    with_string_data["stringData"] = json!({"b": "x"});
    api.post(SECRETS, &with_string_data)
        .data_too_long("Secret", "over", "data");
    assert_eq!(
        api.get(&format!("{SECRETS}/over")).code,
        404,
        "nothing stored"
    );

    let full = format!("{SECRETS}/full");
    let before = api.get(&full).ok(200);
    api.merge_patch(&full, &json!({"stringData": {"b": "x"}}))
        .data_too_long("Secret", "full", "data");
    let mut bigger = before.clone();
    bigger["data"]["b"] = json!(b64(1));
    api.put(&full, &bigger)
        .data_too_long("Secret", "full", "data");
    assert_eq!(api.get(&full).ok(200), before, "the old object is intact");

    let file = server.write("over.json", &secret("kubectl-over", MIB + 1).to_string());
    let err = server.fails("1.33", &["create", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "The Secret \"kubectl-over\" is invalid: data: {TOO_LONG}"
        )),
        "{err}"
    );
}

/// A Node whose `status.images` take about `bytes` of stored JSON: what a
/// kubelet reports for a node with many images (upstream validates no
/// count), and a kind with no size rule of its own.
fn images(bytes: usize) -> Value {
    let image = |i: usize| json!({"names": [format!("registry.example/app-{i:06}@sha256:{i:064}")], "sizeBytes": 1000});
    let each = image(0).to_string().len() + 1;
    Value::Array((0..bytes / each).map(image).collect())
}

fn node(name: &str, image_bytes: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {"images": images(image_bytes)}})
}

#[test]
fn objects_over_etcds_request_limit_are_not_stored() {
    let server = Cluster::start();
    let api = Api::new(&server);
    let nodes = "/api/v1/nodes";
    // Created with its status (as an agent registers): 1.4 MB fits, 1.6 MB
    // does not.
    api.post(nodes, &node("fits", 1_400_000)).ok(201);
    api.post(nodes, &node("over", 1_600_000))
        .too_large_to_store();
    assert_eq!(
        api.get(&format!("{nodes}/over")).code,
        404,
        "nothing stored"
    );
    // A dry run never reaches the store, upstream's neither.
    api.post(&format!("{nodes}?dryRun=All"), &node("dry", 1_600_000))
        .ok(201);

    // Status writes, by merge patch and by PUT.
    let fits = format!("{nodes}/fits");
    let before = api.get(&fits).ok(200);
    api.merge_patch(
        &format!("{fits}/status"),
        &json!({"status": {"images": images(1_600_000)}}),
    )
    .too_large_to_store();
    let mut bigger = before.clone();
    bigger["status"]["images"] = images(1_600_000);
    api.put(&format!("{fits}/status"), &bigger)
        .too_large_to_store();
    assert_eq!(
        api.get(&fits).ok(200)["status"]["images"],
        before["status"]["images"],
        "the old object is intact"
    );

    // A write to the main resource: a Deployment whose pod template grew.
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    api.post(deployments, &deployment).ok(201);
    let web = format!("{deployments}/web");
    let args: Vec<String> = (0..100_000).map(|i| format!("--flag-{i:08}")).collect();
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "args": args}]}}}});
    api.strategic_patch(&web, &patch).too_large_to_store();
    let stored = api.get(&web).ok(200);
    assert!(
        stored["spec"]["template"]["spec"]["containers"][0]
            .get("args")
            .is_none(),
        "the old object is intact"
    );

    let file = server.write("node.json", &node("kubectl-over", 1_600_000).to_string());
    let err = server.fails("1.33", &["create", "-f", file.to_str().unwrap()]);
    assert!(err.contains("etcdserver: request is too large"), "{err}");
}

#[test]
fn request_bodies_over_three_mib_are_refused() {
    let server = Cluster::start();
    let api = Api::new(&server);
    // A body of exactly 3 MiB is read (and its ConfigMap is then invalid).
    let mut cm = config_map("three", 0, 0);
    let empty = cm.to_string().len();
    cm["data"]["a"] = json!("x".repeat(3 * MIB - empty));
    let body = cm.to_string();
    assert_eq!(body.len(), 3 * MIB);
    let reply = api.call("POST", CMS, "application/json", Some(body.as_bytes()));
    reply.data_too_long("ConfigMap", "three", "[]");
    // One byte more is upstream's 413.
    let body = format!("{body} ");
    let reply = api.call("POST", CMS, "application/json", Some(body.as_bytes()));
    assert_eq!(reply.code, 413, "{}", reply.shown());
    assert_eq!(
        (reply.code, reply.body.as_str()),
        (
            413,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Request entity too large: limit is 3145728\",\"reason\":\"RequestEntityTooLarge\",\"code\":413}\n"
        )
    );
    assert_eq!(api.get(&format!("{CMS}/three")).code, 404);
}
