//! The service account authenticator: a bearer JWT this server signed
//! (see [`crate::server::auth::serviceaccount`]) names
//! `system:serviceaccount:<ns>:<name>` while the token is valid and the
//! service account (and the pod the token is bound to) still exist with
//! the uids it was issued for, as upstream's bound-token checks.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Authenticator, Credentials, Error};
use crate::server::auth::User;
use crate::server::auth::serviceaccount::Signer;
use crate::server::registry::Registry;

/// Accepts service account tokens this server signed.
pub struct ServiceAccounts {
    signer: Arc<Signer>,
    registry: Arc<Registry>,
}

impl ServiceAccounts {
    pub fn new(signer: Arc<Signer>, registry: Arc<Registry>) -> Self {
        Self { signer, registry }
    }

    async fn user(&self, token: &str) -> Option<User> {
        let claims = self.signer.verify(token)?;
        let ns = Some(claims.namespace.as_str());
        let uid_of = |v: &Value| {
            v.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let sa_res = self.registry.catalog.find("", "v1", "serviceaccounts")?;
        let sa = self
            .registry
            .get(sa_res, ns, &claims.service_account)
            .await
            .ok()?;
        if !claims.service_account_uid.is_empty()
            && uid_of(&sa).as_deref() != Some(claims.service_account_uid.as_str())
        {
            return None;
        }
        if let Some((pod, uid)) = &claims.pod {
            let pod_res = self.registry.catalog.find("", "v1", "pods")?;
            let p = self.registry.get(pod_res, ns, pod).await.ok()?;
            if uid_of(&p).as_deref() != Some(uid.as_str()) {
                return None;
            }
        }
        Some(User::service_account(
            &claims.namespace,
            &claims.service_account,
        ))
    }
}

impl Authenticator for ServiceAccounts {
    /// A token that is not a valid JWT of ours, or whose service account
    /// or pod is gone, is not recognised (the chain then answers 401 for
    /// the bearer token no one accepted).
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<Option<User>, Error>> {
        async move {
            match credentials.bearer {
                Some(token) => Ok(self.user(token).await),
                None => Ok(None),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::server::auth::authn::PeerCertificate;
    use crate::server::auth::serviceaccount::ISSUER;
    use crate::server::registry::{ServiceRanges, WriteOptions};
    use serde_json::json;

    pub(crate) async fn registry() -> (tempfile::TempDir, Arc<Registry>) {
        let (dir, store) = crate::store::test_util::temp_store();
        let registry = Registry::new(
            store,
            ServiceRanges::default(),
            crate::server::admission::Chain::default(),
        )
        .await
        .unwrap();
        let ns = registry
            .catalog
            .find("", "v1", "namespaces")
            .unwrap()
            .clone();
        registry
            .create(
                &ns,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        (dir, registry)
    }

    async fn create(registry: &Registry, plural: &str, obj: Value) -> Value {
        let res = registry.catalog.find("", "v1", plural).unwrap().clone();
        registry
            .create(&res, Some("default"), obj, &WriteOptions::default())
            .await
            .unwrap()
            .object
    }

    #[tokio::test]
    async fn tokens_name_their_service_account_while_it_and_its_pod_exist() {
        let (dir, registry) = registry().await;
        let signer = Arc::new(Signer::load_or_create(&dir.path().join("sa.key")).unwrap());
        let sa = create(
            &registry,
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
        )
        .await;
        let sa_uid = sa["metadata"]["uid"].as_str().unwrap();
        let pod = create(&registry, "pods", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).await;
        let pod_uid = pod["metadata"]["uid"].as_str().unwrap();
        let aud = vec![ISSUER.to_owned()];
        let issue = |sa_uid: &str, pod: Option<(&str, &str)>| {
            signer
                .issue("default", "app", sa_uid, &aud, 3600, pod)
                .unwrap()
                .0
        };
        let authn = ServiceAccounts::new(signer.clone(), registry.clone());
        let none = PeerCertificate::None;
        let ask = |token: String| {
            let authn = &authn;
            let none = &none;
            async move {
                authn
                    .authenticate(&Credentials {
                        peer: none,
                        bearer: Some(&token),
                    })
                    .await
            }
        };
        let user = ask(issue(sa_uid, Some(("web", pod_uid))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "system:serviceaccount:default:app");
        assert!(
            user.groups
                .contains(&"system:serviceaccounts:default".to_owned())
        );
        assert_eq!(
            ask(issue("another-uid", None)).await,
            Ok(None),
            "a recreated service account"
        );
        assert_eq!(
            ask(issue(sa_uid, Some(("web", "old-uid")))).await,
            Ok(None),
            "a recreated pod"
        );
        assert_eq!(
            ask(issue(sa_uid, Some(("gone", pod_uid)))).await,
            Ok(None),
            "a deleted pod"
        );
        assert_eq!(ask("not-a-jwt".into()).await, Ok(None));
        let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
        let foreign = other
            .issue("default", "app", sa_uid, &aud, 3600, None)
            .unwrap()
            .0;
        assert_eq!(ask(foreign).await, Ok(None), "signed by another key");
    }
}
