//! Joining: from a server URL and a join token to an API client that trusts
//! the server's CA.
//!
//! The token is `K10<sha256 of the CA PEM>::<user>:<secret>` (k3s's format).
//! The agent fetches the CA from `/cacerts` without trusting anything, checks
//! its hash against the token, and only then sends the secret — to a server
//! verified with that CA. Before that it checks the server's certificate
//! itself against that CA and the address joined by, so that a certificate
//! that does not name that address is one clear error, not a connection
//! error retried forever.

use std::path::Path;
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};
use kube::{Client, Config};

use super::Error;

/// What an agent holds after joining: enough to open its own connections
/// (the kubelet API tunnel) besides the API client.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub url: String,
    /// The server's CA, checked against the token.
    pub ca_pem: String,
    pub token: String,
    /// The node's client certificate and key (PEM), once it has them; the
    /// token is then no longer sent.
    pub identity: Option<(String, String)>,
}

/// A client for `server`, authenticated with `token`, trusting only the CA
/// the token pins.
///
/// # Errors
/// A malformed token or URL, an unreachable server, or a CA that does not
/// match the token.
pub async fn client(server: &str, token: &str) -> Result<Client, Error> {
    Ok(join(server, token).await?.0)
}

/// [`client`], and the credentials it was made from.
///
/// # Errors
/// As [`client`].
pub async fn join(server: &str, token: &str) -> Result<(Client, Credentials), Error> {
    let token = token.trim();
    let expected = crate::api::join::token_ca_hash(token)
        .map_err(Error::Token)?
        .to_lowercase();
    let url: http::Uri = server
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::Url {
            url: server.into(),
            reason: e.to_string(),
        })?;
    if url.scheme_str() != Some("https") {
        return Err(Error::Url {
            url: server.into(),
            reason: "it must be https://HOST:PORT".into(),
        });
    }
    // Step 1: fetch the CA without trusting the server yet.
    let mut insecure = Config::new(url.clone());
    insecure.accept_invalid_certs = true;
    let probe = Client::try_from(insecure).map_err(|source| Error::Connect {
        url: server.into(),
        source,
    })?;
    let req = http::Request::get("/cacerts")
        .body(Vec::new())
        .expect("static request");
    let ca_pem = probe
        .request_text(req)
        .await
        .map_err(|source| Error::Connect {
            url: server.into(),
            source,
        })?;
    let actual = crate::api::join::ca_hash(&ca_pem);
    if actual != expected {
        return Err(Error::CaMismatch {
            url: server.into(),
            expected,
            actual,
        });
    }
    // Step 2: a client that verifies the server with that CA.
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    check_serving_certificate(server, &url, &roots).await?;
    let mut config = Config::new(url);
    config.root_cert = Some(roots);
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        Error::Token("the join token has characters not allowed in an HTTP header".into())
    })?;
    config
        .headers
        .push((HeaderName::from_static("authorization"), bearer));
    let client = Client::try_from(config).map_err(|source| Error::Connect {
        url: server.into(),
        source,
    })?;
    Ok((
        client,
        Credentials {
            url: server.to_owned(),
            ca_pem,
            token: token.to_owned(),
            identity: None,
        },
    ))
}

/// [`join`] then [`node_identity`], retried with jittered back-off (1 s
/// doubling to 30 s) while the server cannot be reached or answers with
/// a server error — an agent started before its server, or one whose
/// server is restarting, joins when it is back. A CA that does not match
/// the token, a refused token or a taken node name end it at once.
///
/// # Errors
/// The errors that retrying cannot fix.
pub async fn join_node(
    server: &str,
    token: &str,
    data_dir: &Path,
    node: &str,
) -> Result<(Client, Credentials), Error> {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        let attempt = async {
            let (client, creds) = join(server, token).await?;
            node_identity(&client, &creds, data_dir, node).await
        }
        .await;
        match attempt {
            Err(e) if retryable(&e) => {
                // 50..150 % of the delay, so restarted agents spread out.
                let spread = 0.5 + f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0;
                let wait = delay.mul_f64(spread);
                tracing::warn!(error = %e, retry_in = ?wait, "cannot join the server yet; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// Worth another try: the server unreachable or failing, not refusing.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Connect { .. } => true,
        Error::Api { source, .. } => match source {
            kube::Error::Api(s) => s.code >= 500 || s.code == 429,
            _ => true,
        },
        _ => false,
    }
}

/// Does the server's certificate hold, under the CA the token pinned, for
/// the host the agent joins by? Any other failure to look (the server gone
/// between two requests) is left to the API client, which reports and
/// retries it.
///
/// # Errors
/// [`Error::ServerCertificate`], naming the address, the names the
/// certificate covers and the fix.
async fn check_serving_certificate(
    server: &str,
    url: &http::Uri,
    roots: &[Vec<u8>],
) -> Result<(), Error> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let Some(host) = url.host() else {
        return Ok(());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return Ok(());
    };
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        let _ = store.add(CertificateDer::from(der.clone()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        provider.clone(),
    )
    .build() else {
        return Ok(());
    };
    let recording = Arc::new(Recording {
        inner: verifier,
        failure: Mutex::new(None),
    });
    let Ok(config) = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(recording.clone())
                .with_no_client_auth()
        })
    else {
        return Ok(());
    };
    let port = url.port_u16().unwrap_or(443);
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
        return Ok(());
    }
    let failure = recording
        .failure
        .lock()
        .map(|mut f| f.take())
        .unwrap_or_default();
    let Some((leaf, err)) = failure else {
        return Ok(());
    };
    Err(Error::ServerCertificate {
        url: server.to_owned(),
        reason: certificate_problem(&host, &leaf, &err),
    })
}

/// The one line that says why the certificate failed and what to do.
fn certificate_problem(host: &str, leaf: &[u8], err: &rustls::Error) -> String {
    use rustls::CertificateError;
    let fix = format!(
        "pass --tls-san {host} to the server (or start it with --node-ip/--advertise-address {host}) or join by a name in its certificate"
    );
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            let names = certificate_names(leaf);
            format!(
                "is not valid for {host} (it covers {}); {fix}",
                if names.is_empty() {
                    "no names".to_owned()
                } else {
                    names.join(", ")
                }
            )
        }
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "is not signed by the CA the join token pins (unknown CA): a wrong --server, or someone in between; join the server the token came from".to_owned(),
        other => format!("failed verification: {other}; {fix}"),
    }
}

/// The DNS names and IPs a certificate (DER) is for.
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The pinned CA's verifier, keeping the certificate it rejected and why.
#[derive(Debug)]
struct Recording {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    failure: Mutex<Option<(Vec<u8>, rustls::Error)>>,
}

impl rustls::client::danger::ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .inspect_err(|err| {
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some((end_entity.to_vec(), err.clone()));
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Certificates are renewed at start when fewer days than this remain.
const RENEW_DAYS: i64 = 90;

/// The node's own identity, kept under `<data-dir>/agent/`: a key made
/// here (`client-kubelet.key`), the certificate the server issued for it
/// (`client-kubelet.crt`, CN `system:node:<node>`, O `system:nodes`), the
/// CA it was issued under (`server-ca.crt`), the node password
/// (`node-password`, made once; the server keeps its hash, so a second
/// machine cannot take this node's name) and a kubeconfig for that
/// identity (`kubeconfig.yaml`, handy for seeing what a node may do). A
/// certificate is asked for ([`request_certificate`]) when there is none,
/// the CA changed, the node name changed, or fewer than 90 days remain:
/// by the node itself while its certificate holds, otherwise with the
/// join token (`joined`). The client returned authenticates with it.
///
/// # Errors
/// Files that cannot be read or written, or the server refusing (a node
/// name another machine holds, a bad token).
pub async fn node_identity(
    joined: &Client,
    creds: &Credentials,
    data_dir: &Path,
    node: &str,
) -> Result<(Client, Credentials), Error> {
    let dir = data_dir.join("agent");
    let io = |what: &Path, e: std::io::Error| Error::Runtime(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let file = |name: &str| dir.join(name);
    let password = match std::fs::read_to_string(file("node-password")) {
        Ok(p) if p.trim().len() >= 16 => p.trim().to_owned(),
        _ => {
            let p = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            write_private(&file("node-password"), &p).map_err(|e| io(&file("node-password"), e))?;
            p
        }
    };
    let current = (
        std::fs::read_to_string(file("client-kubelet.crt")),
        std::fs::read_to_string(file("client-kubelet.key")),
        std::fs::read_to_string(file("server-ca.crt")),
    );
    let reuse = match &current {
        (Ok(cert), Ok(key), Ok(ca)) if *ca == creds.ca_pem => cert_days_left(cert, node)
            .filter(|d| *d > RENEW_DAYS)
            .map(|_| (cert.clone(), key.clone())),
        _ => None,
    };
    let (cert, key) = match reuse {
        Some(pair) => pair,
        None => {
            // A node whose certificate still holds renews as itself (its
            // request is approved as `selfnodeclient`); otherwise the token
            // asks (`nodeclient`), with the node password.
            let own = match &current {
                (Ok(cert), Ok(key), Ok(ca))
                    if *ca == creds.ca_pem && cert_days_left(cert, node).is_some_and(|d| d > 0) =>
                {
                    Some(identity_client(creds, &kubeconfig(creds, node, cert, key)).await?)
                }
                _ => None,
            };
            let key = rcgen::KeyPair::generate()
                .map_err(|e| Error::Runtime(format!("generating the node key: {e}")))?;
            let cert =
                request_certificate(own.as_ref().unwrap_or(joined), node, &password, &key).await?;
            let key = key.serialize_pem();
            write_private(&file("client-kubelet.key"), &key)
                .map_err(|e| io(&file("client-kubelet.key"), e))?;
            write_private(&file("client-kubelet.crt"), &cert)
                .map_err(|e| io(&file("client-kubelet.crt"), e))?;
            write_private(&file("server-ca.crt"), &creds.ca_pem)
                .map_err(|e| io(&file("server-ca.crt"), e))?;
            tracing::info!(node, "got a node certificate");
            (cert, key)
        }
    };
    let kubeconfig = kubeconfig(creds, node, &cert, &key);
    write_private(&file("kubeconfig.yaml"), &kubeconfig)
        .map_err(|e| io(&file("kubeconfig.yaml"), e))?;
    let client = identity_client(creds, &kubeconfig).await?;
    let mut creds = creds.clone();
    creds.identity = Some((cert, key));
    Ok((client, creds))
}

/// A kubeconfig for node `node`'s identity.
fn kubeconfig(creds: &Credentials, node: &str, cert: &str, key: &str) -> String {
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let user = format!("system:node:{node}");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {url}
  name: orch
contexts:
- context:
    cluster: orch
    user: {user}
  name: {user}
current-context: {user}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(&creds.ca_pem),
        url = creds.url,
        cert = b64(cert),
        key = b64(key),
    )
}

/// An API client for the identity in `kubeconfig`.
async fn identity_client(creds: &Credentials, kubeconfig: &str) -> Result<Client, Error> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| Error::Runtime(format!("the node kubeconfig: {e}")))?;
    let config = Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| Error::Runtime(format!("the node kubeconfig: {e}")))?;
    Client::try_from(config).map_err(|source| Error::Connect {
        url: creds.url.clone(),
        source,
    })
}

/// Ask for node `node`'s client certificate for `key` as upstream's
/// kubelet does: a CertificateSigningRequest to
/// `kubernetes.io/kube-apiserver-client-kubelet` (CN `system:node:<node>`,
/// O `system:nodes`), sent with the node password, then wait until it is
/// signed. The server approves it at once for the join token, a bootstrap
/// token or the node itself; anything else waits for `kubectl certificate
/// approve`, and says so.
async fn request_certificate(
    client: &Client,
    node: &str,
    password: &str,
    key: &rcgen::KeyPair,
) -> Result<String, Error> {
    use base64::Engine;
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use kube::api::{Api, WatchEvent, WatchParams};
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let pem = params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| Error::Runtime(format!("making the certificate request: {e}")))?;
    let body = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    });
    let req = http::Request::post("/apis/certificates.k8s.io/v1/certificatesigningrequests")
        .header("orch-node-password", password)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string().into_bytes())
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let api_error = |source| Error::Api {
        what: format!("a certificate for node {node:?}"),
        source,
    };
    let mut csr: CertificateSigningRequest = client.request(req).await.map_err(|source| match source {
        kube::Error::Api(s) if s.code == 401 => Error::Token(
            "the server refused the join token (wrong, expired or deleted); use <data-dir>/server/token from the server, or make a new one there with `orch token create`".into(),
        ),
        source => api_error(source),
    })?;
    let name = csr.metadata.name.clone().unwrap_or_default();
    tracing::info!(node, csr = %name, "asked for a node certificate");
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let asked = std::time::Instant::now();
    let mut hinted = false;
    loop {
        if let Some(cert) = signed(&csr, &name)? {
            return Ok(cert);
        }
        if !hinted && asked.elapsed() > std::time::Duration::from_secs(10) {
            tracing::warn!(
                csr = %name,
                "the node's certificate request is not approved yet; approve it on the server: kubectl certificate approve {name}"
            );
            hinted = true;
        }
        let rv = csr.metadata.resource_version.clone().unwrap_or_default();
        let watch = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(10);
        let mut events = api.watch(&watch, &rv).await.map_err(api_error)?.boxed();
        while let Some(event) = events.try_next().await.map_err(api_error)? {
            match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    csr = o;
                    if signed(&csr, &name)?.is_some() {
                        break;
                    }
                }
                WatchEvent::Deleted(_) => {
                    return Err(Error::Runtime(format!(
                        "certificate request {name} for node {node:?} was deleted before it was signed; restart the agent to ask again"
                    )));
                }
                WatchEvent::Error(_) => {
                    // Too old a resourceVersion: look again.
                    csr = api.get(&name).await.map_err(api_error)?;
                    break;
                }
                WatchEvent::Bookmark(_) => {}
            }
        }
    }
}

/// The certificate (PEM) `csr` was signed with, `None` while it waits, or
/// why it never will be (Denied or Failed).
fn signed(
    csr: &k8s_openapi::api::certificates::v1::CertificateSigningRequest,
    name: &str,
) -> Result<Option<String>, Error> {
    let Some(status) = &csr.status else {
        return Ok(None);
    };
    if let Some(refused) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False")
    {
        return Err(Error::Runtime(format!(
            "the node's certificate request {name} was {} ({}): {}; ask a cluster admin, then restart the agent",
            refused.type_.to_lowercase(),
            refused.reason.as_deref().unwrap_or_default(),
            refused.message.as_deref().unwrap_or_default(),
        )));
    }
    Ok(status
        .certificate
        .as_ref()
        .filter(|c| !c.0.is_empty())
        .map(|c| String::from_utf8_lossy(&c.0).into_owned()))
}

/// Days left on `cert` if it is node `node`'s.
fn cert_days_left(cert: &str, node: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    if cn != format!("system:node:{node}") {
        return None;
    }
    let left = cert.validity().not_after.timestamp() - jiff::Timestamp::now().as_second();
    Some(left / 86400)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `cn` that ends in `days` days.
    fn cert(cn: &str, days: i64) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let end = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(24 * days))
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        params.not_after =
            rcgen::date_time_ymd(i32::from(end.year()), end.month() as u8, end.day() as u8);
        params.self_signed(&key).unwrap().pem()
    }

    /// A TLS server on 127.0.0.1 whose certificate (from a fresh CA) names
    /// only `sans`; its port and the CA's DER.
    async fn serve_tls(sans: &[&str]) -> (u16, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        (port, ca.der().to_vec())
    }

    #[tokio::test]
    async fn a_certificate_without_the_joined_address_is_one_clear_error() {
        let (port, ca) = serve_tls(&["orch.example", "10.9.9.9"]).await;
        let server = format!("https://127.0.0.1:{port}");
        let err =
            check_serving_certificate(&server, &server.parse().unwrap(), std::slice::from_ref(&ca))
                .await
                .unwrap_err();
        assert!(!retryable(&err), "a name mismatch is not retried");
        assert_eq!(
            err.to_string(),
            format!(
                "the server's certificate at {server} is not valid for 127.0.0.1 (it covers orch.example, 10.9.9.9); pass --tls-san 127.0.0.1 to the server (or start it with --node-ip/--advertise-address 127.0.0.1) or join by a name in its certificate"
            )
        );
        // Joined by an address it names, the check passes.
        let (port, ca) = serve_tls(&["127.0.0.1"]).await;
        let server = format!("https://127.0.0.1:{port}");
        check_serving_certificate(&server, &server.parse().unwrap(), &[ca])
            .await
            .unwrap();
        // Signed by another CA than the one pinned.
        let (port, _) = serve_tls(&["127.0.0.1"]).await;
        let server = format!("https://127.0.0.1:{port}");
        let err = check_serving_certificate(&server, &server.parse().unwrap(), &[ca_other()])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown CA"), "{err}");
    }

    fn ca_other() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn node_certificates_are_renewed_when_90_days_or_fewer_remain_or_the_name_changed() {
        let fresh = cert_days_left(&cert("system:node:a", 365), "a").unwrap();
        assert!(fresh > RENEW_DAYS, "{fresh}");
        let old = cert_days_left(&cert("system:node:a", 30), "a").unwrap();
        assert!(old <= RENEW_DAYS, "{old}");
        assert_eq!(cert_days_left(&cert("system:node:a", 365), "b"), None);
        assert_eq!(cert_days_left("not a certificate", "a"), None);
    }
}
