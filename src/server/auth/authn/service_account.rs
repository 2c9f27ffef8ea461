//! The service account authenticator: a bearer JWT this server signed
//! (see [`crate::server::auth::serviceaccount`]) names
//! `system:serviceaccount:<ns>:<name>` while the token is valid, its
//! audience is one of the API's (`--api-audiences`), and the service
//! account (and the pod the token is bound to) still exist with the uids
//! it was issued for, as upstream's bound-token checks.

use std::sync::Arc;

use base64::Engine;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Authenticator, Credentials, Error};
use crate::server::auth::User;
use crate::server::auth::serviceaccount::{Audiences, Claims, Signer};
use crate::server::registry::Registry;

/// Accepts service account tokens this server signed for its API.
pub struct ServiceAccounts {
    signer: Arc<Signer>,
    registry: Arc<Registry>,
    audiences: Audiences,
}

impl ServiceAccounts {
    pub fn new(signer: Arc<Signer>, registry: Arc<Registry>, audiences: Audiences) -> Self {
        Self {
            signer,
            registry,
            audiences,
        }
    }

    /// `Ok(None)` for a token that is not a valid JWT of ours (another
    /// authenticator may know it); `Err` for one of ours made for another
    /// audience, checked before the store is read, as upstream does.
    async fn authenticate_token(&self, token: &str) -> Result<Option<User>, Error> {
        let Some(claims) = self.signer.verify(token) else {
            return Ok(None);
        };
        if self.audiences.accepted(&claims.audiences).is_empty() {
            return Err(Error::InvalidAudience {
                token: claims.audiences,
                api: self.audiences.as_slice().to_vec(),
            });
        }
        Ok(self.user(&claims, token).await)
    }

    /// The service account `claims` name, while it and the pod the token
    /// is bound to exist with the uids the token was issued for.
    async fn user(&self, claims: &Claims, token: &str) -> Option<User> {
        let ns = Some(claims.namespace.as_str());
        // A legacy token is good while its Secret holds it (upstream's
        // legacy validator): deleting the Secret revokes it.
        if let Some(secret) = &claims.secret {
            let res = self.registry.catalog().find("", "v1", "secrets").cloned()?;
            let held = self.registry.get(&res, ns, secret).await.ok()?;
            let data = held.pointer("/data/token").and_then(Value::as_str)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data)
                .ok()?;
            if decoded != token.as_bytes()
                || held
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|d| !d.is_null())
            {
                return None;
            }
        }
        let uid_of = |v: &Value| {
            v.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let sa_res = self
            .registry
            .catalog()
            .find("", "v1", "serviceaccounts")
            .cloned()?;
        let sa = self
            .registry
            .get(&sa_res, ns, &claims.service_account)
            .await
            .ok()?;
        if !claims.service_account_uid.is_empty()
            && uid_of(&sa).as_deref() != Some(claims.service_account_uid.as_str())
        {
            return None;
        }
        if let Some((pod, uid)) = &claims.pod {
            let pod_res = self.registry.catalog().find("", "v1", "pods").cloned()?;
            let p = self.registry.get(&pod_res, ns, pod).await.ok()?;
            if uid_of(&p).as_deref() != Some(uid.as_str()) {
                return None;
            }
        }
        // The uid is the service account's, as upstream's (whoami shows it).
        let mut user = User::service_account(&claims.namespace, &claims.service_account);
        user.uid = uid_of(&sa).unwrap_or_default();
        Some(user)
    }
}

impl Authenticator for ServiceAccounts {
    /// A token that is not a valid JWT of ours, or whose service account
    /// or pod is gone, is not recognised (the chain then answers 401 for
    /// the bearer token no one accepted); one made for another audience
    /// is refused (401 too).
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<Option<User>, Error>> {
        async move {
            match credentials.bearer {
                Some(token) => self.authenticate_token(token).await,
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
            .catalog()
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
        let res = registry.catalog().find("", "v1", plural).unwrap().clone();
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
        let authn = ServiceAccounts::new(signer.clone(), registry.clone(), Audiences::default());
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
        assert_eq!(user.uid, sa_uid, "the service account's uid");
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

    #[tokio::test]
    async fn tokens_for_another_audience_are_refused() {
        let (dir, registry) = registry().await;
        let signer = Arc::new(Signer::load_or_create(&dir.path().join("sa.key")).unwrap());
        create(
            &registry,
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
        )
        .await;
        let token = |aud: &[&str]| {
            let aud: Vec<String> = aud.iter().map(|a| (*a).to_owned()).collect();
            signer
                .issue("default", "app", "", &aud, 3600, None)
                .unwrap()
                .0
        };
        let none = PeerCertificate::None;
        let ask = |api: Audiences, token: String| {
            let authn = ServiceAccounts::new(signer.clone(), registry.clone(), api);
            let none = &none;
            async move {
                authn
                    .authenticate(&Credentials {
                        peer: none,
                        bearer: Some(&token),
                    })
                    .await
                    .map(|u| u.map(|u| u.name))
            }
        };
        let app = Ok(Some("system:serviceaccount:default:app".to_owned()));
        let default = Audiences::default;
        let with_vault = || Audiences::new(&["vault", ISSUER]).unwrap();
        assert_eq!(ask(default(), token(&[ISSUER])).await, app);
        assert_eq!(
            ask(default(), token(&["vault"])).await,
            Err(Error::InvalidAudience {
                token: vec!["vault".into()],
                api: vec![ISSUER.into()],
            }),
            "made for vault, not for the API"
        );
        assert_eq!(ask(default(), token(&["vault", ISSUER])).await, app);
        assert_eq!(ask(with_vault(), token(&["vault"])).await, app);
        assert_eq!(ask(with_vault(), token(&[ISSUER])).await, app);
        assert!(
            ask(Audiences::new(&["vault"]).unwrap(), token(&[ISSUER]))
                .await
                .is_err(),
            "an audience the API no longer lists"
        );
        let err = ask(default(), token(&["vault"])).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "token audiences [\"vault\"] is invalid for the target audiences [\"{ISSUER}\"]"
            )
        );
    }
}
