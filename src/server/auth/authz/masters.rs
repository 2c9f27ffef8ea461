//! The `system:masters` authorizer: members of that group may do
//! everything (upstream's privileged-group short cut ahead of the chain).
//! It lists no rules: as upstream, RBAC lists theirs, through the
//! bootstrap `cluster-admin` binding to the group.

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Attributes, Authorizer, Decision};
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
            Decision::allow()
        } else {
            Decision::NoOpinion(String::new())
        };
        async move { decision }.boxed()
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
                Decision::allow(),
            ),
            (non_resource(&admin, "post", "/anything"), Decision::allow()),
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
    }
}
