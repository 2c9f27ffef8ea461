//! `/openapi/v2`: what kubectl 1.27 and 1.28 read before `apply` (they
//! fail with "the server could not find the requested resource" without
//! it), `kubectl explain --output=plaintext-openapiv2` and Helm validate
//! against. Driven with the real kubectl binaries and with curl.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;
use support::Cluster;

const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

const MANIFEST: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web}
data: {a: b}
";

/// A GET with curl as the admin; returns status, headers and body bytes.
struct Reply {
    code: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn get(server: &Cluster, path: &str, headers: &[&str]) -> Reply {
    let token = std::fs::read_to_string(server.dir.path().join("server/tls/admin.token"))
        .expect("admin token");
    let header_file = server.dir.path().join("curl-headers");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-D"])
        .arg(&header_file)
        .arg("--cacert")
        .arg(server.dir.path().join("server/tls/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("curl is needed for these tests");
    let raw = std::fs::read_to_string(&header_file).expect("curl wrote the headers");
    let mut lines = raw.lines();
    let code = lines
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        code,
        headers,
        body: out.stdout,
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

#[test]
fn kubectl_1_27_and_1_28_apply_and_explain() {
    let server = Cluster::start();
    let manifest = server.write("web.yaml", MANIFEST);
    for v in ["1.27", "1.28"] {
        let ns = format!("ns-{}", v.replace('.', "-"));
        server.ok(v, &["create", "namespace", &ns]);
        let out = server.ok(v, &["apply", "-n", &ns, "-f", manifest.to_str().unwrap()]);
        for created in [
            "deployment.apps/web created",
            "service/web created",
            "configmap/web created",
        ] {
            assert!(out.contains(created), "{v}: {out}");
        }
        let out = server.ok(
            v,
            &[
                "get",
                "-n",
                &ns,
                "deploy/web",
                "svc/web",
                "cm/web",
                "-o",
                "name",
            ],
        );
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["deployment.apps/web", "service/web", "configmap/web"],
            "{v}"
        );
        // A second apply patches through the strategic merge patch kubectl
        // computes from the v2 definitions.
        let changed = server.write("web2.yaml", &MANIFEST.replace("replicas: 2", "replicas: 3"));
        let out = server.ok(v, &["apply", "-n", &ns, "-f", changed.to_str().unwrap()]);
        assert!(out.contains("deployment.apps/web configured"), "{v}: {out}");
        assert!(out.contains("configmap/web unchanged"), "{v}: {out}");
        let replicas = server.ok(
            v,
            &[
                "get",
                "-n",
                &ns,
                "deploy/web",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        );
        assert_eq!(replicas, "3", "{v}");
    }
    let out = server.ok("1.28", &["explain", "deployment.spec.replicas"]);
    assert!(
        out.contains("Number of desired pods"),
        "1.28 explain: {out}"
    );
    // The v2 reader of explain (kubectl decodes the protobuf form).
    for v in ["1.27", "1.28"] {
        let out = server.ok(
            v,
            &[
                "explain",
                "deployment.spec.replicas",
                "--output=plaintext-openapiv2",
            ],
        );
        assert!(
            out.contains("replicas") && out.contains("Number of desired pods"),
            "{v} explain from v2: {out}"
        );
    }
}

#[test]
fn unknown_fields_are_reported_as_upstream_reports_them() {
    let server = Cluster::start();
    let cm = server.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: u}\ndata: {a: b}\nfoo: 1\n",
    );
    for v in ["1.27", "1.28"] {
        // kubectl loads the v2 document (protobuf) to build its validator,
        // learns from the OpenAPI v3 PATCH operation that the server takes
        // fieldValidation, and leaves the check to the server (Strict), so
        // the error is the server's strict decoding error, as upstream's.
        let err = server.fails(v, &["apply", "--validate=true", "-f", cm.to_str().unwrap()]);
        assert!(
            err.contains(r#"error when creating ""#)
                && err.contains(r#"strict decoding error: unknown field "foo""#),
            "{v}: {err}"
        );
    }
    let out = server.ok("1.28", &["get", "cm", "-o", "name"]);
    assert!(!out.contains("configmap/u"), "nothing stored: {out}");
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn json_document_is_swagger_2_with_resolving_refs() {
    let server = Cluster::start();
    let reply = get(&server, "/openapi/v2", &[]);
    assert_eq!(reply.code, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(!reply.headers.contains_key("content-encoding"));
    let doc: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(doc["swagger"], "2.0");
    assert_eq!(doc["info"]["title"], "Kubernetes");
    assert!(
        doc["info"]["version"]
            .as_str()
            .unwrap()
            .starts_with("v1.33.")
    );
    let defs = doc["definitions"].as_object().unwrap();
    let deployment = &defs["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
    );
    assert_eq!(
        deployment["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
    );
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains("#/components/"), "v3 references left");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 100, "{} refs", all.len());
    for r in all {
        let name = r.strip_prefix("#/definitions/").unwrap_or(r);
        assert!(defs.contains_key(name), "{r} does not resolve");
    }
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-action"], "patch");
    assert_eq!(
        patch["x-kubernetes-group-version-kind"]["kind"],
        "Deployment"
    );

    // gzip for clients that ask, the same document.
    let gz = get(&server, "/openapi/v2", &["Accept-Encoding: gzip"]);
    assert_eq!(gz.headers["content-encoding"], "gzip");
    assert!(gz.body.len() < reply.body.len() / 3);
    assert_eq!(gunzip(&gz.body), reply.body);

    // Neither form: 406.
    assert_eq!(
        get(&server, "/openapi/v2", &["Accept: text/plain"]).code,
        406
    );
}

/// A minimal protobuf reader: (field, bytes) of the length-delimited fields.
fn messages(mut b: &[u8]) -> Vec<(u64, &[u8])> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        match key & 7 {
            0 => {
                varint(&mut b);
            }
            1 => b = &b[8..],
            2 => {
                let len = varint(&mut b) as usize;
                out.push((key >> 3, &b[..len]));
                b = &b[len..];
            }
            5 => b = &b[4..],
            w => panic!("wire type {w}"),
        }
    }
    out
}

fn field(b: &[u8], n: u64) -> Vec<&[u8]> {
    messages(b)
        .into_iter()
        .filter(|(f, _)| *f == n)
        .map(|(_, m)| m)
        .collect()
}

#[test]
fn protobuf_document_is_gnostic_and_etag_gives_304() {
    let server = Cluster::start();
    let reply = get(&server, "/openapi/v2", &[&format!("Accept: {PROTOBUF}")]);
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.headers["content-type"],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    // Document.swagger (1), Document.definitions (9) of NamedSchema (1).
    assert_eq!(field(&reply.body, 1), [b"2.0"]);
    let definitions = field(&reply.body, 9);
    let named: BTreeMap<String, &[u8]> = field(definitions[0], 1)
        .into_iter()
        .map(|n| {
            (
                String::from_utf8(field(n, 1)[0].to_vec()).unwrap(),
                field(n, 2)[0],
            )
        })
        .collect();
    let deployment = named["io.k8s.api.apps.v1.Deployment"];
    // Schema.vendor_extension (31): NamedAny{name, Any{yaml (2)}}.
    let marks: Vec<String> = field(deployment, 31)
        .into_iter()
        .filter(|ext| field(ext, 1) == [b"x-kubernetes-group-version-kind"])
        .map(|ext| String::from_utf8(field(field(ext, 2)[0], 2)[0].to_vec()).unwrap())
        .collect();
    assert_eq!(marks.len(), 1);
    assert!(
        marks[0].contains("group: apps") && marks[0].contains("kind: Deployment"),
        "{marks:?}"
    );

    // One ETag for both forms (kube-openapi: the SHA-512 of the JSON).
    let etag = reply.headers["etag"].clone();
    assert!(etag.starts_with('"') && etag.len() == 130, "{etag}");
    let json = get(&server, "/openapi/v2", &[]);
    assert_eq!(json.headers["etag"], etag);
    for accept in ["application/json", PROTOBUF] {
        let again = get(
            &server,
            "/openapi/v2",
            &[
                &format!("Accept: {accept}"),
                &format!("If-None-Match: {etag}"),
            ],
        );
        assert_eq!(again.code, 304, "{accept}");
        assert!(again.body.is_empty());
        assert_eq!(again.headers["etag"], etag);
    }
    let stale = get(&server, "/openapi/v2", &["If-None-Match: \"0\""]);
    assert_eq!(stale.code, 200);
}

/// Issue 20's done-when: `apply`, `diff`, `edit` and `explain` from every
/// kubectl 1.27–1.33 (older ones build their patches and validation from
/// /openapi/v2, newer ones from v3).
#[test]
fn kubectl_1_27_to_1_33_apply_diff_edit_and_explain() {
    let server = Cluster::start();
    let manifest = server.write("web.yaml", MANIFEST);
    // `kubectl edit` runs $EDITOR on a temp file: this one edits it in place.
    let editor = server.write(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/replicas: [0-9]*/replicas: 5/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for v in ["1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"] {
        let ns = format!("d-{}", v.replace('.', "-"));
        server.ok(v, &["create", "namespace", &ns]);
        let file = manifest.to_str().unwrap();
        server.ok(v, &["apply", "-n", &ns, "-f", file]);
        // No difference: exit 0 and nothing printed.
        let same = server.kubectl(v, &["diff", "-n", &ns, "-f", file]);
        assert!(
            same.status.success() && same.stdout.is_empty(),
            "{v} diff of what is stored: {:?} {} {}",
            same.status,
            String::from_utf8_lossy(&same.stdout),
            String::from_utf8_lossy(&same.stderr)
        );
        // A difference: exit 1 and the changed line in the diff.
        let changed = server.write(
            &format!("web-{v}.yaml"),
            &MANIFEST.replace("replicas: 2", "replicas: 4"),
        );
        let diff = server.kubectl(v, &["diff", "-n", &ns, "-f", changed.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&diff.stdout);
        assert_eq!(
            diff.status.code(),
            Some(1),
            "{v} diff exit code: {text} {}",
            String::from_utf8_lossy(&diff.stderr)
        );
        assert!(
            text.contains("-  replicas: 2") && text.contains("+  replicas: 4"),
            "{v} diff: {text}"
        );
        let edit = server.kubectl_env(
            v,
            &["edit", "-n", &ns, "deployment/web"],
            &[("KUBE_EDITOR", editor.to_str().unwrap())],
        );
        assert!(
            edit.status.success(),
            "{v} edit: {}",
            String::from_utf8_lossy(&edit.stderr)
        );
        let replicas = server.ok(
            v,
            &[
                "get",
                "-n",
                &ns,
                "deploy/web",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        );
        assert_eq!(replicas, "5", "{v}: edit did not store its change");
        let out = server.ok(v, &["explain", "configmap.data"]);
        assert!(out.contains("data"), "{v} explain: {out}");
    }
}
