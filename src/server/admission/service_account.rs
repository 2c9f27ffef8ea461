//! ServiceAccount: a pod runs as a service account (`default` unless it
//! names one) and, unless it opts out (`automountServiceAccountToken:
//! false`), gets a projected `kube-api-access-xxxxx` volume (a bound
//! token, `kube-root-ca.crt`'s `ca.crt`, the namespace) mounted read-only
//! at [`SA_MOUNT`] in every container that has nothing there.
//!
//! As orch did before, the service account is not looked up, and an
//! update that drops `serviceAccountName` is admitted again as a create
//! would be (upstream mutates creates only).

use serde_json::{Map, Value, json};

use super::{Attributes, Mutating, Objects, Operation, Plugin, ready};
use crate::api::status::ApiError;
use futures::future::BoxFuture;

/// Where pods find their service account's token, CA and namespace.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Gives pods their service account and its token.
pub struct ServiceAccount;

impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn mutating(&self) -> Option<&dyn Mutating> {
        Some(self)
    }
}

impl Mutating for ServiceAccount {
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a mut Value,
        _: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        let admitted = match attrs.operation {
            Operation::Create => true,
            Operation::Update => object.pointer("/spec/serviceAccountName").is_none(),
            Operation::Delete => false,
        };
        if admitted
            && attrs.is_main("", "pods")
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            let sa = spec
                .get("serviceAccountName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_owned();
            spec.insert("serviceAccountName".into(), json!(sa));
            spec.insert("serviceAccount".into(), json!(sa));
            mount_token(spec);
        }
        ready(Ok(()))
    }
}

/// The projected token volume and its mounts, unless the pod opts out or
/// already has one.
fn mount_token(spec: &mut Map<String, Value>) {
    if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return;
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(list) = volumes.as_array_mut() else {
        return;
    };
    if list.iter().any(|v| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    }) {
        return;
    }
    let suffix: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .filter(char::is_ascii_lowercase)
        .chain("bcdfg".chars())
        .take(5)
        .collect();
    let name = format!("kube-api-access-{suffix}");
    list.push(json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}));
    for key in ["initContainers", "containers"] {
        for c in spec
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = c
                .as_object_mut()
                .map(|o| o.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(m) = mounts.and_then(Value::as_array_mut)
                && !m.iter().any(|x| x["mountPath"] == SA_MOUNT)
            {
                m.push(json!({"name": name, "mountPath": SA_MOUNT, "readOnly": true}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admission::tests::{Stored, attrs};
    use crate::server::auth::User;

    async fn admit(operation: Operation, plural: &str, sub: Option<&str>, mut obj: Value) -> Value {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let mut a = attrs(&catalog, &user, operation, plural, Some("default"), "p");
        a.subresource = sub;
        ServiceAccount
            .admit(&a, &mut obj, &Stored::default())
            .await
            .unwrap();
        obj
    }

    fn token_volume(pod: &Value) -> Option<String> {
        pod["spec"]["volumes"]
            .as_array()?
            .iter()
            .find_map(|v| {
                v["name"]
                    .as_str()
                    .filter(|n| n.starts_with("kube-api-access-"))
            })
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn pods_get_their_service_account_and_its_token() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SA_MOUNT}]}],
        }});
        let pod = admit(Operation::Create, "pods", None, pod).await;
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["serviceAccount"], "default");
        let volume = token_volume(&pod).expect("a kube-api-access volume");
        assert_eq!(volume.len(), "kube-api-access-".len() + 5);
        let sources = &pod["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        let mount = json!([{"name": volume, "mountPath": SA_MOUNT, "readOnly": true}]);
        assert_eq!(pod["spec"]["initContainers"][0]["volumeMounts"], mount);
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"], mount);
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"],
            json!([{"name": "own", "mountPath": SA_MOUNT}]),
            "a container with something at the mount path keeps it"
        );
    }

    #[tokio::test]
    async fn what_is_admitted_and_what_is_left_alone() {
        let named = json!({"spec": {"serviceAccountName": "robot", "containers": [{"name": "c"}]}});
        let opted_out =
            json!({"spec": {"automountServiceAccountToken": false, "containers": [{"name": "c"}]}});
        let has_token = json!({"spec": {"volumes": [{"name": "kube-api-access-abcde"}], "containers": [{"name": "c"}]}});
        let bare = json!({"spec": {"containers": [{"name": "c"}]}});
        // (operation, resource, subresource, pod, service account, gets a token volume)
        #[rustfmt::skip]
        let cases = [
            (Operation::Create, "pods", None, named.clone(), Some("robot"), true),
            (Operation::Create, "pods", None, opted_out, Some("default"), false),
            (Operation::Create, "pods", None, has_token.clone(), Some("default"), false),
            // An update that dropped the service account is admitted again;
            // one that kept it is left alone.
            (Operation::Update, "pods", None, bare.clone(), Some("default"), true),
            (Operation::Update, "pods", None, json!({"spec": {"serviceAccountName": "robot"}}), Some("robot"), false),
            // Not pods themselves.
            (Operation::Create, "pods", Some("binding"), bare.clone(), None, false),
            (Operation::Update, "pods", Some("status"), bare.clone(), None, false),
            (Operation::Create, "apps/deployments", None, bare.clone(), None, false),
            (Operation::Delete, "pods", None, bare, None, false),
        ];
        for (operation, plural, sub, pod, sa, token) in cases {
            let before = pod.clone();
            let pod = admit(operation, plural, sub, pod).await;
            let what = format!("{operation:?} {plural} {sub:?} {before}");
            assert_eq!(pod["spec"]["serviceAccountName"].as_str(), sa, "{what}");
            let fresh = token_volume(&pod).filter(|v| v != "kube-api-access-abcde");
            assert_eq!(fresh.is_some(), token, "{what}");
        }
    }
}
