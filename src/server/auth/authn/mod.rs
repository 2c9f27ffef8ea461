//! Authentication: who a request comes from. A chain of authenticators,
//! each its own type behind [`Authenticator`], asked in order: the client
//! certificate ([`x509`]), the admin and join tokens ([`token`]), service
//! account JWTs ([`service_account`]) and bootstrap tokens
//! ([`bootstrap`]). The first that recognises the request names the user.
//!
//! Semantics are upstream's union authenticator followed by
//! `--anonymous-auth=false` (k3s's setting): a credential that is presented
//! but not valid (a certificate the cluster CA did not sign, a bearer token
//! no authenticator accepts) is a 401, and so is a request with no
//! credentials at all. An invalid certificate does not hide a valid bearer
//! token on the same request: as upstream, the next authenticator is asked.

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod service_account;
pub mod token;
pub mod x509;

use futures::future::BoxFuture;

use super::User;
pub use x509::PeerCertificate;

/// Why a request is not authenticated (each is a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the client certificate is not signed by the cluster CA or has expired")]
    InvalidCertificate,
    #[error("invalid bearer token")]
    InvalidBearerToken,
    /// A service account token made for another audience (upstream's
    /// wording).
    #[error("token audiences {token:?} is invalid for the target audiences {api:?}")]
    InvalidAudience {
        token: Vec<String>,
        api: Vec<String>,
    },
    #[error("no credentials: present a client certificate or a bearer token")]
    NoCredentials,
}

/// What a request presents to prove who it is.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The connection's client certificate, checked once per connection.
    pub peer: &'a PeerCertificate,
    /// The token of an `Authorization: Bearer <token>` header.
    pub bearer: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The credentials of a request with these headers, on a connection
    /// that presented `peer`.
    pub fn new(peer: &'a PeerCertificate, headers: &'a http::HeaderMap) -> Self {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        Self { peer, bearer }
    }
}

/// One way of telling who a request comes from.
pub trait Authenticator: Send + Sync {
    /// `Ok(Some(user))` when the credentials are this authenticator's and
    /// valid, `Ok(None)` when they are not its kind, `Err` when they are
    /// its kind but not valid.
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<Option<User>, Error>>;
}

/// An authenticator shared with other parts of the server (the client
/// certificate one is also asked once per connection).
impl<T: Authenticator + ?Sized> Authenticator for std::sync::Arc<T> {
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<Option<User>, Error>> {
        (**self).authenticate(credentials)
    }
}

/// The authenticators, asked in order.
pub struct Chain {
    authenticators: Vec<Box<dyn Authenticator>>,
}

impl Chain {
    pub fn new(authenticators: Vec<Box<dyn Authenticator>>) -> Self {
        Self { authenticators }
    }

    /// The user the first authenticator recognises.
    ///
    /// # Errors
    /// The first authenticator's error when none recognised the request;
    /// [`Error::InvalidBearerToken`] for a bearer token none accepted;
    /// [`Error::NoCredentials`] when nothing was presented (anonymous
    /// requests are refused, as k3s runs the API server).
    pub async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<User, Error> {
        let mut failure = None;
        for authenticator in &self.authenticators {
            match authenticator.authenticate(credentials).await {
                Ok(Some(user)) => return Ok(user),
                Ok(None) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match (failure, credentials.bearer) {
            (Some(e), _) => Err(e),
            (None, Some(_)) => Err(Error::InvalidBearerToken),
            (None, None) => Err(Error::NoCredentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Recognises one token, and refuses one that looks like its own.
    struct Fixed(&'static str);

    impl Authenticator for Fixed {
        fn authenticate<'a>(
            &'a self,
            credentials: &'a Credentials<'a>,
        ) -> BoxFuture<'a, Result<Option<User>, Error>> {
            let out = match credentials.bearer {
                Some(t) if t == self.0 => Ok(Some(User::bootstrap(self.0))),
                Some(t) if t.starts_with(self.0) => Err(Error::InvalidBearerToken),
                _ => Ok(None),
            };
            async move { out }.boxed()
        }
    }

    fn chain() -> (tempfile::TempDir, Chain) {
        let (dir, pki) = x509::tests::pki();
        let x509 = x509::X509::new(crate::server::auth::client_verifier(&pki).unwrap());
        let chain = Chain::new(vec![
            Box::new(x509),
            Box::new(Fixed("aaa")),
            Box::new(Fixed("bbb")),
        ]);
        (dir, chain)
    }

    #[tokio::test]
    async fn the_first_authenticator_that_recognises_the_request_wins() {
        let none = PeerCertificate::None;
        let creds = |bearer| Credentials {
            peer: &none,
            bearer,
        };
        let (_dir, chain) = chain();
        assert_eq!(
            chain.authenticate(&creds(Some("aaa"))).await.unwrap().name,
            "system:bootstrap:aaa"
        );
        assert_eq!(
            chain.authenticate(&creds(Some("bbb"))).await.unwrap().name,
            "system:bootstrap:bbb"
        );
        assert_eq!(
            chain.authenticate(&creds(Some("zzz"))).await,
            Err(Error::InvalidBearerToken),
            "an unknown token is a 401, not anonymous"
        );
        assert_eq!(
            chain.authenticate(&creds(Some("aaax"))).await,
            Err(Error::InvalidBearerToken)
        );
        assert_eq!(
            chain.authenticate(&creds(None)).await,
            Err(Error::NoCredentials)
        );
    }

    #[tokio::test]
    async fn a_bad_certificate_is_refused_unless_a_token_names_the_user() {
        let bad = PeerCertificate::Invalid;
        let (_dir, chain) = chain();
        let creds = Credentials {
            peer: &bad,
            bearer: None,
        };
        assert_eq!(
            chain.authenticate(&creds).await,
            Err(Error::InvalidCertificate)
        );
        let creds = Credentials {
            peer: &bad,
            bearer: Some("aaa"),
        };
        assert_eq!(
            chain.authenticate(&creds).await.unwrap().name,
            "system:bootstrap:aaa"
        );
        let good = PeerCertificate::Valid(User::bootstrap("cert"));
        let creds = Credentials {
            peer: &good,
            bearer: Some("aaa"),
        };
        assert_eq!(
            chain.authenticate(&creds).await.unwrap().name,
            "system:bootstrap:cert",
            "the certificate is asked first"
        );
    }

    #[test]
    fn bearer_tokens_come_from_the_authorization_header() {
        let none = PeerCertificate::None;
        let mut headers = http::HeaderMap::new();
        assert_eq!(Credentials::new(&none, &headers).bearer, None);
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(Credentials::new(&none, &headers).bearer, None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc ".parse().unwrap());
        assert_eq!(Credentials::new(&none, &headers).bearer, Some("abc"));
    }
}
