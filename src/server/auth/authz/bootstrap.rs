//! The bootstrap authorizer: a bootstrap token's user
//! (`system:bootstrappers`) may ask for a node certificate and nothing
//! else (what k3s's supervisor allows its join tokens; upstream has such
//! users create CertificateSigningRequests through RBAC instead).

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Attributes, Authorizer, Decision, NonResourceRule, Rules};
use crate::server::auth::User;

/// Allows bootstrappers the node certificate path.
pub struct NodeCertificates {
    /// The path agents ask for their node certificate at.
    path: &'static str,
}

impl NodeCertificates {
    pub fn new(path: &'static str) -> Self {
        Self { path }
    }
}

impl Authorizer for NodeCertificates {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> BoxFuture<'a, Decision> {
        let decision =
            if attrs.user.is_bootstrapper() && !attrs.resource_request && attrs.path == self.path {
                Decision::allow()
            } else {
                Decision::NoOpinion(String::new())
            };
        async move { decision }.boxed()
    }

    fn rules_for(&self, user: &User, _namespace: &str) -> Rules {
        if !user.is_bootstrapper() {
            return Rules::default();
        }
        Rules {
            non_resource: vec![NonResourceRule {
                verbs: vec!["*".into()],
                non_resource_urls: vec![self.path.to_owned()],
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
    async fn bootstrappers_may_only_ask_for_node_certificates() {
        let path = "/v1-orch/node-certificate";
        let authz = NodeCertificates::new(path);
        let token = User::bootstrap("abcdef");
        let app = User::service_account("default", "app");
        let no = Decision::NoOpinion(String::new());
        let cases = [
            (non_resource(&token, "post", path), Decision::allow()),
            (non_resource(&token, "get", "/api"), no.clone()),
            (resource(&token, "list", "", "pods", "", ""), no.clone()),
            (non_resource(&app, "post", path), no.clone()),
        ];
        for (attrs, want) in cases {
            assert_eq!(authz.authorize(&attrs).await, want, "{attrs:?}");
        }
    }
}
