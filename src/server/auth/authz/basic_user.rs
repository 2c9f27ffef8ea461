//! The basic-user authorizer: what upstream's bootstrap RBAC policy lets
//! every authenticated user do through its ClusterRoleBindings to
//! `system:authenticated` (plugin/pkg/auth/authorizer/rbac/bootstrappolicy):
//!
//! - `system:basic-user`: create SelfSubjectReviews (`kubectl auth
//!   whoami`), SelfSubjectAccessReviews (`kubectl auth can-i`) and
//!   SelfSubjectRulesReviews (`kubectl auth can-i --list`);
//! - `system:discovery`: read discovery and the OpenAPI documents (which
//!   kubectl reads before almost anything else);
//! - `system:public-info-viewer`: read the health and version endpoints
//!   (which orch also serves without authentication).
//!
//! So a service account (a pod's token) can ask who it is and what it may
//! do, as upstream's can. Until orch has RBAC this step stands in for
//! those bindings; RBAC, when it comes, serves these roles as its
//! bootstrap policy and this step goes. It never denies: what it does not
//! allow is left to the rest of the chain.

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Attributes, Authorizer, Decision, NonResourceRule, ResourceRule, Rules};
use crate::server::auth::User;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

/// One of upstream's bootstrap ClusterRoles, as data: `verbs` on the
/// `resources` of each group, and on the URL paths `urls` (a trailing `*`
/// is a prefix).
struct Role {
    verbs: &'static [&'static str],
    resources: &'static [(&'static str, &'static [&'static str])],
    urls: &'static [&'static str],
}

/// The roles upstream binds to `system:authenticated`.
const ROLES: &[Role] = &[
    // system:basic-user
    Role {
        verbs: &["create"],
        resources: &[
            ("authentication.k8s.io", &["selfsubjectreviews"]),
            (
                "authorization.k8s.io",
                &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            ),
        ],
        urls: &[],
    },
    // system:discovery
    Role {
        verbs: &["get"],
        resources: &[],
        urls: &[
            "/livez",
            "/readyz",
            "/healthz",
            "/version",
            "/version/",
            "/openapi",
            "/openapi/*",
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
        ],
    },
    // system:public-info-viewer
    Role {
        verbs: &["get"],
        resources: &[],
        urls: &["/livez", "/readyz", "/healthz", "/version", "/version/"],
    },
];

impl Role {
    /// Does this role allow `attrs`, as an RBAC rule matches (verb, group
    /// and resource for objects, with no subresource unless named; verb
    /// and path otherwise)?
    fn allows(&self, attrs: &Attributes) -> bool {
        if !self.verbs.contains(&attrs.verb.as_str()) {
            return false;
        }
        if attrs.resource_request {
            let resource = if attrs.subresource.is_empty() {
                attrs.resource.clone()
            } else {
                format!("{}/{}", attrs.resource, attrs.subresource)
            };
            self.resources
                .iter()
                .any(|(group, plurals)| *group == attrs.api_group && plurals.contains(&&*resource))
        } else {
            self.urls.iter().any(|url| match url.strip_suffix('*') {
                Some(prefix) => attrs.path.starts_with(prefix),
                None => attrs.path == *url,
            })
        }
    }

    fn rules(&self) -> Rules {
        let verbs: Vec<String> = self.verbs.iter().map(|v| (*v).to_owned()).collect();
        let own = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Rules {
            resource: self
                .resources
                .iter()
                .map(|(group, plurals)| ResourceRule {
                    verbs: verbs.clone(),
                    api_groups: vec![(*group).to_owned()],
                    resources: own(plurals),
                    resource_names: Vec::new(),
                })
                .collect(),
            non_resource: (!self.urls.is_empty())
                .then(|| NonResourceRule {
                    verbs: verbs.clone(),
                    non_resource_urls: own(self.urls),
                })
                .into_iter()
                .collect(),
            ..Rules::default()
        }
    }
}

fn is_authenticated(user: &User) -> bool {
    user.groups.iter().any(|g| g == AUTHENTICATED)
}

/// Allows every authenticated user upstream's `system:authenticated`
/// roles; no opinion on anything else.
pub struct BasicUser;

impl Authorizer for BasicUser {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> BoxFuture<'a, Decision> {
        let allowed = is_authenticated(&attrs.user) && ROLES.iter().any(|r| r.allows(attrs));
        let decision = if allowed {
            Decision::Allow
        } else {
            Decision::NoOpinion(String::new())
        };
        async move { decision }.boxed()
    }

    fn rules_for(&self, user: &User, _namespace: &str) -> Rules {
        let mut rules = Rules::default();
        if is_authenticated(user) {
            for role in ROLES {
                rules.extend(role.rules());
            }
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authz::tests::{non_resource, resource};

    #[tokio::test]
    async fn authenticated_users_may_ask_who_they_are_and_read_discovery() {
        let app = User::service_account("default", "app");
        let node = User::new("system:node:a", &["system:nodes"]);
        let stranger = User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        };
        let allow = Decision::Allow;
        let no = Decision::NoOpinion(String::new());
        let r = |u: &User, verb: &str, group: &str, res: &str, ns: &str| {
            resource(u, verb, group, res, ns, "")
        };
        #[rustfmt::skip]
        let cases = [
            // system:basic-user, for every authenticated user.
            (r(&app, "create", "authentication.k8s.io", "selfsubjectreviews", ""), allow.clone()),
            (r(&app, "create", "authorization.k8s.io", "selfsubjectaccessreviews", ""), allow.clone()),
            (r(&app, "create", "authorization.k8s.io", "selfsubjectrulesreviews", ""), allow.clone()),
            (r(&node, "create", "authentication.k8s.io", "selfsubjectreviews", ""), allow.clone()),
            // Only create, only those, only in their groups.
            (r(&app, "list", "authentication.k8s.io", "selfsubjectreviews", ""), no.clone()),
            (r(&app, "create", "authorization.k8s.io", "subjectaccessreviews", ""), no.clone()),
            (r(&app, "create", "authorization.k8s.io", "localsubjectaccessreviews", "default"), no.clone()),
            (r(&app, "create", "authentication.k8s.io", "tokenreviews", ""), no.clone()),
            (r(&app, "create", "authorization.k8s.io", "selfsubjectreviews", ""), no.clone()),
            (r(&app, "create", "authentication.k8s.io", "selfsubjectreviews/x", ""), no.clone()),
            (r(&app, "create", "", "pods", "default"), no.clone()),
            (r(&app, "get", "", "pods", "default"), no.clone()),
            (r(&app, "list", "", "secrets", ""), no.clone()),
            // system:discovery and system:public-info-viewer: reads only.
            (non_resource(&app, "get", "/api"), allow.clone()),
            (non_resource(&app, "get", "/api/v1"), allow.clone()),
            (non_resource(&app, "get", "/apis"), allow.clone()),
            (non_resource(&app, "get", "/apis/apps/v1"), allow.clone()),
            (non_resource(&app, "get", "/openapi/v3/apis/apps/v1"), allow.clone()),
            (non_resource(&app, "get", "/openapi/v2"), allow.clone()),
            (non_resource(&app, "get", "/version"), allow.clone()),
            (non_resource(&app, "get", "/healthz"), allow.clone()),
            (non_resource(&app, "post", "/api"), no.clone()),
            (non_resource(&app, "get", "/apiz"), no.clone()),
            (non_resource(&app, "get", "/healthz/etcd"), no.clone()),
            (non_resource(&app, "get", "/metrics"), no.clone()),
            (non_resource(&app, "post", "/v1-orch/node-certificate"), no.clone()),
            (non_resource(&app, "get", "/orch/v1/tunnel"), no.clone()),
            // Not authenticated: nothing.
            (r(&stranger, "create", "authentication.k8s.io", "selfsubjectreviews", ""), no.clone()),
            (non_resource(&stranger, "get", "/api"), no.clone()),
        ];
        for (attrs, want) in cases {
            assert_eq!(BasicUser.authorize(&attrs).await, want, "{attrs:?}");
        }
    }

    #[test]
    fn the_rules_listed_are_upstream_s_roles() {
        let app = User::service_account("default", "app");
        let rules = BasicUser.rules_for(&app, "default");
        let resources: Vec<(String, String, String)> = rules
            .resource
            .iter()
            .flat_map(|r| {
                r.resources
                    .iter()
                    .map(|res| (r.verbs.join(","), r.api_groups.join(","), res.clone()))
            })
            .collect();
        let want = [
            ("create", "authentication.k8s.io", "selfsubjectreviews"),
            ("create", "authorization.k8s.io", "selfsubjectaccessreviews"),
            ("create", "authorization.k8s.io", "selfsubjectrulesreviews"),
        ]
        .map(|(v, g, r)| (v.to_owned(), g.to_owned(), r.to_owned()));
        assert_eq!(resources, want);
        assert!(
            rules.non_resource.iter().all(|r| r.verbs == ["get"])
                && rules
                    .non_resource
                    .iter()
                    .any(|r| r.non_resource_urls.contains(&"/apis/*".to_owned())),
            "{:?}",
            rules.non_resource
        );
        assert!(!rules.incomplete);
        let stranger = User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        };
        assert_eq!(BasicUser.rules_for(&stranger, "default"), Rules::default());
    }
}
