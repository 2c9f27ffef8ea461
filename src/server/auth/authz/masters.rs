//! The `system:masters` authorizer: members of that group may do
//! everything (upstream's privileged-group short cut ahead of the chain).
//! Upstream lists their rules through RBAC's `cluster-admin` binding to
//! the group; with no RBAC yet, this authorizer lists that role's rules.

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Attributes, Authorizer, Decision, NonResourceRule, ResourceRule, Rules};
use crate::server::auth::User;

/// The group whose members are allowed everything.
pub const GROUP: &str = "system:masters";

/// Is `user` in `system:masters`?
pub fn is_master(user: &User) -> bool {
    user.groups.iter().any(|g| g == GROUP)
}

/// Allows `system:masters` everything; no opinion on anyone else.
pub struct Masters;

impl Authorizer for Masters {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> BoxFuture<'a, Decision> {
        let decision = if is_master(&attrs.user) {
            Decision::Allow
        } else {
            Decision::NoOpinion(String::new())
        };
        async move { decision }.boxed()
    }

    /// `cluster-admin`'s: every verb on every resource and every path.
    fn rules_for(&self, user: &User, _namespace: &str) -> Rules {
        if !is_master(user) {
            return Rules::default();
        }
        let all = || vec!["*".to_owned()];
        Rules {
            resource: vec![ResourceRule {
                verbs: all(),
                api_groups: all(),
                resources: all(),
                resource_names: Vec::new(),
            }],
            non_resource: vec![NonResourceRule {
                verbs: all(),
                non_resource_urls: all(),
            }],
            ..Rules::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authz::tests::{non_resource, resource};

    #[tokio::test]
    async fn masters_may_do_everything_and_others_are_left_to_the_chain() {
        let admin = User::new("system:admin", &[GROUP]);
        let app = User::service_account("default", "app");
        let node = User::new("system:node:a", &["system:nodes"]);
        let cases = [
            (
                resource(&admin, "delete", "apps", "deployments", "default", "web"),
                Decision::Allow,
            ),
            (non_resource(&admin, "post", "/anything"), Decision::Allow),
            (
                resource(&app, "get", "", "pods", "default", "p"),
                Decision::NoOpinion(String::new()),
            ),
            (
                resource(&node, "list", "", "nodes", "", ""),
                Decision::NoOpinion(String::new()),
            ),
        ];
        for (attrs, want) in cases {
            assert_eq!(Masters.authorize(&attrs).await, want, "{attrs:?}");
        }
        let rules = Masters.rules_for(&admin, "default");
        assert_eq!(rules.resource[0].verbs, ["*"]);
        assert_eq!(rules.non_resource[0].non_resource_urls, ["*"]);
        assert_eq!(Masters.rules_for(&app, "default"), Rules::default());
    }
}
