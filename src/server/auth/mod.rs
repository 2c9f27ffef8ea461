//! Who is calling, and may they: the cluster PKI, the caller ([`User`]),
//! authentication ([`authn`]: a chain of client certificate, static
//! tokens, service account JWTs and bootstrap tokens) and authorization
//! ([`authz`]: a chain of `system:masters`, Node and RBAC, whose default
//! roles and bindings [`policy`] keeps).

#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod impersonation;
pub mod pki;
pub mod policy;
pub mod serviceaccount;

use std::sync::Arc;

pub use pki::Pki;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Pki(String),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),
    #[error("invalid API audiences: {0}")]
    Audiences(&'static str),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    /// `name` in `groups` and `system:authenticated`.
    pub(crate) fn new(name: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        groups.push("system:authenticated".into());
        Self {
            name: name.to_owned(),
            uid: String::new(),
            groups,
        }
    }

    /// Whoever presented no credentials (upstream's anonymous user): not
    /// in `system:authenticated`.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// A service account: `system:serviceaccount:<ns>:<name>`, in the
    /// groups of all service accounts and of its namespace's.
    pub fn service_account(ns: &str, name: &str) -> Self {
        Self::new(
            &format!("system:serviceaccount:{ns}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
            ],
        )
    }

    /// A bootstrap token's user, which may only ask for nodes'
    /// certificates.
    pub fn bootstrap(id: &str) -> Self {
        Self::new(&format!("system:bootstrap:{id}"), &["system:bootstrappers"])
    }

    /// Is this a bootstrap token's user?
    pub fn is_bootstrapper(&self) -> bool {
        self.groups.iter().any(|g| g == "system:bootstrappers")
    }

    /// The node this user is (`system:node:<name>` in `system:nodes`).
    pub fn node(&self) -> Option<&str> {
        self.groups
            .iter()
            .any(|g| g == "system:nodes")
            .then(|| self.name.strip_prefix("system:node:"))
            .flatten()
            .filter(|n| !n.is_empty())
    }

    /// The identity in a client certificate: CN is the user, each O a group.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
        let groups: Vec<&str> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .collect();
        Some(Self::new(&name, &groups))
    }
}

/// The join token: `K10<sha256 of the CA PEM>::server:<secret>`, created
/// once in `<data-dir>/server/token` (mode 0600) and reused. `wanted` (the
/// secret, or a whole token naming this CA) sets the secret on first start;
/// later it must match.
///
/// # Errors
/// The token file cannot be read or written, or `wanted` is not usable or
/// differs from the token already set.
pub fn join_token(
    path: &std::path::Path,
    ca_pem: &str,
    wanted: Option<&str>,
) -> Result<String, Error> {
    let hash = ca_hash(ca_pem);
    let prefix = format!("K10{hash}::server:");
    let wanted = match wanted.map(str::trim) {
        None | Some("") => None,
        Some(w) if w.starts_with("K10") => Some(
            w.strip_prefix(&prefix)
                .ok_or_else(|| {
                    Error::Pki(format!(
                        "--token {w:?} names another CA or user; pass the secret alone (or K10{hash}::server:SECRET)"
                    ))
                })?
                .to_owned(),
        ),
        Some(w) => Some(w.to_owned()),
    };
    if let Some(w) = &wanted
        && !w.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::Pki(
            "--token may only have printable characters without spaces".into(),
        ));
    }
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_owned();
        if existing.starts_with(&format!("K10{hash}::")) {
            return match &wanted {
                Some(w) if existing != format!("{prefix}{w}") => Err(Error::Pki(format!(
                    "--token differs from the token this server already has ({}); drop --token, or pass that one",
                    path.display()
                ))),
                _ => Ok(existing),
            };
        }
    }
    let secret = wanted.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let token = format!("{prefix}{secret}");
    pki::write_private_file(path, &format!("{token}\n"))?;
    Ok(token)
}

pub use crate::api::join::ca_hash;

/// rustls configuration: our serving certificate, client certificates
/// optional (checked against the cluster CA when offered), h2 and http/1.1.
///
/// # Errors
/// When the PEM material cannot be parsed.
pub fn server_tls_config(pki: &Pki) -> Result<rustls::ServerConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(LenientClientVerifier(client_verifier(pki)?));
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Checks client certificates against the cluster CA.
///
/// # Errors
/// When the CA cannot be parsed.
pub fn client_verifier(
    pki: &Pki,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let tls = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))
}

/// Client certificates optional, and one the CA did not sign (or that
/// expired) does not end the handshake: the request then gets a 401
/// Status, as from the Kubernetes API server, once the API re-checks the
/// certificate with [`client_verifier`]. The client must still prove it
/// holds the certificate's key (the handshake signature is checked here).
#[derive(Debug)]
struct LenientClientVerifier(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for LenientClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
