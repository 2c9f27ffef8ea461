//! Pulling images from registries with `oci-client`.
//!
//! Where to pull from and how to log in comes from `registries.yaml` in the
//! shape k3s and containerd users know:
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://10.0.0.5:5000", "https://mirror.example"]
//!     rewrite: {"^library/(.*)": "mirrored/$1"}
//!   "*":
//!     endpoint: ["https://catch-all.example"]
//! configs:
//!   "10.0.0.5:5000":
//!     auth: {username: u, password: p}       # or auth: base64(u:p), or identity_token: t
//!     tls: {ca_file: /etc/ssl/reg.pem, insecure_skip_verify: false}
//! ```
//!
//! The endpoints of a registry's mirror (or of `"*"` when it has none) are
//! tried in order, then the registry itself. `http://` endpoints are plain
//! HTTP. Credentials from a pod's `imagePullSecrets` (for the image's
//! registry) come before those in `configs`. An `identity_token` is an
//! OAuth2 refresh token: it is traded for a pull token at the token service
//! the registry's Bearer challenge names.
//!
//! Blobs are downloaded into `ingest/` and moved into the store, digest
//! checked, only when the whole image is there; the image is committed
//! under the store's lock, so `orch image rm` never sees half an image.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWrite;

use super::import::{
    INDEX_DOCKER, INDEX_OCI, MANIFEST_DOCKER, MANIFEST_OCI, Platform, choose_manifest, commit_image,
};
use super::reference::{DOCKER_HUB, ImageRef};
use super::store::{Image, ImageStore};

/// Layers downloaded at once per image.
const PARALLEL_LAYERS: usize = 3;

/// `registries.yaml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Regular expression on the repository → replacement (`$1` …).
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub auth: Option<AuthConfig>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    /// base64 of `username:password`.
    pub auth: Option<String>,
    /// k3s spells it `identity_token` (containerd's TOML and docker's
    /// config.json `identitytoken`, accepted too).
    #[serde(alias = "identitytoken")]
    pub identity_token: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl Registries {
    /// Read `path`; a missing file is an empty configuration.
    ///
    /// # Errors
    /// The file is unreadable or not valid `registries.yaml` (the message
    /// names the file and the problem).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let parsed: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        };
        for (host, m) in &parsed.mirrors {
            for e in &m.endpoint {
                Endpoint::parse(e)
                    .map_err(|e| format!("{}: mirrors.{host:?}.endpoint: {e}", path.display()))?;
            }
            for pattern in m.rewrite.keys() {
                regex::Regex::new(pattern)
                    .map_err(|e| format!("{}: mirrors.{host:?}.rewrite: {e}", path.display()))?;
            }
        }
        for (host, c) in &parsed.configs {
            if let Some(tls) = &c.tls {
                if tls.cert_file.is_some() || tls.key_file.is_some() {
                    return Err(format!(
                        "{}: configs.{host:?}.tls: client certificates (cert_file/key_file) are not supported; use auth instead",
                        path.display()
                    ));
                }
                if let Some(ca) = &tls.ca_file {
                    std::fs::read(ca).map_err(|e| {
                        format!(
                            "{}: configs.{host:?}.tls.ca_file {}: {e}",
                            path.display(),
                            ca.display()
                        )
                    })?;
                }
            }
        }
        Ok(parsed)
    }

    /// Where to look for `image`, in order: its mirror's endpoints (with
    /// the mirror's rewrites), then the registry itself.
    fn endpoints(&self, image: &ImageRef) -> Vec<(Endpoint, String)> {
        let mirror = self
            .mirrors
            .get(&image.registry)
            .or_else(|| self.mirrors.get("*"));
        let upstream = Endpoint {
            https: true,
            host: image.registry.clone(),
        };
        let mut out = Vec::new();
        if let Some(m) = mirror {
            let repository = m
                .rewrite
                .iter()
                .find_map(|(pattern, with)| {
                    let re = regex::Regex::new(pattern).ok()?;
                    re.is_match(&image.repository)
                        .then(|| re.replace(&image.repository, with.as_str()).into_owned())
                })
                .unwrap_or_else(|| image.repository.clone());
            for e in &m.endpoint {
                if let Ok(ep) = Endpoint::parse(e) {
                    let repo = if ep == upstream {
                        image.repository.clone()
                    } else {
                        repository.clone()
                    };
                    if !out.iter().any(|(o, _)| *o == ep) {
                        out.push((ep, repo));
                    }
                }
            }
        }
        if !out.iter().any(|(o, _)| o.host == upstream.host) {
            // A registry on this machine may speak plain HTTP (as
            // containerd and docker assume).
            let local = upstream.host == "localhost"
                || upstream.host.starts_with("localhost:")
                || upstream.host.starts_with("127.")
                || upstream.host.starts_with("[::1]");
            out.push((upstream.clone(), image.repository.clone()));
            if local {
                out.push((
                    Endpoint {
                        https: false,
                        ..upstream
                    },
                    image.repository.clone(),
                ));
            }
        }
        out
    }

    /// The credentials `configs` has for `host`.
    fn auth_for(&self, host: &str) -> Option<Credential> {
        let a = self.configs.get(host)?.auth.as_ref()?;
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Some(Credential::Auth(RegistryAuth::Basic(u.clone(), p.clone())));
        }
        if let Some(t) = a.identity_token.as_ref().filter(|t| !t.is_empty()) {
            return Some(Credential::IdentityToken(t.clone()));
        }
        a.auth
            .as_deref()
            .and_then(decode_basic)
            .map(Credential::Auth)
    }
}

/// A registry endpoint: `host[:port]` and whether to use TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    host: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if url.contains("://") {
            return Err(format!("{url:?}: only http:// and https:// endpoints work"));
        } else {
            (true, url)
        };
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        // Docker Hub by any of its names (oci-client knows where its API
        // lives).
        let host = match host {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            h => h,
        };
        Ok(Self {
            https,
            host: host.to_owned(),
        })
    }

    fn display(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.host
        )
    }
}

fn decode_basic(encoded: &str) -> Option<RegistryAuth> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some(RegistryAuth::Basic(u.to_owned(), p.to_owned()))
}

/// What a pull logs in to a registry with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Sent as it is: basic auth, or a registry token as Bearer.
    Auth(RegistryAuth),
    /// An `identitytoken`: an OAuth2 refresh token, exchanged at the
    /// registry's token service for a pull token (as containerd does).
    IdentityToken(String),
}

/// Credentials from `imagePullSecrets` (`.dockerconfigjson` /
/// `.dockercfg` contents), by registry host.
#[derive(Debug, Default, Clone)]
pub struct PullSecrets(HashMap<String, Credential>);

impl PullSecrets {
    /// Add a secret's `.dockerconfigjson` (`{"auths": {host: …}}`) or
    /// legacy `.dockercfg` (`{host: …}`) contents; earlier secrets win.
    pub fn add(&mut self, docker_config: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(docker_config) else {
            return;
        };
        let auths = v.get("auths").unwrap_or(&v);
        for (key, entry) in auths.as_object().into_iter().flatten() {
            // As containerd reads them: a `registrytoken` is sent as it
            // is (Bearer); then username and password; then an
            // `identitytoken` (exchanged at the token service); then
            // `auth`, base64 of `user:password`.
            let text = |f: &str| entry[f].as_str().filter(|t| !t.is_empty());
            let auth = if let Some(t) = text("registrytoken") {
                Some(Credential::Auth(RegistryAuth::Bearer(t.to_owned())))
            } else if let (Some(u), Some(p)) = (text("username"), entry["password"].as_str()) {
                Some(Credential::Auth(RegistryAuth::Basic(
                    u.to_owned(),
                    p.to_owned(),
                )))
            } else if let Some(t) = text("identitytoken") {
                Some(Credential::IdentityToken(t.to_owned()))
            } else {
                text("auth").and_then(decode_basic).map(Credential::Auth)
            };
            if let Some(a) = auth {
                self.0.entry(registry_key(key)).or_insert(a);
            }
        }
    }

    fn get(&self, registry: &str) -> Option<Credential> {
        self.0.get(registry).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `host:5000/path` → `host:5000`.
fn registry_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        h => h.to_owned(),
    }
}

/// What a pull reports while it runs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The manifest is resolved: these layers (digest, size) will be
    /// fetched; `present` are already in the store.
    Resolved {
        endpoint: String,
        layers: Vec<(String, u64)>,
        present: usize,
    },
    /// Bytes of a layer received so far.
    Layer { digest: String, received: u64 },
    /// Layers are being unpacked.
    Unpacking,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Failed(String),
}

/// Pulls images into a store.
pub struct Puller {
    store: Arc<ImageStore>,
    registries: Registries,
    platform: Platform,
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, registries: Registries) -> Self {
        Self {
            store,
            registries,
            platform: Platform::current(),
        }
    }

    /// Pull `image` from the first endpoint that has it.
    ///
    /// # Errors
    /// No endpoint served it; the error names each endpoint's failure.
    pub async fn pull(
        &self,
        image: &ImageRef,
        secrets: &PullSecrets,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, PullError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // (answered by a registry, text): connection errors are noise when
        // some endpoint answered.
        let mut failures: Vec<(bool, String)> = Vec::new();
        let mut all_not_found = true;
        let mut any_not_found = false;
        let mut any_unauthorized = false;
        for (endpoint, repository) in self.registries.endpoints(image) {
            match self
                .pull_from(image, &endpoint, &repository, secrets, progress)
                .await
            {
                Ok(i) => return Ok(i),
                Err(e) => {
                    let mut text = describe(&e);
                    if text.contains("invalid peer certificate") {
                        text.push_str(&format!(
                            " (trust the registry's CA with configs.\"{}\".tls.ca_file in registries.yaml)",
                            endpoint.host
                        ));
                    }
                    all_not_found &= matches!(e, Failure::NotFound(_));
                    any_not_found |= matches!(e, Failure::NotFound(_));
                    any_unauthorized |= matches!(e, Failure::Unauthorized(_));
                    failures.push((
                        !matches!(e, Failure::Other(_)),
                        format!("{}: {text}", endpoint.display()),
                    ));
                }
            }
        }
        let answered = failures.iter().any(|(a, _)| *a);
        let reported: Vec<String> = failures
            .into_iter()
            .filter(|(a, _)| *a || !answered)
            .map(|(_, t)| t)
            .collect();
        let message = format!("failed to pull image {image}: {}", reported.join("; "));
        Err(if all_not_found || (any_not_found && !any_unauthorized) {
            PullError::NotFound(message)
        } else if any_unauthorized {
            PullError::Unauthorized(message)
        } else {
            PullError::Failed(message)
        })
    }

    /// Trade an identity token (an OAuth2 refresh token) for a token to
    /// pull `repository` at `endpoint`'s token service: the service named
    /// by the registry's Bearer challenge, asked with grant_type
    /// refresh_token as in docker's token protocol.
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        refresh: &str,
    ) -> Result<RegistryAuth, Failure> {
        let http = self.http_client(endpoint)?;
        let scheme = if endpoint.https { "https" } else { "http" };
        let base = format!("{scheme}://{}/v2/", endpoint.host);
        let failed = |e: reqwest::Error| Failure::Other(error_chain(&e));
        let res = http.get(&base).send().await.map_err(failed)?;
        let Some(challenge) = res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(bearer_challenge)
        else {
            // No token service: the registry does without.
            return Ok(RegistryAuth::Anonymous);
        };
        let scope = format!("repository:{repository}:pull");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "orch"),
            ("scope", scope.as_str()),
        ];
        if let Some(service) = &challenge.service {
            form.push(("service", service));
        }
        let res = http
            .post(&challenge.realm)
            .form(&form)
            .send()
            .await
            .map_err(failed)?;
        let status = res.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(Failure::Unauthorized(format!(
                "the token service {} refused the identitytoken ({status})",
                challenge.realm
            )));
        }
        if !status.is_success() {
            return Err(Failure::Other(format!(
                "the token service {} answered {status} to the identitytoken",
                challenge.realm
            )));
        }
        let body: Value = res.json().await.map_err(failed)?;
        body["access_token"]
            .as_str()
            .or_else(|| body["token"].as_str())
            .map(|t| RegistryAuth::Bearer(t.to_owned()))
            .ok_or_else(|| {
                Failure::Other(format!(
                    "the token service {} sent no access_token",
                    challenge.realm
                ))
            })
    }

    /// An HTTP client for `endpoint` that trusts what its `configs` say.
    fn http_client(&self, endpoint: &Endpoint) -> Result<reqwest::Client, Failure> {
        let (insecure, ca) = self.tls(endpoint)?;
        let mut b = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .danger_accept_invalid_certs(insecure);
        if let Some(pem) = ca {
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Failure::Other(format!("ca_file: {e}")))?;
            b = b.tls_certs_merge([cert]);
        }
        b.build().map_err(|e| Failure::Other(error_chain(&e)))
    }

    fn client(&self, endpoint: &Endpoint) -> Result<Client, Failure> {
        let (insecure, ca) = self.tls(endpoint)?;
        let config = ClientConfig {
            protocol: if endpoint.https {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            accept_invalid_certificates: insecure,
            extra_root_certificates: ca
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
                .into_iter()
                .collect(),
            ..ClientConfig::default()
        };
        Ok(Client::new(config))
    }

    /// What `configs` says of `endpoint`'s TLS: skip verification, and the
    /// CA file's PEM.
    fn tls(&self, endpoint: &Endpoint) -> Result<(bool, Option<Vec<u8>>), Failure> {
        let Some(tls) = self
            .registries
            .configs
            .get(&endpoint.host)
            .and_then(|c| c.tls.as_ref())
        else {
            return Ok((false, None));
        };
        let ca = match &tls.ca_file {
            Some(ca) => Some(
                std::fs::read(ca)
                    .map_err(|e| Failure::Other(format!("ca_file {}: {e}", ca.display())))?,
            ),
            None => None,
        };
        Ok((tls.insecure_skip_verify, ca))
    }

    async fn pull_from(
        &self,
        image: &ImageRef,
        endpoint: &Endpoint,
        repository: &str,
        secrets: &PullSecrets,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, Failure> {
        let client = self.client(endpoint)?;
        let auth = secrets
            .get(&image.registry)
            .or_else(|| self.registries.auth_for(&endpoint.host))
            .or_else(|| {
                (endpoint.host != image.registry)
                    .then(|| self.registries.auth_for(&image.registry))
                    .flatten()
            })
            .unwrap_or(Credential::Auth(RegistryAuth::Anonymous));
        let auth = match auth {
            Credential::Auth(a) => a,
            Credential::IdentityToken(refresh) => {
                self.exchange(endpoint, repository, &refresh).await?
            }
        };
        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => {
                Reference::with_digest(endpoint.host.clone(), repository.to_owned(), d.clone())
            }
            (None, t) => Reference::with_tag(
                endpoint.host.clone(),
                repository.to_owned(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let accepted = [MANIFEST_OCI, MANIFEST_DOCKER, INDEX_OCI, INDEX_DOCKER];
        let (mut body, mut digest) = client
            .pull_manifest_raw(&reference, &auth, &accepted)
            .await
            .map_err(Failure::from)?;
        let mut blobs: Vec<(String, Downloaded)> = Vec::new();
        let mut parsed: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::Other(format!("the manifest is not JSON: {e}")))?;
        if parsed.get("manifests").is_some() {
            // An index: this platform's manifest, by digest.
            let chosen = choose_manifest(&parsed, &self.platform)
                .map_err(|e| Failure::Other(e.to_string()))?["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            blobs.push((digest.clone(), Downloaded::Bytes(body.to_vec())));
            let by_digest = reference.clone_with_digest(chosen.clone());
            (body, digest) = client
                .pull_manifest_raw(&by_digest, &auth, &[MANIFEST_OCI, MANIFEST_DOCKER])
                .await
                .map_err(Failure::from)?;
            if digest != chosen {
                return Err(Failure::Other(format!(
                    "the registry sent manifest {digest} for {chosen}"
                )));
            }
            parsed = serde_json::from_slice(&body)
                .map_err(|e| Failure::Other(format!("the manifest is not JSON: {e}")))?;
        }
        let manifest_digest = digest.clone();
        blobs.push((digest, Downloaded::Bytes(body.to_vec())));
        let config_digest = parsed["config"]["digest"]
            .as_str()
            .ok_or_else(|| Failure::Other("the manifest has no config".into()))?
            .to_owned();
        let mut config = Vec::new();
        client
            .pull_blob(&reference, config_digest.as_str(), &mut config)
            .await
            .map_err(Failure::from)?;
        blobs.push((config_digest, Downloaded::Bytes(config)));

        let layers: Vec<(String, u64)> = parsed["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap_or_default().to_owned(),
                    l["size"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let missing: Vec<String> = layers
            .iter()
            .filter(|(d, _)| !self.store.has_blob(d))
            .map(|(d, _)| d.clone())
            .collect();
        progress(Progress::Resolved {
            endpoint: endpoint.display(),
            layers: layers.clone(),
            present: layers.len() - missing.len(),
        });
        let ingest = self.store.root().join("ingest");
        let downloaded: Vec<(String, Downloaded)> = futures::stream::iter(missing)
            .map(|digest| {
                let client = &client;
                let reference = &reference;
                let ingest = &ingest;
                async move {
                    let tmp = tempfile::NamedTempFile::new_in(ingest)
                        .map_err(|e| Failure::Other(format!("{}: {e}", ingest.display())))?;
                    let file = tokio::fs::File::from_std(
                        tmp.reopen()
                            .map_err(|e| Failure::Other(format!("{}: {e}", ingest.display())))?,
                    );
                    let counter = Counting {
                        inner: file,
                        received: AtomicU64::new(0),
                        report: &|n| {
                            progress(Progress::Layer {
                                digest: digest.clone(),
                                received: n,
                            });
                        },
                    };
                    client
                        .pull_blob(reference, digest.as_str(), counter)
                        .await
                        .map_err(Failure::from)?;
                    Ok::<_, Failure>((digest.clone(), Downloaded::File(tmp.into_temp_path())))
                }
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect()
            .await?;
        blobs.extend(downloaded);
        progress(Progress::Unpacking);

        let store = self.store.clone();
        let image = image.clone();
        tokio::task::spawn_blocking(move || -> Result<Image, Failure> {
            let _lock = store.lock().map_err(|e| Failure::Other(e.to_string()))?;
            for (digest, blob) in blobs {
                match blob {
                    Downloaded::Bytes(b) => store.ingest(&b[..], Some(&digest)).map(drop),
                    Downloaded::File(path) => store.adopt(&path, &digest),
                }
                .map_err(|e| Failure::Other(e.to_string()))?;
            }
            commit_image(&store, &image, &manifest_digest).map_err(|e| {
                Failure::Other(format!(
                    "{e} (a blob may have been removed while pulling; pull again)"
                ))
            })
        })
        .await
        .map_err(|e| Failure::Other(e.to_string()))?
    }
}

enum Downloaded {
    Bytes(Vec<u8>),
    File(tempfile::TempPath),
}

#[derive(Debug)]
enum Failure {
    NotFound(String),
    Unauthorized(String),
    Other(String),
}

fn describe(f: &Failure) -> String {
    match f {
        Failure::NotFound(s) | Failure::Unauthorized(s) | Failure::Other(s) => s.clone(),
    }
}

impl From<oci_client::errors::OciDistributionError> for Failure {
    fn from(e: oci_client::errors::OciDistributionError) -> Self {
        use oci_client::errors::OciDistributionError as E;
        let text = error_chain(&e);
        match &e {
            E::ImageManifestNotFoundError(_) => Self::NotFound(text),
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Self::Unauthorized(text),
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                    )
                }) =>
            {
                Self::NotFound(text)
            }
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::Unauthorized
                            | oci_client::errors::OciErrorCode::Denied
                    )
                }) =>
            {
                Self::Unauthorized(text)
            }
            _ => Self::Other(text),
        }
    }
}

/// A `WWW-Authenticate: Bearer realm="…",service="…"` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

fn bearer_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params_of = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v, t))
        };
        params_of.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        rest = tail.trim_start_matches([',', ' ']);
    }
    Some(Challenge {
        realm: params_of.remove("realm")?,
        service: params_of.remove("service"),
    })
}

/// An error with its sources (reqwest hides the useful part there).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = inner.source();
    }
    s
}

/// Counts bytes written through it and reports them.
struct Counting<'a, W> {
    inner: W,
    received: AtomicU64,
    report: &'a (dyn Fn(u64) + Send + Sync),
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            let total = this.received.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            (this.report)(total);
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(yaml: &str) -> Registries {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let r = reg(r#"
mirrors:
  docker.io:
    endpoint: ["http://127.0.0.1:5000", "https://mirror.example/v2"]
    rewrite: {"^library/(.*)$": "hub/$1"}
  "*":
    endpoint: ["https://any.example"]
"#);
        let hub = ImageRef::parse("busybox").unwrap();
        let got: Vec<(String, String)> = r
            .endpoints(&hub)
            .into_iter()
            .map(|(e, repo)| (e.display(), repo))
            .collect();
        assert_eq!(
            got,
            [
                ("http://127.0.0.1:5000".into(), "hub/busybox".into()),
                ("https://mirror.example".into(), "hub/busybox".into()),
                ("https://docker.io".into(), "library/busybox".into()),
            ]
            .map(|(a, b): (String, String)| (a, b))
        );
        let other = ImageRef::parse("ghcr.io/org/app:v1").unwrap();
        let got: Vec<String> = r
            .endpoints(&other)
            .into_iter()
            .map(|(e, _)| e.display())
            .collect();
        assert_eq!(got, ["https://any.example", "https://ghcr.io"]);
        let plain = Registries::default()
            .endpoints(&ImageRef::parse("localhost:5000/x").unwrap())
            .into_iter()
            .map(|(e, _)| e.display())
            .collect::<Vec<_>>();
        assert_eq!(plain, ["https://localhost:5000", "http://localhost:5000"]);
        let mirrored_here =
            reg("mirrors:\n  \"10.0.0.9:5000\":\n    endpoint: [\"http://10.0.0.9:5000\"]\n")
                .endpoints(&ImageRef::parse("10.0.0.9:5000/x").unwrap())
                .into_iter()
                .map(|(e, _)| e.display())
                .collect::<Vec<_>>();
        assert_eq!(mirrored_here, ["http://10.0.0.9:5000"]);
    }

    #[test]
    fn credentials_from_configs_and_pull_secrets() {
        let r = reg(r#"
configs:
  "reg.example:5000":
    auth: {username: alice, password: s3cret}
  other.example:
    auth: {auth: "Ym9iOmh1bnRlcjI="}
  acr.example:
    auth: {identity_token: refresh-me}
  old.example:
    auth: {identitytoken: refresh-me-too}
"#);
        let basic =
            |u: &str, p: &str| Some(Credential::Auth(RegistryAuth::Basic(u.into(), p.into())));
        assert_eq!(r.auth_for("reg.example:5000"), basic("alice", "s3cret"));
        assert_eq!(r.auth_for("other.example"), basic("bob", "hunter2"));
        assert_eq!(
            r.auth_for("acr.example"),
            Some(Credential::IdentityToken("refresh-me".into()))
        );
        assert_eq!(
            r.auth_for("old.example"),
            Some(Credential::IdentityToken("refresh-me-too".into()))
        );
        assert_eq!(r.auth_for("nowhere"), None);

        let mut s = PullSecrets::default();
        s.add(br#"{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOmh1bnRlcjI="},"reg.example:5000":{"username":"u","password":"p"}}}"#);
        s.add(br#"{"reg.example:5000":{"auth":"eDp5"}}"#);
        assert_eq!(s.get("docker.io"), basic("bob", "hunter2"));
        // The first secret wins.
        assert_eq!(s.get("reg.example:5000"), basic("u", "p"));
        // A registry token is a bearer token for the registry.
        s.add(br#"{"auths":{"tok.example":{"auth":"eDp5","registrytoken":"t0ken"}}}"#);
        assert_eq!(
            s.get("tok.example"),
            Some(Credential::Auth(RegistryAuth::Bearer("t0ken".into())))
        );
        // An identity token (docker login to ACR and the like: `auth`
        // holds an empty password) goes to the token service.
        s.add(br#"{"auths":{"id.example":{"auth":"MDAwMDAwMDAtMDAwMDo=","identitytoken":"r3fresh"}}}"#);
        assert_eq!(
            s.get("id.example"),
            Some(Credential::IdentityToken("r3fresh".into()))
        );
    }

    #[test]
    fn bearer_challenges_name_the_token_service() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            bearer_challenge("bearer realm=http://127.0.0.1:9/t"),
            Some(Challenge {
                realm: "http://127.0.0.1:9/t".into(),
                service: None
            })
        );
        assert_eq!(bearer_challenge(r#"Basic realm="test""#), None);
        assert_eq!(bearer_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn bad_registries_yaml_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("registries.yaml");
        assert!(Registries::load(&p).unwrap().mirrors.is_empty());
        std::fs::write(&p, "mirrors:\n  docker.io:\n    endpoints: [x]\n").unwrap();
        let e = Registries::load(&p).unwrap_err();
        assert!(
            e.contains("registries.yaml") && e.contains("endpoints"),
            "{e}"
        );
        std::fs::write(&p, "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n").unwrap();
        let e = Registries::load(&p).unwrap_err();
        assert!(e.contains("http://"), "{e}");
        std::fs::write(
            &p,
            "configs:\n  r:\n    tls:\n      ca_file: /nonexistent/ca.pem\n",
        )
        .unwrap();
        let e = Registries::load(&p).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
