//! Authorization: may this user make this request? A chain of
//! authorizers, each its own type behind [`Authorizer`], asked in order
//! until one allows or denies (upstream's union authorizer):
//! [`masters::Masters`] (`system:masters` may do everything), then
//! [`node::Node`] (a node may touch only its own Node, Lease, pods and
//! what those pods use), then [`rbac::Rbac`] (what Roles, ClusterRoles and
//! their bindings grant, the bootstrap policy's included: a bootstrap token
//! may ask for a node's certificate, and nothing more). A request no authorizer allows is a 403 whose message is
//! upstream's ([`forbidden`]).
//!
//! Each authorizer can also list what it lets a user do ([`Rules`], upstream's
//! `RuleResolver`), which answers SelfSubjectRulesReview (`kubectl auth can-i
//! --list`).

#![forbid(unsafe_code)]

pub mod masters;
pub mod node;
pub mod rbac;

use futures::future::BoxFuture;

use super::User;
use crate::api::status::{ApiError, Details};

/// What a request asks to do, as upstream's `authorizer.Attributes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub user: User,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` for resource requests; the lowercase HTTP
    /// method otherwise.
    pub verb: String,
    /// Empty for cluster-scoped requests.
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    /// The object's name; empty for collections. For orch's kubelet
    /// tunnel path (not a resource request) the node whose tunnel it is.
    pub name: String,
    /// The URL path (what non-resource requests are authorized by).
    pub path: String,
    /// Does the request address an API object (or collection)?
    pub resource_request: bool,
}

impl Attributes {
    /// A request for a path that names no resource (`/api`, `/healthz`).
    pub fn non_resource(user: &User, verb: &str, path: &str) -> Self {
        Self {
            user: user.clone(),
            verb: verb.into(),
            namespace: String::new(),
            api_group: String::new(),
            api_version: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            path: path.into(),
            resource_request: false,
        }
    }
}

/// What an authorizer says, as upstream's `authorizer.Decision` with its
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the reason (may be empty) says by what.
    Allow(String),
    /// Refused, whatever later authorizers would say.
    Deny(String),
    /// Neither: the next authorizer is asked. The reason (may be empty)
    /// explains a refusal if no later authorizer allows.
    NoOpinion(String),
}

impl Decision {
    /// Allowed, with no reason given.
    pub fn allow() -> Self {
        Self::Allow(String::new())
    }
}

/// A rule on API objects, as upstream's `ResourceRuleInfo`: `verbs` on
/// `resources` (`*` for all, `<plural>/<sub>` for a subresource) in
/// `api_groups`, limited to `resource_names` when not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
}

/// A rule on URL paths, as upstream's `NonResourceRuleInfo` (a path
/// ending in `*` is a prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonResourceRule {
    pub verbs: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// What a user may do in a namespace, as upstream's `RulesFor` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub resource: Vec<ResourceRule>,
    pub non_resource: Vec<NonResourceRule>,
    /// An authorizer may allow more than it can list.
    pub incomplete: bool,
    /// Why the list may be incomplete, one per authorizer that could not
    /// list its rules.
    pub errors: Vec<String>,
}

impl Rules {
    /// Both lists of `other` after ours; incomplete when either is.
    fn extend(&mut self, other: Rules) {
        self.resource.extend(other.resource);
        self.non_resource.extend(other.non_resource);
        self.incomplete |= other.incomplete;
        self.errors.extend(other.errors);
    }

    /// The evaluation error a SelfSubjectRulesReview reports, as upstream's
    /// error aggregate prints: the one error, or `[a, b]`.
    pub fn evaluation_error(&self) -> String {
        match self.errors.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        }
    }
}

/// One way of deciding whether a request is allowed.
///
/// Asynchronous because the Node authorizer may read the store when its
/// cache has not seen a pod yet.
pub trait Authorizer: Send + Sync {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> BoxFuture<'a, Decision>;

    /// What this authorizer lets `user` do in `namespace` (upstream's
    /// `RulesFor`). By default nothing, and the list is complete.
    fn rules_for(&self, _user: &User, _namespace: &str) -> Rules {
        Rules::default()
    }
}

/// The authorizers, asked in order.
pub struct Chain {
    authorizers: Vec<Box<dyn Authorizer>>,
}

impl Chain {
    pub fn new(authorizers: Vec<Box<dyn Authorizer>>) -> Self {
        Self { authorizers }
    }

    /// The first `Allow` or `Deny`; otherwise `NoOpinion` with every
    /// reason given, one per line.
    pub async fn authorize(&self, attrs: &Attributes) -> Decision {
        let mut reasons: Vec<String> = Vec::new();
        for authorizer in &self.authorizers {
            match authorizer.authorize(attrs).await {
                Decision::NoOpinion(reason) => {
                    if !reason.is_empty() {
                        reasons.push(reason);
                    }
                }
                decided => return decided,
            }
        }
        Decision::NoOpinion(reasons.join("\n"))
    }

    /// Every authorizer's rules for `user` in `namespace`, in chain order
    /// (upstream's union rule resolver).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Rules {
        let mut rules = Rules::default();
        for authorizer in &self.authorizers {
            rules.extend(authorizer.rules_for(user, namespace));
        }
        rules
    }
}

/// The 403 for a request not allowed, worded as upstream's:
/// `deployments.apps "web" is forbidden: User "u" cannot delete resource
/// "deployments" in API group "apps" in the namespace "default"`, with
/// `: <reason>` after it when there is one, and `forbidden: User "u"
/// cannot get path "/x"` for non-resource requests.
pub fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let user = &attrs.user.name;
    let verb = &attrs.verb;
    let mut message = if attrs.resource_request {
        let resource = if attrs.subresource.is_empty() {
            attrs.resource.clone()
        } else {
            format!("{}/{}", attrs.resource, attrs.subresource)
        };
        let scope = if attrs.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", attrs.namespace)
        };
        format!(
            "User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
            attrs.api_group
        )
    } else {
        format!("User {user:?} cannot {verb} path {:?}", attrs.path)
    };
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    let qualified = match (attrs.resource_request, attrs.api_group.is_empty()) {
        (false, _) => String::new(),
        (true, true) => attrs.resource.clone(),
        (true, false) => format!("{}.{}", attrs.resource, attrs.api_group),
    };
    let message = match (qualified.is_empty(), attrs.name.is_empty()) {
        (true, _) => format!("forbidden: {message}"),
        (false, true) => format!("{qualified} is forbidden: {message}"),
        (false, false) => format!("{qualified} {:?} is forbidden: {message}", attrs.name),
    };
    // Upstream's NewForbidden: the group, resource and name the request
    // named (empty for a path), each left out when empty.
    let mut details = Details::default();
    if attrs.resource_request {
        details.name.clone_from(&attrs.name);
        details.group.clone_from(&attrs.api_group);
        details.kind.clone_from(&attrs.resource);
    }
    ApiError {
        details: Some(Box::new(details)),
        ..ApiError::forbidden(message)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    /// Attributes of a resource request: `ns`/`name` may be empty.
    pub(crate) fn resource(
        user: &User,
        verb: &str,
        group: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            namespace: ns.into(),
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            path: String::new(),
            resource_request: true,
        }
    }

    pub(crate) fn non_resource(user: &User, verb: &str, path: &str) -> Attributes {
        Attributes::non_resource(user, verb, path)
    }

    struct Says(Decision);

    impl Authorizer for Says {
        fn authorize<'a>(&'a self, _: &'a Attributes) -> BoxFuture<'a, Decision> {
            async move { self.0.clone() }.boxed()
        }
    }

    fn says(d: Decision) -> Box<dyn Authorizer> {
        Box::new(Says(d))
    }

    #[tokio::test]
    async fn the_first_decision_wins_and_reasons_of_no_opinion_add_up() {
        let user = User::service_account("default", "app");
        let attrs = resource(&user, "get", "", "pods", "default", "p");
        let no = |r: &str| says(Decision::NoOpinion(r.into()));
        let cases = [
            (vec![no(""), says(Decision::allow())], Decision::allow()),
            (
                vec![says(Decision::Deny("no".into())), says(Decision::allow())],
                Decision::Deny("no".into()),
            ),
            (
                vec![no("a"), no(""), no("b")],
                Decision::NoOpinion("a\nb".into()),
            ),
            (vec![], Decision::NoOpinion(String::new())),
        ];
        for (authorizers, want) in cases {
            assert_eq!(Chain::new(authorizers).authorize(&attrs).await, want);
        }
    }

    /// Lists one non-resource rule, or cannot list.
    struct Lists(Option<&'static str>);

    impl Authorizer for Lists {
        fn authorize<'a>(&'a self, _: &'a Attributes) -> BoxFuture<'a, Decision> {
            async move { Decision::NoOpinion(String::new()) }.boxed()
        }

        fn rules_for(&self, _: &User, _: &str) -> Rules {
            match self.0 {
                Some(url) => Rules {
                    non_resource: vec![NonResourceRule {
                        verbs: vec!["get".into()],
                        non_resource_urls: vec![url.into()],
                    }],
                    ..Rules::default()
                },
                None => Rules {
                    incomplete: true,
                    errors: vec!["cannot list".into()],
                    ..Rules::default()
                },
            }
        }
    }

    #[test]
    fn rules_of_every_authorizer_add_up() {
        let user = User::service_account("default", "app");
        let urls = |r: &Rules| -> Vec<String> {
            r.non_resource
                .iter()
                .flat_map(|n| n.non_resource_urls.clone())
                .collect()
        };
        let chain = Chain::new(vec![
            Box::new(Lists(Some("/a"))),
            Box::new(Lists(Some("/b"))),
        ]);
        let rules = chain.rules_for(&user, "default");
        assert_eq!(urls(&rules), ["/a", "/b"]);
        assert!(!rules.incomplete);
        assert_eq!(rules.evaluation_error(), "");
        let chain = Chain::new(vec![
            Box::new(Lists(None)),
            Box::new(Lists(Some("/b"))),
            Box::new(Lists(None)),
        ]);
        let rules = chain.rules_for(&user, "default");
        assert_eq!(urls(&rules), ["/b"]);
        assert!(rules.incomplete);
        assert_eq!(rules.evaluation_error(), "[cannot list, cannot list]");
    }

    #[test]
    fn refusals_read_as_upstream_s() {
        let user = User::service_account("default", "app");
        let name = "system:serviceaccount:default:app";
        let cases = [
            (
                resource(&user, "delete", "apps", "deployments", "default", "web"),
                "",
                format!(
                    "deployments.apps \"web\" is forbidden: User \"{name}\" cannot delete resource \"deployments\" in API group \"apps\" in the namespace \"default\""
                ),
                json!({"name": "web", "group": "apps", "kind": "deployments"}),
            ),
            (
                resource(&user, "list", "", "nodes", "", ""),
                "",
                format!(
                    "nodes is forbidden: User \"{name}\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
                ),
                json!({"kind": "nodes"}),
            ),
            (
                resource(&user, "patch", "", "nodes/status", "", "n"),
                "why not",
                format!(
                    "nodes \"n\" is forbidden: User \"{name}\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope: why not"
                ),
                json!({"name": "n", "kind": "nodes"}),
            ),
            (
                non_resource(&user, "post", "/metrics"),
                "",
                format!("forbidden: User \"{name}\" cannot post path \"/metrics\""),
                json!({}),
            ),
        ];
        for (attrs, reason, message, details) in cases {
            let err = forbidden(&attrs, reason);
            assert_eq!((err.code, err.reason), (403, "Forbidden"));
            assert_eq!(err.message, message);
            let got = serde_json::to_value(err.details.as_deref()).expect("details serialise");
            assert_eq!(got, details);
        }
    }
}
