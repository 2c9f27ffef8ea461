//! Admission: named plugins that see every write after it is authorized
//! and before it is stored, in a fixed order (kube-apiserver's
//! `--enable-admission-plugins` order), in two phases as upstream runs
//! them. Mutating plugins ([`Mutating`], upstream's `MutationInterface`)
//! may change the object or refuse it; validating plugins ([`Validating`],
//! `ValidationInterface`) may only refuse it.
//!
//! The registry runs the chain on its write path, so a write is admitted
//! whoever makes it: a client over HTTP (the handler passes the user in
//! [`crate::server::registry::WriteOptions`]) or the server's own
//! controllers and scheduler (admitted as `system:apiserver`, upstream's
//! loopback client). A write goes, as upstream's does:
//!
//! decode → defaults → **mutating admission** → the strategy's create or
//! update preparation → validation → **validating admission** → store.
//!
//! Creates, updates (PUT, every patch type, `/status`, `/scale`,
//! `/finalize`), deletes, `pods/binding` and `pods/eviction` are admitted;
//! token requests and the streaming subresources (`exec`, `attach`,
//! `portforward`, `log`) are not yet. The built-in chain, in order
//! ([`Chain::builtin`]): [`namespace_lifecycle`], [`service_account`],
//! [`node_restriction`], [`priority`], [`default_toleration_seconds`],
//! then the slots of the mutating and validating webhooks (a later
//! issue), then [`rbac_escalation`]. Like upstream's, the built-in plugins
//! are mutating, but for the escalation check, which validates.

#![forbid(unsafe_code)]

pub mod default_toleration_seconds;
pub mod namespace_lifecycle;
pub mod node_restriction;
pub mod priority;
pub mod rbac_escalation;
pub mod service_account;

use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::api::catalog::Resource;
use crate::api::status::{ApiError, Details};
use crate::server::auth::User;

/// What a write does, as upstream's `admission.Operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// A write being admitted, as upstream's `admission.Attributes`.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub user: &'a User,
    pub operation: Operation,
    /// The resource written (`pods` for `pods/binding` too).
    pub resource: &'a Resource,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    /// The object's name (a create's generated name once generated).
    pub name: &'a str,
    /// The stored object, on update and delete.
    pub old_object: Option<&'a Value>,
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// Is the write to `plural` in `group` itself (not a subresource)?
    pub fn is_main(&self, group: &str, plural: &str) -> bool {
        self.is(group, plural) && self.subresource.is_none()
    }

    /// Is the write to `plural` in `group` (or one of its subresources)?
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.resource.group == group && self.resource.plural == plural
    }
}

/// A plugin's refusal, as upstream's `admission.NewForbidden`:
/// `pods "p" is forbidden: <why>`, naming the resource in the details.
pub fn forbidden(attrs: &Attributes<'_>, why: &str) -> ApiError {
    let res = attrs.resource;
    let qualified = if res.group.is_empty() {
        res.plural.clone()
    } else {
        format!("{}.{}", res.plural, res.group)
    };
    let message = if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {:?} is forbidden: {why}", attrs.name)
    };
    ApiError {
        details: Some(Box::new(Details {
            name: attrs.name.to_owned(),
            group: res.group.clone(),
            kind: res.plural.clone(),
            ..Details::default()
        })),
        ..ApiError::forbidden(message)
    }
}

/// What plugins may read (upstream's plugins read through informers or a
/// client). The registry provides it.
pub trait Objects: Send + Sync {
    /// One stored object.
    ///
    /// # Errors
    /// 404 when it does not exist.
    fn get<'a>(
        &'a self,
        group: &'a str,
        plural: &'a str,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value, ApiError>>;
}

/// One kind's objects as a plugin may read them without going to the
/// store: upstream's listers, kept by an informer. A cache may lag the
/// store; plugins fall back to [`Objects`] where that matters.
pub trait Cache: Send + Sync {
    /// The cached object at `key`: `name`, or `namespace/name`.
    fn get(&self, key: &str) -> Option<Arc<Value>>;
}

/// Where a cache given after the chain was built is found (upstream's
/// plugin initializers hand plugins their informers the same way).
pub type CacheSlot = Arc<OnceLock<Arc<dyn Cache>>>;

/// One admission plugin: a name, and a mutating half, a validating half
/// or both.
pub trait Plugin: Send + Sync {
    /// The plugin's name, as upstream names it.
    fn name(&self) -> &'static str;

    /// The mutating half, if the plugin has one.
    fn mutating(&self) -> Option<&dyn Mutating> {
        None
    }

    /// The validating half, if the plugin has one.
    fn validating(&self) -> Option<&dyn Validating> {
        None
    }
}

/// Upstream's `MutationInterface`. Asynchronous so that plugins which
/// read the store or call out (webhooks) fit.
pub trait Mutating: Send + Sync {
    /// Admit the write of `object` (`Null` for a delete), changing it if
    /// need be.
    ///
    /// # Errors
    /// The Status the client gets when the write is refused.
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a mut Value,
        objects: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// Upstream's `ValidationInterface`: sees the object as it will be stored.
pub trait Validating: Send + Sync {
    /// Refuse the write of `object` (`Null` for a delete), or not.
    ///
    /// # Errors
    /// The Status the client gets when the write is refused.
    fn validate<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a Value,
        objects: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// A plugin's answer that needs no waiting.
fn ready<'a>(verdict: Result<(), ApiError>) -> BoxFuture<'a, Result<(), ApiError>> {
    futures::future::ready(verdict).boxed()
}

/// Settings of the built-in plugins (flags of `orch server`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// tolerationSeconds of the default `node.kubernetes.io/not-ready`
    /// NoExecute toleration (DefaultTolerationSeconds).
    pub not_ready_toleration_seconds: i64,
    /// ... and of the `node.kubernetes.io/unreachable` one.
    pub unreachable_toleration_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 300,
        }
    }
}

/// The plugins, in order.
pub struct Chain {
    plugins: Vec<Box<dyn Plugin>>,
    /// The namespaces cache [`namespace_lifecycle`] reads, once given.
    namespaces: CacheSlot,
    /// The RBAC authorizer [`rbac_escalation`] asks, once given.
    rbac: rbac_escalation::RbacSlot,
}

impl Default for Chain {
    /// The built-in chain with default settings.
    fn default() -> Self {
        Self::builtin(Settings::default())
    }
}

impl Chain {
    pub fn new(plugins: Vec<Box<dyn Plugin>>) -> Self {
        Self {
            plugins,
            namespaces: CacheSlot::default(),
            rbac: rbac_escalation::RbacSlot::default(),
        }
    }

    /// Give [`rbac_escalation`] the RBAC authorizer. Until then only
    /// `system:masters` may write roles and bindings.
    pub fn use_rbac(&self, rbac: crate::server::auth::authz::rbac::Rbac) {
        let _ = self.rbac.set(rbac);
    }

    /// Give the plugins that read namespaces their cache (the
    /// controllers' namespace informer, once synced). Until then, and
    /// without it, they read the store.
    pub fn use_namespace_cache(&self, cache: Arc<dyn Cache>) {
        let _ = self.namespaces.set(cache);
    }

    /// The built-in plugins, in kube-apiserver's order. Upstream plugins
    /// orch has no use for are named where they would run.
    pub fn builtin(settings: Settings) -> Self {
        let namespaces = CacheSlot::default();
        let rbac = rbac_escalation::RbacSlot::default();
        let mut chain = Self::new(vec![
            Box::new(namespace_lifecycle::NamespaceLifecycle::new(
                namespaces.clone(),
            )),
            // LimitRanger: LimitRanges are not served.
            Box::new(service_account::ServiceAccount),
            Box::new(node_restriction::NodeRestriction),
            // TaintNodesByCondition: not here. New Nodes get no
            // `node.kubernetes.io/not-ready:NoSchedule` taint; the
            // scheduler treats a node that is not Ready as having it, and
            // the node lifecycle controller taints nodes that stop being
            // Ready.
            Box::new(priority::Priority),
            Box::new(default_toleration_seconds::DefaultTolerationSeconds::new(
                settings,
            )),
            // ---- MutatingAdmissionWebhook goes here (issue #24): after
            // the built-in mutating plugins, before any validating one.
            //
            // ---- ValidatingAdmissionWebhook goes here (issue #24).
            //
            // ResourceQuota: ResourceQuotas are not served.
            //
            // Upstream's RBAC storage refuses escalations before
            // admission; here they are refused last.
            Box::new(rbac_escalation::RbacEscalation::new(rbac.clone())),
        ]);
        chain.namespaces = namespaces;
        chain.rbac = rbac;
        chain
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// The mutating phase: every mutating plugin in order; the first
    /// refusal ends the write.
    ///
    /// # Errors
    /// The refusing plugin's Status.
    pub async fn admit(
        &self,
        attrs: &Attributes<'_>,
        object: &mut Value,
        objects: &dyn Objects,
    ) -> Result<(), ApiError> {
        for plugin in &self.plugins {
            if let Some(m) = plugin.mutating() {
                m.admit(attrs, object, objects)
                    .await
                    .inspect_err(|e| refused(plugin.name(), attrs, e))?;
            }
        }
        Ok(())
    }

    /// The validating phase: every validating plugin in order.
    ///
    /// # Errors
    /// The first refusing plugin's Status.
    pub async fn validate(
        &self,
        attrs: &Attributes<'_>,
        object: &Value,
        objects: &dyn Objects,
    ) -> Result<(), ApiError> {
        for plugin in &self.plugins {
            if let Some(v) = plugin.validating() {
                v.validate(attrs, object, objects)
                    .await
                    .inspect_err(|e| refused(plugin.name(), attrs, e))?;
            }
        }
        Ok(())
    }
}

fn refused(plugin: &str, attrs: &Attributes<'_>, e: &ApiError) {
    tracing::debug!(
        plugin,
        operation = ?attrs.operation,
        resource = %attrs.resource.plural,
        name = attrs.name,
        user = %attrs.user.name,
        message = %e.message,
        "admission refused"
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Stored objects for plugins to read, keyed `plural/namespace/name`.
    #[derive(Default)]
    pub(crate) struct Stored(pub HashMap<String, Value>);

    impl Objects for Stored {
        fn get<'a>(
            &'a self,
            _group: &'a str,
            plural: &'a str,
            namespace: Option<&'a str>,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Value, ApiError>> {
            let key = format!("{plural}/{}/{name}", namespace.unwrap_or_default());
            let found = self.0.get(&key).cloned().ok_or_else(|| {
                ApiError::not_found(crate::api::status::Target {
                    group: "",
                    resource: plural,
                    name,
                })
            });
            ready_value(found)
        }
    }

    fn ready_value<'a>(v: Result<Value, ApiError>) -> BoxFuture<'a, Result<Value, ApiError>> {
        futures::future::ready(v).boxed()
    }

    /// Attributes of a write by `user` to `plural` (core group unless
    /// `group/plural`).
    pub(crate) fn attrs<'a>(
        catalog: &'a crate::api::catalog::Catalog,
        user: &'a User,
        operation: Operation,
        resource: &str,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> Attributes<'a> {
        let (group, plural) = resource.split_once('/').unwrap_or(("", resource));
        Attributes {
            user,
            operation,
            resource: catalog.find(group, "v1", plural).expect("served"),
            subresource: None,
            namespace,
            name,
            old_object: None,
            dry_run: false,
        }
    }

    /// Records the phase it ran in, or refuses.
    struct Probe {
        name: &'static str,
        refuse: bool,
        log: std::sync::Arc<Mutex<Vec<String>>>,
    }

    impl Plugin for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn mutating(&self) -> Option<&dyn Mutating> {
            Some(self)
        }
        fn validating(&self) -> Option<&dyn Validating> {
            Some(self)
        }
    }

    impl Mutating for Probe {
        fn admit<'a>(
            &'a self,
            _: &'a Attributes<'a>,
            object: &'a mut Value,
            _: &'a dyn Objects,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            self.log
                .lock()
                .unwrap()
                .push(format!("admit {}", self.name));
            if self.refuse {
                return ready(Err(ApiError::forbidden(format!("{} says no", self.name))));
            }
            object["metadata"]["labels"][self.name] = json!("seen");
            ready(Ok(()))
        }
    }

    impl Validating for Probe {
        fn validate<'a>(
            &'a self,
            _: &'a Attributes<'a>,
            _: &'a Value,
            _: &'a dyn Objects,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            self.log
                .lock()
                .unwrap()
                .push(format!("validate {}", self.name));
            ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn phases_run_plugins_in_order_and_the_first_refusal_ends_the_write() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let attrs = attrs(
            &catalog,
            &user,
            Operation::Create,
            "pods",
            Some("default"),
            "p",
        );
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let probe = |name, refuse| -> Box<dyn Plugin> {
            Box::new(Probe {
                name,
                refuse,
                log: log.clone(),
            })
        };
        let chain = Chain::new(vec![probe("a", false), probe("b", false)]);
        assert_eq!(chain.names(), ["a", "b"]);
        let mut pod = json!({"metadata": {"name": "p"}});
        chain
            .admit(&attrs, &mut pod, &Stored::default())
            .await
            .unwrap();
        chain
            .validate(&attrs, &pod, &Stored::default())
            .await
            .unwrap();
        assert_eq!(pod["metadata"]["labels"], json!({"a": "seen", "b": "seen"}));
        assert_eq!(
            *log.lock().unwrap(),
            ["admit a", "admit b", "validate a", "validate b"]
        );

        log.lock().unwrap().clear();
        let chain = Chain::new(vec![probe("a", false), probe("b", true), probe("c", false)]);
        let mut pod = json!({"metadata": {"name": "p"}});
        let err = chain
            .admit(&attrs, &mut pod, &Stored::default())
            .await
            .unwrap_err();
        assert_eq!(err.message, "b says no");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"a": "seen"}),
            "c never ran"
        );
        assert_eq!(*log.lock().unwrap(), ["admit a", "admit b"]);
    }

    /// Records every write it is asked about, in both phases.
    struct Recorder(std::sync::Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn record(&self, phase: &str, a: &Attributes<'_>, object: &Value) {
            let sub = a.subresource.map(|s| format!("/{s}")).unwrap_or_default();
            self.0.lock().unwrap().push(format!(
                "{phase} {:?} {}{sub} {}/{} by {} (object: {}, old: {})",
                a.operation,
                a.resource.plural,
                a.namespace.unwrap_or("-"),
                a.name,
                a.user.name,
                object.get("kind").and_then(Value::as_str).unwrap_or("none"),
                a.old_object.is_some(),
            ));
        }
    }

    impl Plugin for Recorder {
        fn name(&self) -> &'static str {
            "Recorder"
        }
        fn mutating(&self) -> Option<&dyn Mutating> {
            Some(self)
        }
        fn validating(&self) -> Option<&dyn Validating> {
            Some(self)
        }
    }

    impl Mutating for Recorder {
        fn admit<'a>(
            &'a self,
            attrs: &'a Attributes<'a>,
            object: &'a mut Value,
            _: &'a dyn Objects,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            self.record("admit", attrs, object);
            ready(Ok(()))
        }
    }

    impl Validating for Recorder {
        fn validate<'a>(
            &'a self,
            attrs: &'a Attributes<'a>,
            object: &'a Value,
            _: &'a dyn Objects,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            self.record("validate", attrs, object);
            ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn every_write_through_the_registry_is_admitted() {
        use crate::api::patch::PatchType;
        use crate::server::registry::{DeleteOptions, Registry, ServiceRanges, WriteOptions};
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (_dir, store) = crate::store::test_util::temp_store();
        let chain = Chain::new(vec![Box::new(Recorder(log.clone()))]);
        let registry = Registry::new(store, ServiceRanges::default(), chain)
            .await
            .unwrap();
        let ns = registry.resource("", "namespaces").unwrap().clone();
        let pods = registry.resource("", "pods").unwrap().clone();
        let ours = WriteOptions::default();
        let theirs = WriteOptions {
            user: Some(User::service_account("default", "app")),
            ..WriteOptions::default()
        };
        let default = Some("default");
        registry
            .create(&ns, None, json!({"metadata": {"name": "default"}}), &ours)
            .await
            .unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        registry.create(&pods, default, pod, &theirs).await.unwrap();
        let mut stored = registry.get(&pods, default, "p").await.unwrap();
        stored["metadata"]["labels"] = json!({"put": "yes"});
        registry
            .update(&pods, default, "p", stored, None, &theirs)
            .await
            .unwrap();
        let label = json!({"metadata": {"labels": {"patched": "yes"}}});
        for patch_type in [PatchType::Merge, PatchType::Strategic] {
            registry
                .patch(&pods, default, "p", (patch_type, &label), None, &ours)
                .await
                .unwrap();
        }
        let op = json!([{"op": "add", "path": "/metadata/labels/json", "value": "yes"}]);
        registry
            .patch(&pods, default, "p", (PatchType::Json, &op), None, &ours)
            .await
            .unwrap();
        let status = json!({"status": {"message": "hi"}});
        registry
            .patch(
                &pods,
                default,
                "p",
                (PatchType::Merge, &status),
                Some("status"),
                &theirs,
            )
            .await
            .unwrap();
        let binding = json!({"kind": "Binding", "target": {"kind": "Node", "name": "n"}});
        registry
            .bind("default", "p", &binding, &ours)
            .await
            .unwrap();
        let eviction = DeleteOptions {
            user: Some(User::service_account("default", "app")),
            ..DeleteOptions::default()
        };
        registry
            .evict("default", "p", &json!({"kind": "Eviction"}), &eviction)
            .await
            .unwrap();
        // The bound pod is deleted gracefully, so it is still there.
        let pods = registry.resource("", "pods").unwrap().clone();
        registry
            .delete(&pods, Some("default"), "p", &eviction)
            .await
            .unwrap();

        let app = "system:serviceaccount:default:app";
        let loopback = "system:apiserver";
        let writes = [
            format!("Create namespaces -/default by {loopback} (object: Namespace, old: false)"),
            format!("Create pods default/p by {app} (object: Pod, old: false)"),
            format!("Update pods default/p by {app} (object: Pod, old: true)"),
            format!("Update pods default/p by {loopback} (object: Pod, old: true)"),
            format!("Update pods default/p by {loopback} (object: Pod, old: true)"),
            format!("Update pods default/p by {loopback} (object: Pod, old: true)"),
            format!("Update pods/status default/p by {app} (object: Pod, old: true)"),
            format!("Create pods/binding default/p by {loopback} (object: Binding, old: false)"),
            // Only the eviction: its delete of the pod is not admitted again.
            format!("Create pods/eviction default/p by {app} (object: Eviction, old: false)"),
            format!("Delete pods default/p by {app} (object: none, old: true)"),
        ];
        let want: Vec<String> = writes
            .iter()
            .flat_map(|w| [format!("admit {w}"), format!("validate {w}")])
            .collect();
        assert_eq!(*log.lock().unwrap(), want);
    }

    #[test]
    fn the_builtin_chain_has_upstreams_order() {
        assert_eq!(
            Chain::default().names(),
            [
                "NamespaceLifecycle",
                "ServiceAccount",
                "NodeRestriction",
                "Priority",
                "DefaultTolerationSeconds",
                "RBACEscalation",
            ]
        );
    }

    #[test]
    fn refusals_name_the_resource_as_upstream_does() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let mut a = attrs(
            &catalog,
            &user,
            Operation::Create,
            "apps/deployments",
            Some("default"),
            "web",
        );
        let err = forbidden(&a, "no");
        assert_eq!(
            (err.code, err.reason, err.message.as_str()),
            (
                403,
                "Forbidden",
                "deployments.apps \"web\" is forbidden: no"
            )
        );
        let details = err.details.unwrap();
        assert_eq!(
            (
                details.name.as_str(),
                details.group.as_str(),
                details.kind.as_str()
            ),
            ("web", "apps", "deployments")
        );
        a.name = "";
        assert_eq!(
            forbidden(&a, "no").message,
            "deployments.apps is forbidden: no"
        );
    }
}
