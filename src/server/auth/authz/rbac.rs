//! The RBAC authorizer: what Roles, ClusterRoles and their bindings allow
//! (upstream's `plugin/pkg/auth/authorizer/rbac`).
//!
//! Decisions come from an [`Index`] kept in memory and fed by the
//! informers of the four kinds: bindings are indexed by subject (a user
//! name or a group; a ServiceAccount subject is its user name), so a
//! request looks only at the bindings of its user and groups, never scans.
//!
//! As upstream:
//! - ClusterRoleBindings apply everywhere; RoleBindings only to requests in
//!   their namespace (never to cluster-scoped or non-resource requests);
//! - a RoleBinding may grant a ClusterRole's rules in its namespace;
//! - RBAC never denies: what it does not allow is left to the chain, with
//!   the reason `RBAC: <errors>` when a binding of the user's names a role
//!   that does not exist (a binding to a missing role grants nothing);
//! - an allow's reason names the binding, role and subject that allowed it
//!   (what a SubjectAccessReview reports).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Authorizer, Decision, NonResourceRule, ResourceRule, Rules};
use crate::api::meta::meta_str;
use crate::api::rbac::{Rule, rules_of};
use crate::server::auth::User;
use crate::server::informer::{Change, Informer, object_key};

/// The four kinds RBAC reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

/// Who a binding's subject matches: a user name (ServiceAccounts as
/// `system:serviceaccount:<ns>:<name>`) or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Group(String),
}

impl Subject {
    fn matches(&self, user: &User) -> bool {
        match self {
            Subject::User(name) => *name == user.name,
            Subject::Group(group) => user.groups.contains(group),
        }
    }
}

/// One binding, as the index keeps it.
#[derive(Debug)]
struct Binding {
    name: String,
    /// Empty for a ClusterRoleBinding.
    namespace: String,
    role_kind: String,
    role_name: String,
    /// Each subject that can match anyone, with upstream's description of
    /// it (`User "u"`, `ServiceAccount "name/ns"`).
    subjects: Vec<(Subject, String)>,
}

impl Binding {
    fn from_value(obj: &Value) -> Self {
        let namespace = meta_str(obj, "namespace").to_owned();
        let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let subjects = obj
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let (kind, name) = (str_of(s, "kind"), str_of(s, "name"));
                match kind.as_str() {
                    "User" => Some((Subject::User(name.clone()), format!("User {name:?}"))),
                    "Group" => Some((Subject::Group(name.clone()), format!("Group {name:?}"))),
                    "ServiceAccount" => {
                        // Upstream defaults the subject's namespace to the
                        // binding's; in a ClusterRoleBinding one without a
                        // namespace matches no one.
                        let ns = match str_of(s, "namespace") {
                            ns if ns.is_empty() => namespace.clone(),
                            ns => ns,
                        };
                        (!ns.is_empty()).then(|| {
                            (
                                Subject::User(format!("system:serviceaccount:{ns}:{name}")),
                                format!("ServiceAccount {:?}", format!("{name}/{ns}")),
                            )
                        })
                    }
                    _ => None,
                }
            })
            .collect();
        let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
        Self {
            name: meta_str(obj, "name").to_owned(),
            namespace,
            role_kind: str_of(role_ref, "kind"),
            role_name: str_of(role_ref, "name"),
            subjects,
        }
    }

    /// Upstream's description of the binding's grant to `subject`, as an
    /// allow's reason gives it.
    fn describe(&self, subject: &str) -> String {
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {:?} of {} {:?} to {subject}",
                self.name, self.role_kind, self.role_name
            )
        } else {
            format!(
                "RoleBinding {:?} of {} {:?} to {subject}",
                format!("{}/{}", self.name, self.namespace),
                self.role_kind,
                self.role_name
            )
        }
    }
}

/// Roles and bindings, with bindings indexed by subject.
#[derive(Debug, Default)]
pub struct Index {
    /// ClusterRoles by name, Roles by `namespace/name`.
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    roles: HashMap<String, Arc<[Rule]>>,
    /// By `(namespace, name)`, namespace empty for ClusterRoleBindings.
    bindings: HashMap<(String, String), Arc<Binding>>,
    /// The bindings naming each user and each group, ordered by namespace
    /// and name (two maps, so a request looks them up without copying
    /// its names).
    by_user: HashMap<String, BindingIds>,
    by_group: HashMap<String, BindingIds>,
}

/// Bindings by `(namespace, name)`, namespace empty for cluster ones.
type BindingIds = BTreeSet<(String, String)>;

/// Where a rule came from, or why a binding gave none.
enum Visit<'a> {
    Rule(&'a Binding, &'a str, &'a Rule),
    Error(String),
}

impl Index {
    /// Record `obj` (the object's latest state) or its deletion (`None`),
    /// `key` being the informer's `namespace/name` or `name`.
    pub fn apply(&mut self, kind: Kind, key: &str, obj: Option<&Value>) {
        match kind {
            Kind::Role | Kind::ClusterRole => {
                let roles = if kind == Kind::Role {
                    &mut self.roles
                } else {
                    &mut self.cluster_roles
                };
                match obj {
                    Some(obj) => {
                        roles.insert(key.to_owned(), rules_of(obj).into());
                    }
                    None => {
                        roles.remove(key);
                    }
                }
            }
            Kind::RoleBinding | Kind::ClusterRoleBinding => {
                let id = match key.split_once('/') {
                    Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                    None => (String::new(), key.to_owned()),
                };
                if let Some(old) = self.bindings.remove(&id) {
                    for (subject, _) in &old.subjects {
                        let (map, name) = self.subject_map(subject);
                        if let Some(set) = map.get_mut(name) {
                            set.remove(&id);
                            if set.is_empty() {
                                map.remove(name);
                            }
                        }
                    }
                }
                if let Some(obj) = obj {
                    let binding = Binding::from_value(obj);
                    for (subject, _) in &binding.subjects {
                        let (map, name) = self.subject_map(subject);
                        map.entry(name.to_owned()).or_default().insert(id.clone());
                    }
                    self.bindings.insert(id, Arc::new(binding));
                }
            }
        }
    }

    /// The rules of the role `binding` refers to, or upstream's error.
    fn role_rules(&self, binding: &Binding) -> Result<&[Rule], String> {
        match binding.role_kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&binding.role_name)
                .map(|r| &**r)
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io {:?} not found",
                        binding.role_name
                    )
                }),
            "Role" => self
                .roles
                .get(&format!("{}/{}", binding.namespace, binding.role_name))
                .map(|r| &**r)
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io {:?} not found",
                        binding.role_name
                    )
                }),
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// The index of `subject`'s kind, and its name.
    fn subject_map<'s>(
        &mut self,
        subject: &'s Subject,
    ) -> (&mut HashMap<String, BindingIds>, &'s str) {
        match subject {
            Subject::User(name) => (&mut self.by_user, name),
            Subject::Group(name) => (&mut self.by_group, name),
        }
    }

    /// Every rule granted to `user` in `namespace` (cluster-wide ones first,
    /// then the namespace's), until `visit` returns false (upstream's
    /// `VisitRulesFor`).
    fn visit(&self, user: &User, namespace: &str, mut visit: impl FnMut(Visit<'_>) -> bool) {
        let sets = std::iter::once(self.by_user.get(&user.name))
            .chain(user.groups.iter().map(|g| self.by_group.get(g)))
            .flatten();
        let mut ids: BTreeSet<&(String, String)> = BTreeSet::new();
        for set in sets {
            ids.extend(
                set.iter()
                    .filter(|(ns, _)| ns.is_empty() || (!namespace.is_empty() && ns == namespace)),
            );
        }
        // Cluster-wide bindings ("" sorts first), then the namespace's.
        for id in ids {
            let Some(binding) = self.bindings.get(id) else {
                continue;
            };
            let Some((_, subject)) = binding.subjects.iter().find(|(s, _)| s.matches(user)) else {
                continue;
            };
            match self.role_rules(binding) {
                Ok(rules) => {
                    for rule in rules {
                        if !visit(Visit::Rule(binding, subject, rule)) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if !visit(Visit::Error(e)) {
                        return;
                    }
                }
            }
        }
    }

    /// Upstream's decision: allowed by the first rule that matches, with
    /// the binding that granted it as the reason; otherwise no opinion,
    /// with the errors met on the way.
    pub fn decide(&self, attrs: &Attributes) -> Decision {
        let mut allowed = None;
        let mut errors = Vec::new();
        self.visit(&attrs.user, &attrs.namespace, |v| match v {
            Visit::Rule(binding, subject, rule) => {
                let allows = if attrs.resource_request {
                    rule.allows_resource(
                        &attrs.verb,
                        &attrs.api_group,
                        &attrs.resource,
                        &attrs.subresource,
                        &attrs.name,
                    )
                } else {
                    rule.allows_path(&attrs.verb, &attrs.path)
                };
                if allows {
                    allowed = Some(format!("RBAC: allowed by {}", binding.describe(subject)));
                }
                !allows
            }
            Visit::Error(e) => {
                errors.push(e);
                true
            }
        });
        match allowed {
            Some(reason) => Decision::Allow(reason),
            None => Decision::NoOpinion(match errors.as_slice() {
                [] => String::new(),
                [one] => format!("RBAC: {one}"),
                many => format!("RBAC: [{}]", many.join(", ")),
            }),
        }
    }

    /// Every rule `user` holds in `namespace`, and the errors met (upstream's
    /// `RulesFor`).
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let (mut rules, mut errors) = (Vec::new(), Vec::new());
        self.visit(user, namespace, |v| {
            match v {
                Visit::Rule(_, _, rule) => rules.push(rule.clone()),
                Visit::Error(e) => errors.push(e),
            }
            true
        });
        (rules, errors)
    }

    /// The rules of the role a binding in `namespace` (empty for a
    /// ClusterRoleBinding) refers to as `kind` `name`, if it exists.
    pub fn role_ref_rules(&self, kind: &str, name: &str, namespace: &str) -> Option<Arc<[Rule]>> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name).cloned(),
            "Role" => self.roles.get(&format!("{namespace}/{name}")).cloned(),
            _ => None,
        }
    }
}

/// The informers RBAC's index follows.
pub struct Sources {
    pub roles: Arc<Informer>,
    pub cluster_roles: Arc<Informer>,
    pub role_bindings: Arc<Informer>,
    pub cluster_role_bindings: Arc<Informer>,
}

impl Sources {
    fn each(&self) -> [(Kind, &Arc<Informer>); 4] {
        [
            (Kind::Role, &self.roles),
            (Kind::ClusterRole, &self.cluster_roles),
            (Kind::RoleBinding, &self.role_bindings),
            (Kind::ClusterRoleBinding, &self.cluster_role_bindings),
        ]
    }
}

/// Authorizes by the RBAC index.
#[derive(Clone)]
pub struct Rbac {
    index: Arc<RwLock<Index>>,
}

impl Rbac {
    /// Index what `sources` hold now and follow their changes from then on
    /// (until the informers stop). The informers should have synced.
    pub fn start(sources: Sources) -> Self {
        let index = Arc::new(RwLock::new(Index::default()));
        for (kind, informer) in sources.each() {
            let mut rx = informer.subscribe();
            // Subscribed before listing: a change seen twice is applied
            // twice with the same outcome; none is missed.
            Self::reload(&index, kind, informer);
            let (index, informer) = (index.clone(), informer.clone());
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(Change { key, new, .. }) => index
                            .write()
                            .expect("rbac index lock")
                            .apply(kind, &key, new.as_deref()),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            Self::reload(&index, kind, &informer);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        Self { index }
    }

    /// Replace everything of `kind` with what `informer` holds.
    fn reload(index: &RwLock<Index>, kind: Kind, informer: &Informer) {
        let objects = informer.list(None);
        let mut index = index.write().expect("rbac index lock");
        let stale: Vec<String> = match kind {
            Kind::Role => index.roles.keys().cloned().collect(),
            Kind::ClusterRole => index.cluster_roles.keys().cloned().collect(),
            Kind::RoleBinding | Kind::ClusterRoleBinding => index
                .bindings
                .keys()
                .filter(|(ns, _)| ns.is_empty() == (kind == Kind::ClusterRoleBinding))
                .map(|(ns, name)| {
                    if ns.is_empty() {
                        name.clone()
                    } else {
                        format!("{ns}/{name}")
                    }
                })
                .collect(),
        };
        for key in stale {
            index.apply(kind, &key, None);
        }
        for obj in objects {
            index.apply(kind, &object_key(&obj), Some(&obj));
        }
    }

    /// An authorizer over the bootstrap policy alone (aggregated roles
    /// aggregated), for tests.
    #[cfg(test)]
    pub(crate) fn bootstrap() -> Self {
        let policy = crate::server::auth::policy::policy();
        let mut roles: Vec<Value> = policy.cluster_roles.clone();
        // admin aggregates edit, which aggregates view: a few rounds settle.
        for _ in 0..3 {
            let shared: Vec<Arc<Value>> = roles.iter().cloned().map(Arc::new).collect();
            for role in &mut roles {
                if role.get("aggregationRule").is_some() {
                    role["rules"] = serde_json::json!(
                        crate::server::controllers::clusterroleaggregation::aggregate(
                            role, &shared
                        )
                    );
                }
            }
        }
        let mut index = Index::default();
        for (kind, objs) in [
            (Kind::ClusterRole, &roles),
            (Kind::Role, &policy.roles),
            (Kind::ClusterRoleBinding, &policy.cluster_role_bindings),
            (Kind::RoleBinding, &policy.role_bindings),
        ] {
            for obj in objs {
                index.apply(kind, &object_key(obj), Some(obj));
            }
        }
        Self {
            index: Arc::new(RwLock::new(index)),
        }
    }

    /// Add `obj` to the index, for tests.
    #[cfg(test)]
    pub(crate) fn apply(&self, kind: Kind, obj: &Value) {
        self.index
            .write()
            .expect("rbac index lock")
            .apply(kind, &object_key(obj), Some(obj));
    }

    /// Read the index.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("rbac index lock")
    }
}

impl Authorizer for Rbac {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> BoxFuture<'a, Decision> {
        let decision = self.read().decide(attrs);
        async move { decision }.boxed()
    }

    /// Each rule as a resource rule when it names resources and as a
    /// non-resource rule when it names URLs (upstream's `RulesFor`); the
    /// list is complete.
    fn rules_for(&self, user: &User, namespace: &str) -> Rules {
        let (rules, errors) = self.read().rules_for(user, namespace);
        let mut out = Rules {
            errors,
            ..Rules::default()
        };
        for rule in rules {
            if !rule.resources.is_empty() {
                out.resource.push(ResourceRule {
                    verbs: rule.verbs.clone(),
                    api_groups: rule.api_groups.clone(),
                    resources: rule.resources.clone(),
                    resource_names: rule.resource_names.clone(),
                });
            }
            if !rule.non_resource_urls.is_empty() {
                out.non_resource.push(NonResourceRule {
                    verbs: rule.verbs,
                    non_resource_urls: rule.non_resource_urls,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authz::tests::{non_resource, resource};
    use serde_json::json;

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "rules": rules})
    }

    fn binding(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
               "subjects": subjects})
    }

    fn index() -> Index {
        let mut index = Index::default();
        let view = json!([{"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods", "configmaps"]}]);
        index.apply(Kind::ClusterRole, "view", Some(&role("", "view", view)));
        let edit = json!([{"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]}]);
        index.apply(Kind::Role, "team/edit", Some(&role("team", "edit", edit)));
        let health = json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]}]);
        index.apply(
            Kind::ClusterRole,
            "health",
            Some(&role("", "health", health)),
        );
        index.apply(
            Kind::RoleBinding,
            "team/alice-view",
            Some(&binding(
                "team",
                "alice-view",
                "ClusterRole",
                "view",
                json!([{"kind": "User", "name": "alice"}]),
            )),
        );
        index.apply(
            Kind::RoleBinding,
            "team/app-edit",
            Some(&binding(
                "team",
                "app-edit",
                "Role",
                "edit",
                json!([{"kind": "ServiceAccount", "name": "app"}]),
            )),
        );
        index.apply(
            Kind::ClusterRoleBinding,
            "devs-health",
            Some(&binding(
                "",
                "devs-health",
                "ClusterRole",
                "health",
                json!([{"kind": "Group", "name": "devs"}]),
            )),
        );
        index
    }

    #[test]
    fn bindings_grant_their_role_s_rules_where_they_apply() {
        let index = index();
        let alice = User::new("alice", &["devs"]);
        let app = User::service_account("team", "app");
        let other_app = User::service_account("other", "app");
        let allow = |why: &str| Decision::Allow(why.into());
        let no = Decision::NoOpinion(String::new());
        let by_alice = "RBAC: allowed by RoleBinding \"alice-view/team\" of ClusterRole \"view\" to User \"alice\"";
        #[rustfmt::skip]
        let cases = [
            // A RoleBinding of a ClusterRole: its rules, in the namespace only.
            (resource(&alice, "list", "", "pods", "team", ""), allow(by_alice)),
            (resource(&alice, "get", "", "configmaps", "team", "c"), allow(by_alice)),
            (resource(&alice, "list", "", "pods", "default", ""), no.clone()),
            (resource(&alice, "list", "", "pods", "", ""), no.clone()),
            (resource(&alice, "delete", "", "pods", "team", "p"), no.clone()),
            (resource(&alice, "get", "", "pods/log", "team", "p"), no.clone()),
            (resource(&alice, "get", "apps", "pods", "team", "p"), no.clone()),
            // A ServiceAccount subject without a namespace is the binding's.
            (resource(&app, "delete", "apps", "deployments", "team", "web"),
             allow("RBAC: allowed by RoleBinding \"app-edit/team\" of Role \"edit\" to ServiceAccount \"app/team\"")),
            (resource(&app, "update", "apps", "deployments/scale", "team", "web"), Decision::Allow(
                "RBAC: allowed by RoleBinding \"app-edit/team\" of Role \"edit\" to ServiceAccount \"app/team\"".into())),
            (resource(&app, "update", "apps", "deployments/status", "team", "web"), no.clone()),
            (resource(&other_app, "get", "apps", "deployments", "other", "web"), no.clone()),
            // A group's ClusterRoleBinding: paths, exact or by prefix.
            (non_resource(&alice, "get", "/healthz"),
             allow("RBAC: allowed by ClusterRoleBinding \"devs-health\" of ClusterRole \"health\" to Group \"devs\"")),
            (non_resource(&alice, "get", "/api/v1"), allow("RBAC: allowed by ClusterRoleBinding \"devs-health\" of ClusterRole \"health\" to Group \"devs\"")),
            (non_resource(&alice, "get", "/api"), no.clone()),
            (non_resource(&alice, "post", "/healthz"), no.clone()),
            (non_resource(&app, "get", "/healthz"), no.clone()),
        ];
        for (attrs, want) in cases {
            assert_eq!(index.decide(&attrs), want, "{attrs:?}");
        }
    }

    #[test]
    fn a_binding_to_a_missing_role_grants_nothing_and_says_so() {
        let mut index = index();
        let bob = User::new("bob", &[]);
        index.apply(
            Kind::ClusterRoleBinding,
            "bob-admin",
            Some(&binding(
                "",
                "bob-admin",
                "ClusterRole",
                "no-such",
                json!([{"kind": "User", "name": "bob"}]),
            )),
        );
        index.apply(
            Kind::RoleBinding,
            "team/bob-edit",
            Some(&binding(
                "team",
                "bob-edit",
                "Role",
                "gone",
                json!([{"kind": "User", "name": "bob"}]),
            )),
        );
        let attrs = resource(&bob, "get", "", "pods", "", "p");
        assert_eq!(
            index.decide(&attrs),
            Decision::NoOpinion(
                "RBAC: clusterrole.rbac.authorization.k8s.io \"no-such\" not found".into()
            )
        );
        let attrs = resource(&bob, "get", "", "pods", "team", "p");
        assert_eq!(
            index.decide(&attrs),
            Decision::NoOpinion(
                "RBAC: [clusterrole.rbac.authorization.k8s.io \"no-such\" not found, role.rbac.authorization.k8s.io \"gone\" not found]".into()
            )
        );
        // The role appears: the binding grants it at once.
        index.apply(
            Kind::Role,
            "team/gone",
            Some(&role(
                "team",
                "gone",
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
            )),
        );
        assert!(matches!(index.decide(&attrs), Decision::Allow(_)));
    }

    #[test]
    fn changes_and_deletions_leave_no_trace() {
        let mut index = index();
        let alice = User::new("alice", &["devs"]);
        let attrs = resource(&alice, "list", "", "pods", "team", "");
        // The binding now names someone else.
        index.apply(
            Kind::RoleBinding,
            "team/alice-view",
            Some(&binding(
                "team",
                "alice-view",
                "ClusterRole",
                "view",
                json!([{"kind": "User", "name": "carol"}]),
            )),
        );
        assert_eq!(index.decide(&attrs), Decision::NoOpinion(String::new()));
        let carol = User::new("carol", &[]);
        assert!(matches!(
            index.decide(&resource(&carol, "list", "", "pods", "team", "")),
            Decision::Allow(_)
        ));
        index.apply(Kind::RoleBinding, "team/alice-view", None);
        assert_eq!(
            index.decide(&resource(&carol, "list", "", "pods", "team", "")),
            Decision::NoOpinion(String::new())
        );
        assert!(!index.by_user.contains_key("carol"));
        // A role's rules shrink: so does what its bindings grant.
        index.apply(
            Kind::ClusterRole,
            "health",
            Some(&role("", "health", json!([]))),
        );
        assert_eq!(
            index.decide(&non_resource(&alice, "get", "/healthz")),
            Decision::NoOpinion(String::new())
        );
    }

    #[test]
    fn rules_for_lists_cluster_wide_then_namespaced_grants() {
        let index = index();
        let alice = User::new("alice", &["devs"]);
        let (rules, errors) = index.rules_for(&alice, "team");
        assert!(errors.is_empty());
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].non_resource_urls, ["/healthz", "/api/*"]);
        assert_eq!(rules[1].resources, ["pods", "configmaps"]);
        let (rules, _) = index.rules_for(&alice, "default");
        assert_eq!(rules.len(), 1);
    }

    #[tokio::test]
    async fn the_bootstrap_policy_lets_everyone_ask_who_they_are_and_read_discovery() {
        let rbac = Rbac::bootstrap();
        let app = User::service_account("default", "app");
        let node = User::new("system:node:a", &["system:nodes"]);
        let stranger = User::anonymous();
        let r = |u: &User, verb: &str, group: &str, res: &str, ns: &str| {
            resource(u, verb, group, res, ns, "")
        };
        #[rustfmt::skip]
        let cases = [
            // system:basic-user, for every authenticated user.
            (r(&app, "create", "authentication.k8s.io", "selfsubjectreviews", ""), true),
            (r(&app, "create", "authorization.k8s.io", "selfsubjectaccessreviews", ""), true),
            (r(&app, "create", "authorization.k8s.io", "selfsubjectrulesreviews", ""), true),
            (r(&node, "create", "authentication.k8s.io", "selfsubjectreviews", ""), true),
            // Only create, only those, only in their groups.
            (r(&app, "list", "authentication.k8s.io", "selfsubjectreviews", ""), false),
            (r(&app, "create", "authorization.k8s.io", "subjectaccessreviews", ""), false),
            (r(&app, "create", "authorization.k8s.io", "localsubjectaccessreviews", "default"), false),
            (r(&app, "create", "authentication.k8s.io", "tokenreviews", ""), false),
            (r(&app, "create", "authentication.k8s.io", "selfsubjectreviews/x", ""), false),
            (r(&app, "create", "", "pods", "default"), false),
            (r(&app, "get", "", "pods", "default"), false),
            (r(&app, "list", "", "secrets", ""), false),
            // system:discovery and system:public-info-viewer: reads only.
            (non_resource(&app, "get", "/api"), true),
            (non_resource(&app, "get", "/api/v1"), true),
            (non_resource(&app, "get", "/apis/apps/v1"), true),
            (non_resource(&app, "get", "/openapi/v3/apis/apps/v1"), true),
            (non_resource(&app, "get", "/version"), true),
            (non_resource(&app, "get", "/healthz"), true),
            (non_resource(&app, "post", "/api"), false),
            (non_resource(&app, "get", "/healthz/etcd"), false),
            (non_resource(&app, "get", "/metrics"), false),
            (non_resource(&app, "post", "/v1-orch/anything"), false),
            // Service accounts may read the issuer's discovery documents.
            (non_resource(&app, "get", "/.well-known/openid-configuration"), true),
            (non_resource(&app, "get", "/openid/v1/jwks"), true),
            // Anonymous: health and version, nothing else.
            (non_resource(&stranger, "get", "/healthz"), true),
            (non_resource(&stranger, "get", "/livez"), true),
            (non_resource(&stranger, "get", "/readyz"), true),
            (non_resource(&stranger, "get", "/version"), true),
            (non_resource(&stranger, "get", "/api"), false),
            (non_resource(&stranger, "get", "/.well-known/openid-configuration"), false),
            (r(&stranger, "create", "authentication.k8s.io", "selfsubjectreviews", ""), false),
            (r(&stranger, "list", "", "pods", "default"), false),
        ];
        for (attrs, want) in cases {
            let got = rbac.authorize(&attrs).await;
            assert_eq!(
                matches!(got, Decision::Allow(_)),
                want,
                "{attrs:?}: {got:?}"
            );
        }
        // Masters hold cluster-admin through its binding.
        let admin = User::new("system:admin", &["system:masters"]);
        let rules = rbac.rules_for(&admin, "default");
        assert!(
            rules
                .resource
                .iter()
                .any(|r| r.verbs == ["*"] && r.resources == ["*"])
        );
        assert!(
            rules
                .non_resource
                .iter()
                .any(|r| r.non_resource_urls == ["*"])
        );
    }

    #[tokio::test]
    async fn view_edit_and_admin_aggregate_as_upstream_s() {
        let rbac = Rbac::bootstrap();
        let bind = |role: &str, user: &str| {
            binding(
                "team",
                user,
                "ClusterRole",
                role,
                json!([{"kind": "User", "name": user}]),
            )
        };
        rbac.apply(Kind::RoleBinding, &bind("view", "viewer"));
        rbac.apply(Kind::RoleBinding, &bind("edit", "editor"));
        rbac.apply(Kind::RoleBinding, &bind("admin", "boss"));
        let (viewer, editor, boss) = (
            User::new("viewer", &[]),
            User::new("editor", &[]),
            User::new("boss", &[]),
        );
        let can = async |u: &User, verb: &str, group: &str, res: &str| {
            matches!(
                rbac.authorize(&resource(u, verb, group, res, "team", ""))
                    .await,
                Decision::Allow(_)
            )
        };
        assert!(can(&viewer, "list", "", "pods").await);
        assert!(can(&viewer, "watch", "apps", "deployments").await);
        assert!(can(&viewer, "get", "", "pods/log").await);
        assert!(!can(&viewer, "get", "", "secrets").await);
        assert!(!can(&viewer, "create", "", "configmaps").await);
        assert!(can(&editor, "create", "", "configmaps").await);
        assert!(can(&editor, "get", "", "secrets").await);
        assert!(can(&editor, "update", "apps", "deployments/scale").await);
        assert!(!can(&editor, "create", "rbac.authorization.k8s.io", "roles").await);
        assert!(can(&boss, "create", "rbac.authorization.k8s.io", "rolebindings").await);
        assert!(can(&boss, "create", "", "pods/exec").await);
        // Nothing cluster-wide.
        let attrs = resource(&boss, "list", "", "nodes", "", "");
        assert!(!matches!(rbac.authorize(&attrs).await, Decision::Allow(_)));
    }
}
