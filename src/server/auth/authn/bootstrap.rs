//! The bootstrap token authenticator: a token `<id>.<secret>` (or
//! `K10<ca hash>::<id>.<secret>`, from `orch token create`) names
//! `system:bootstrap:<id>` in `system:bootstrappers` while its Secret
//! `kube-system/bootstrap-token-<id>` exists, matches, allows
//! authentication and has not expired (upstream's bootstrap token
//! authenticator over kubeadm's Secret layout). Such a user may only ask
//! for nodes' certificates (the bootstrap policy's `orch:` bindings).

use std::sync::Arc;

use base64::Engine;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Authenticator, Credentials, Error};
use crate::api::join;
use crate::server::auth::User;
use crate::server::registry::Registry;

/// Accepts bootstrap tokens whose Secrets say they are valid.
pub struct BootstrapTokens {
    registry: Arc<Registry>,
}

impl BootstrapTokens {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    async fn user(&self, token: &str) -> Option<User> {
        let (id, secret) = join::parse_bootstrap(token)?;
        let res = self.registry.catalog().find("", "v1", "secrets").cloned()?;
        let stored = self
            .registry
            .get(&res, Some("kube-system"), &join::bootstrap_secret_name(id))
            .await
            .ok()?;
        if stored["type"] != join::BOOTSTRAP_TYPE {
            return None;
        }
        let field = |key: &str| {
            stored["data"][key]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
        };
        if field("token-secret")?.as_bytes() != secret.as_bytes()
            || field("usage-bootstrap-authentication").as_deref() != Some("true")
        {
            return None;
        }
        if let Some(expiry) = field("expiration") {
            let expiry: jiff::Timestamp = expiry.parse().ok()?;
            if expiry <= jiff::Timestamp::now() {
                return None;
            }
        }
        Some(User::bootstrap(id))
    }
}

impl Authenticator for BootstrapTokens {
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
mod tests {
    use super::*;
    use crate::server::auth::authn::PeerCertificate;
    use crate::server::registry::WriteOptions;
    use serde_json::json;

    async fn put_token(
        registry: &Registry,
        id: &str,
        secret: &str,
        usage: &str,
        expiration: Option<&str>,
    ) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = json!({"token-id": b64(id), "token-secret": b64(secret), "usage-bootstrap-authentication": b64(usage)});
        if let Some(e) = expiration {
            data["expiration"] = json!(b64(e));
        }
        let ns = registry
            .catalog()
            .find("", "v1", "namespaces")
            .unwrap()
            .clone();
        let _ = registry
            .create(&ns, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}), &WriteOptions::default())
            .await;
        let res = registry
            .catalog()
            .find("", "v1", "secrets")
            .unwrap()
            .clone();
        registry
            .create(
                &res,
                Some("kube-system"),
                json!({"apiVersion": "v1", "kind": "Secret", "type": join::BOOTSTRAP_TYPE,
                       "metadata": {"name": join::bootstrap_secret_name(id)}, "data": data}),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bootstrap_tokens_authenticate_while_their_secret_allows() {
        let (_dir, registry) = crate::server::auth::authn::service_account::tests::registry().await;
        put_token(
            &registry,
            "abcdef",
            "0123456789abcdef",
            "true",
            Some("2999-01-01T00:00:00Z"),
        )
        .await;
        put_token(
            &registry,
            "expird",
            "0123456789abcdef",
            "true",
            Some("2000-01-01T00:00:00Z"),
        )
        .await;
        put_token(&registry, "nousag", "0123456789abcdef", "false", None).await;
        let authn = BootstrapTokens::new(registry.clone());
        let none = PeerCertificate::None;
        let ask = |token: &'static str| {
            let authn = &authn;
            let none = &none;
            async move {
                authn
                    .authenticate(&Credentials {
                        peer: none,
                        bearer: Some(token),
                    })
                    .await
            }
        };
        let user = ask("abcdef.0123456789abcdef").await.unwrap().unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert!(user.is_bootstrapper());
        let user = ask("K10deadbeef::abcdef.0123456789abcdef")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            user.name, "system:bootstrap:abcdef",
            "the K10 form names the same token"
        );
        assert_eq!(
            ask("abcdef.0123456789abcdee").await,
            Ok(None),
            "wrong secret"
        );
        assert_eq!(ask("expird.0123456789abcdef").await, Ok(None), "expired");
        assert_eq!(
            ask("nousag.0123456789abcdef").await,
            Ok(None),
            "not for authentication"
        );
        assert_eq!(
            ask("zzzzzz.0123456789abcdef").await,
            Ok(None),
            "no such token"
        );
        assert_eq!(ask("admin-token").await, Ok(None), "not a bootstrap token");
    }
}
