//! Decoding bodies captured from kubectl 1.33 (`testdata/*.pb`).

use serde_json::json;

use super::*;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/src/api/proto/testdata/{name}.pb",
        env!("CARGO_MANIFEST_DIR")
    );
    decode(&std::fs::read(&path).expect("fixture exists")).expect("fixture decodes")
}

#[test]
fn deployment_from_kubectl_create_keeps_explicit_zero_replicas() {
    let d = fixture("deployment");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["metadata"]["name"], "d3");
    assert_eq!(d["metadata"]["namespace"], "t1");
    assert_eq!(
        d["spec"]["replicas"], 0,
        "a pointer field's zero is a value"
    );
    assert_eq!(d["spec"]["selector"], json!({"matchLabels": {"app": "d3"}}));
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox:1.36");
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 80}]),
        "unset value fields are dropped"
    );
    assert!(d["spec"].get("paused").is_none());
    assert!(
        d["spec"]["template"]["metadata"]
            .get("creationTimestamp")
            .is_none()
    );
}

#[test]
fn configmap_secret_namespace_and_review_decode() {
    assert_eq!(fixture("configmap")["data"], json!({"a": "b"}));
    // Secret data is bytes on the wire and base64 in JSON.
    assert_eq!(fixture("secret")["data"], json!({"p": "cQ=="}));
    assert_eq!(fixture("namespace")["metadata"]["name"], "t9");
    let review = fixture("selfsubjectreview");
    assert_eq!(review["kind"], "SelfSubjectReview");
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    assert!(decode(b"not protobuf").is_err());
    let mut truncated = std::fs::read(format!(
        "{}/src/api/proto/testdata/deployment.pb",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    truncated.truncate(truncated.len() / 2);
    assert!(decode(&truncated).is_err());
    // An unknown kind names itself.
    let err = decode(b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Nobody").unwrap_err();
    assert!(err.contains("Nobody"), "{err}");
}

#[test]
fn every_schema_message_reference_resolves() {
    for (name, fields) in schema() {
        for f in fields.values() {
            if !is_scalar(&f.ty) {
                assert!(
                    schema().contains_key(&f.ty),
                    "{name}.{} refers to missing {}",
                    f.name,
                    f.ty
                );
            }
        }
    }
}
