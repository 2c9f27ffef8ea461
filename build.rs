//! Build-time facts for the binary:
//! - the git commit and target triple for `orch version`;
//! - the OpenAPI v3 component schemas of the served kinds and of the types
//!   their operations take and return (what `kubectl explain` reads; the
//!   `/openapi/v2` definitions are converted from them), generated from the
//!   k8s-openapi types through schemars and stored gzip-compressed, so the
//!   binary carries ~0.1 MB of compressed JSON instead of the schema code.

use std::io::Write;
use std::process::Command;

fn openapi_schemas() {
    use schemars::JsonSchema;
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds: Vec<(String, &str, &str)> = Vec::new();
    macro_rules! kinds {
        ($( ($g:expr, $k:expr, $($path:ident)::+) ),* $(,)?) => {
            {
                $(
                    let _ = generator.subschema_for::<k8s_openapi::api::$($path)::+>();
                    kinds.push((<k8s_openapi::api::$($path)::+ as JsonSchema>::schema_name().into_owned(), $g, $k));
                )*
            }
        };
    }
    include!("src/api/kinds.in");
    // The other types operations and subresources take or return, marked
    // as upstream's OpenAPI marks them (ListMeta and Patch are not kinds;
    // DeleteOptions and WatchEvent are marked per served group version at
    // run time).
    {
        use k8s_openapi::api::{authentication, authorization, autoscaling, core, policy};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
        let _ = generator.subschema_for::<meta::ListMeta>();
        let _ = generator.subschema_for::<meta::Patch>();
        let _ = generator.subschema_for::<meta::DeleteOptions>();
        let _ = generator.subschema_for::<meta::WatchEvent<core::v1::Pod>>();
        macro_rules! marked {
            ($( ($g:expr, $k:expr, $t:ty) ),* $(,)?) => {
                {
                    $(
                        let _ = generator.subschema_for::<$t>();
                        kinds.push((<$t as JsonSchema>::schema_name().into_owned(), $g, $k));
                    )*
                }
            };
        }
        marked! {
            ("", "Status", meta::Status),
            ("", "Binding", core::v1::Binding),
            ("autoscaling", "Scale", autoscaling::v1::Scale),
            ("policy", "Eviction", policy::v1::Eviction),
            ("authentication.k8s.io", "TokenRequest", authentication::v1::TokenRequest),
            ("authentication.k8s.io", "SelfSubjectReview", authentication::v1::SelfSubjectReview),
            ("authorization.k8s.io", "SelfSubjectAccessReview", authorization::v1::SelfSubjectAccessReview),
            ("authorization.k8s.io", "SelfSubjectRulesReview", authorization::v1::SelfSubjectRulesReview),
            ("authentication.k8s.io", "TokenReview", authentication::v1::TokenReview),
            ("authorization.k8s.io", "SubjectAccessReview", authorization::v1::SubjectAccessReview),
            ("authorization.k8s.io", "LocalSubjectAccessReview", authorization::v1::LocalSubjectAccessReview),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition
            ),
        }
    }
    let mut schemas = generator.take_definitions(true);
    for (name, group, kind) in kinds {
        if let Some(schema) = schemas.get_mut(&name).and_then(|s| s.as_object_mut()) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                serde_json::json!([{"group": group, "kind": kind, "version": "v1"}]),
            );
        }
    }
    // How kubectl must build strategic merge patches for these lists: the
    // same merge keys as src/api/patch.rs applies (upstream's struct tags).
    const PATCH_STRATEGIES: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "io.k8s.api.core.v1.PodSpec",
            "containers",
            "merge",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "initContainers",
            "merge",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "ephemeralContainers",
            "merge",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "volumes",
            "merge,retainKeys",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "imagePullSecrets",
            "merge",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "hostAliases",
            "merge",
            Some("ip"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "topologySpreadConstraints",
            "merge",
            Some("topologyKey"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "schedulingGates",
            "merge",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.PodSpec",
            "resourceClaims",
            "merge,retainKeys",
            Some("name"),
        ),
        ("io.k8s.api.core.v1.Container", "env", "merge", Some("name")),
        (
            "io.k8s.api.core.v1.Container",
            "ports",
            "merge",
            Some("containerPort"),
        ),
        (
            "io.k8s.api.core.v1.Container",
            "volumeMounts",
            "merge",
            Some("mountPath"),
        ),
        (
            "io.k8s.api.core.v1.Container",
            "volumeDevices",
            "merge",
            Some("devicePath"),
        ),
        (
            "io.k8s.api.core.v1.EphemeralContainer",
            "env",
            "merge",
            Some("name"),
        ),
        (
            "io.k8s.api.core.v1.EphemeralContainer",
            "volumeMounts",
            "merge",
            Some("mountPath"),
        ),
        (
            "io.k8s.api.core.v1.EphemeralContainer",
            "volumeDevices",
            "merge",
            Some("devicePath"),
        ),
        (
            "io.k8s.api.core.v1.ServiceSpec",
            "ports",
            "merge",
            Some("port"),
        ),
        (
            "io.k8s.api.core.v1.PodStatus",
            "conditions",
            "merge",
            Some("type"),
        ),
        (
            "io.k8s.api.core.v1.PodStatus",
            "podIPs",
            "merge",
            Some("ip"),
        ),
        (
            "io.k8s.api.core.v1.NodeStatus",
            "conditions",
            "merge",
            Some("type"),
        ),
        (
            "io.k8s.api.core.v1.NodeStatus",
            "addresses",
            "merge",
            Some("type"),
        ),
        (
            "io.k8s.api.apps.v1.DeploymentStatus",
            "conditions",
            "merge",
            Some("type"),
        ),
        (
            "io.k8s.api.apps.v1.DeploymentSpec",
            "strategy",
            "retainKeys",
            None,
        ),
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "finalizers",
            "merge",
            None,
        ),
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "ownerReferences",
            "merge",
            Some("uid"),
        ),
    ];
    for (schema, field, strategy, key) in PATCH_STRATEGIES {
        let prop = schemas
            .get_mut(*schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(|f| f.as_object_mut())
            .unwrap_or_else(|| panic!("{schema}.{field} is not in the generated schemas"));
        prop.insert("x-kubernetes-patch-strategy".into(), (*strategy).into());
        if let Some(key) = key {
            prop.insert("x-kubernetes-patch-merge-key".into(), (*key).into());
        }
    }
    merge_facts(&mut schemas);
    let json = serde_json::to_vec(&schemas).expect("schemas serialise");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"))
        .join("openapi-schemas.json.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&json).expect("compress");
    std::fs::write(out, gz.finish().expect("compress")).expect("write schemas");
}

/// Mark the component schemas with how server-side apply merges their
/// fields (src/api/merge-facts.txt, from upstream's schema), the way
/// upstream's OpenAPI marks them: `x-kubernetes-list-type` and
/// `x-kubernetes-list-map-keys` on every list, `x-kubernetes-map-type` on
/// maps and structs replaced whole, and the defaults of list keys.
fn merge_facts(schemas: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    let facts =
        std::fs::read_to_string("src/api/merge-facts.txt").expect("src/api/merge-facts.txt");
    for line in facts
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let words: Vec<&str> = line.splitn(5, ' ').collect();
        let Some(schema) = schemas.get_mut(words[1]).and_then(Value::as_object_mut) else {
            continue;
        };
        if words[0] == "type" {
            schema.insert("x-kubernetes-map-type".into(), "atomic".into());
            continue;
        }
        let Some(prop) = schema
            .get_mut("properties")
            .and_then(|p| p.get_mut(words[2]))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        match (words[0], words.get(3).copied()) {
            ("list", Some(kind)) => {
                prop.insert("x-kubernetes-list-type".into(), kind.into());
                if let Some(keys) = words.get(4) {
                    let keys: Vec<Value> = keys.split(',').map(Value::from).collect();
                    prop.insert("x-kubernetes-list-map-keys".into(), keys.into());
                }
            }
            ("map", Some(kind)) => {
                prop.insert("x-kubernetes-map-type".into(), kind.into());
            }
            ("default", Some(json)) => {
                let value: Value = serde_json::from_str(json).expect("a default is JSON");
                prop.insert("default".into(), value);
            }
            _ => {}
        }
    }
}

fn main() {
    openapi_schemas();
    println!("cargo:rerun-if-changed=src/api/kinds.in");
    println!("cargo:rerun-if-changed=src/api/merge-facts.txt");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ORCH_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=ORCH_TARGET={}",
        std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned())
    );
    // Re-run when HEAD moves (a commit rewrites the index too).
    for path in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // A position-dependent executable. Every shim is an exec of this
    // binary, and a PIE's ~54,000 relative relocations were applied at
    // each one: about a millisecond, and the relocated pages (~0.9 MB,
    // mostly .data.rel.ro) became private copies in every shim. Resolved
    // at link time instead, those pages stay shared with the page cache.
    // (Go binaries, k3s's among them, are linked this way too.)
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
