//! The client certificate authenticator: a certificate the cluster CA
//! signed names the user in its CN and the groups in its O entries
//! (upstream's x509 authenticator). The TLS handshake lets any certificate
//! through so that a bad one is answered with a 401 Status rather than a
//! torn connection; the check against the CA happens here, once per
//! connection, since a connection's certificate does not change between
//! its requests.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use super::{Authenticator, Credentials, Error};
use crate::server::auth::User;

/// What a connection's client certificate proved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PeerCertificate {
    /// No certificate was offered.
    #[default]
    None,
    /// Signed by the cluster CA and valid now: this user.
    Valid(User),
    /// Not signed by the cluster CA, expired, or naming no user.
    Invalid,
}

/// Checks client certificates against the cluster CA.
pub struct X509 {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl X509 {
    /// An authenticator trusting what `verifier` (see
    /// [`crate::server::auth::client_verifier`]) accepts.
    pub fn new(verifier: Arc<dyn ClientCertVerifier>) -> Self {
        Self { verifier }
    }

    /// Check the certificate chain a connection presented (leaf first).
    pub fn verify_peer(&self, chain: Option<&[CertificateDer<'_>]>) -> PeerCertificate {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return PeerCertificate::None;
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .ok()
            .and_then(|_| User::from_certificate(leaf))
            .map_or(PeerCertificate::Invalid, PeerCertificate::Valid)
    }
}

impl Authenticator for X509 {
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials<'a>,
    ) -> BoxFuture<'a, Result<Option<User>, Error>> {
        let out = match credentials.peer {
            PeerCertificate::None => Ok(None),
            PeerCertificate::Valid(user) => Ok(Some(user.clone())),
            PeerCertificate::Invalid => Err(Error::InvalidCertificate),
        };
        async move { out }.boxed()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::server::auth::Pki;
    use rustls::pki_types::pem::PemObject;

    /// A cluster PKI in a temporary directory.
    pub(crate) fn pki() -> (tempfile::TempDir, Pki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["127.0.0.1".into()]).unwrap();
        (dir, pki)
    }

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn certificates_the_cluster_ca_signed_name_the_user_and_groups() {
        let (_dir, pki) = pki();
        let x509 = X509::new(crate::server::auth::client_verifier(&pki).unwrap());
        let PeerCertificate::Valid(admin) = x509.verify_peer(Some(&der(&pki.admin_cert))) else {
            panic!("the admin certificate is valid");
        };
        assert_eq!(admin.name, "system:admin");
        assert_eq!(admin.groups, ["system:masters", "system:authenticated"]);

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:node-a");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let node = pki.sign_client_request(&csr, 3600).unwrap();
        let PeerCertificate::Valid(user) = x509.verify_peer(Some(&der(&node))) else {
            panic!("a node certificate is valid");
        };
        assert_eq!(user.node(), Some("node-a"));
        assert_eq!(x509.verify_peer(None), PeerCertificate::None);
    }

    #[test]
    fn certificates_from_another_ca_are_invalid() {
        let (_dir, pki) = pki();
        let x509 = X509::new(crate::server::auth::client_verifier(&pki).unwrap());
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let forged = params.self_signed(&key).unwrap();
        assert_eq!(
            x509.verify_peer(Some(&der(&forged.pem()))),
            PeerCertificate::Invalid
        );
        let (_other_dir, other) = super::tests::pki();
        assert_eq!(
            x509.verify_peer(Some(&der(&other.admin_cert))),
            PeerCertificate::Invalid,
            "another cluster's admin is not ours"
        );
    }

    #[tokio::test]
    async fn the_authenticator_reports_what_the_connection_proved() {
        let (_dir, pki) = pki();
        let x509 = X509::new(crate::server::auth::client_verifier(&pki).unwrap());
        let ask = |peer: PeerCertificate| {
            let x509 = &x509;
            async move {
                let creds = Credentials {
                    peer: &peer,
                    bearer: Some("ignored"),
                };
                x509.authenticate(&creds).await
            }
        };
        assert_eq!(ask(PeerCertificate::None).await, Ok(None));
        assert_eq!(
            ask(PeerCertificate::Invalid).await,
            Err(Error::InvalidCertificate)
        );
        let user = User::bootstrap("x");
        assert_eq!(
            ask(PeerCertificate::Valid(user.clone())).await,
            Ok(Some(user))
        );
    }
}
