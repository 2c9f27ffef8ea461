//! The static token authenticator: bearer tokens the server knows from
//! its own files (upstream's token file): the admin token and the cluster
//! join token.

use std::collections::HashMap;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Authenticator, Credentials, Error};
use crate::server::auth::User;

/// Bearer tokens known to the server, and whom they stand for.
#[derive(Debug, Default)]
pub struct Tokens {
    users: HashMap<String, User>,
}

impl Tokens {
    /// The admin's token: `system:admin` in `system:masters`.
    pub fn with_admin(token: &str) -> Self {
        let mut users = HashMap::new();
        users.insert(
            token.to_owned(),
            User::new("system:admin", &["system:masters"]),
        );
        Self { users }
    }

    /// Accept the cluster join token too. Agents present it once to get
    /// their node certificate; like k3s's server token it acts with full
    /// rights (`orch agent --simulate` uses it for its many nodes).
    pub fn with_join_token(mut self, token: &str) -> Self {
        self.users.insert(
            token.to_owned(),
            User::new("system:orch-agent", &["system:nodes", "system:masters"]),
        );
        self
    }

    /// The user a bearer token stands for.
    pub fn user(&self, token: &str) -> Option<User> {
        self.users.get(token).cloned()
    }
}

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<Option<User>, Error>> {
        let user = credentials.bearer.and_then(|t| self.user(t));
        async move { Ok(user) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authn::PeerCertificate;

    #[tokio::test]
    async fn the_admin_and_join_tokens_name_their_users() {
        let tokens = Tokens::with_admin("admin-secret").with_join_token("K10abc::server:join");
        let none = PeerCertificate::None;
        let ask = |bearer| {
            let tokens = &tokens;
            let none = &none;
            async move {
                tokens
                    .authenticate(&Credentials { peer: none, bearer })
                    .await
            }
        };
        let admin = ask(Some("admin-secret")).await.unwrap().unwrap();
        assert_eq!(admin.name, "system:admin");
        assert!(admin.groups.contains(&"system:masters".to_owned()));
        let agent = ask(Some("K10abc::server:join")).await.unwrap().unwrap();
        assert_eq!(agent.name, "system:orch-agent");
        assert!(agent.groups.contains(&"system:masters".to_owned()));
        assert_eq!(
            ask(Some("admin-secreT")).await,
            Ok(None),
            "not ours: the next authenticator is asked"
        );
        assert_eq!(ask(None).await, Ok(None));
    }
}
