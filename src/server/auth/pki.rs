//! The cluster's certificates: a CA, the API server's serving certificate
//! and the admin client certificate, created on first start under
//! `<data-dir>/server/tls/` and reused afterwards. The serving certificate is
//! re-issued (by the same CA) when the names it must cover change or it
//! nears expiry, so clients keep trusting the server.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::Error;

/// Shown without its secrets.
impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Certificates and keys, PEM-encoded.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: String,
    pub serving_cert: String,
    pub serving_key: String,
    pub admin_cert: String,
    pub admin_key: String,
    /// A bearer token that authenticates as the admin.
    pub admin_token: String,
}

/// Leaf certificates live a year and are renewed at start when fewer than
/// 90 days remain (as k3s does).
const LEAF_DAYS: i64 = 365;
const RENEW_DAYS: i64 = 90;
const CA_DAYS: i64 = 3650;

fn validity(params: &mut CertificateParams, days: i64) {
    let now = jiff::Timestamp::now();
    let start = now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap_or(now);
    let end = now
        .checked_add(jiff::SignedDuration::from_hours(24 * days))
        .unwrap_or(now);
    let ymd = |t: jiff::Timestamp| {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(start);
    params.not_after = ymd(end);
}

/// Write a secret file (mode 0600) atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), Error> {
    write_private(path, contents)
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Pki(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// A client certificate's parameters: user `cn` in group `org`, a year.
fn client_params(cn: &str, org: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, LEAF_DAYS);
    params
}

fn read(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Pki(format!("cannot read {}: {e}", path.display()))),
    }
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Pki(format!("cannot {what}: {e}"))
}

/// Days until a PEM certificate expires, and its subject alternative names.
fn inspect(pem: &str) -> Option<(i64, Vec<String>)> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = der.parse_x509().ok()?;
    let left = cert.validity().not_after.timestamp() - jiff::Timestamp::now().as_second();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?),
                        _ => continue,
                    };
                    names.push(addr.to_string());
                }
                _ => {}
            }
        }
    }
    Some((left / 86400, names))
}

impl Pki {
    /// Load the certificates under `dir`, creating what is missing. `sans`
    /// are the names and IPs the serving certificate must cover.
    ///
    /// # Errors
    /// Unreadable or unwritable files, or a CA that cannot be parsed.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Self, Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Pki(format!("cannot create {}: {e}", dir.display())))?;
        let p = |name: &str| dir.join(name);

        // The CA: created once, never replaced (clients pin it).
        let (ca_cert, ca_key) = match (read(&p("ca.crt"))?, read(&p("ca.key"))?) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(
                    DnType::CommonName,
                    format!("orch-server-ca@{}", jiff::Timestamp::now().as_second()),
                );
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(&mut params, CA_DAYS);
                let cert = params.self_signed(&key).map_err(rcgen_err("sign the CA"))?;
                write_private(&p("ca.key"), &key.serialize_pem())?;
                write_private(&p("ca.crt"), &cert.pem())?;
                tracing::info!(dir = %dir.display(), "created the cluster CA");
                (cert.pem(), key.serialize_pem())
            }
            _ => {
                return Err(Error::Pki(format!(
                    "{} has only one of ca.crt and ca.key; restore both from a backup (clients trust this CA)",
                    dir.display()
                )));
            }
        };
        let ca_key = KeyPair::from_pem(&ca_key).map_err(rcgen_err("read the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, &ca_key)
            .map_err(rcgen_err("read the CA certificate"))?;

        // The serving certificate: re-issued when names change or expiry nears.
        let wanted: Vec<String> = sans.to_vec();
        let current = read(&p("serving.crt"))?.zip(read(&p("serving.key"))?);
        let reuse = current
            .as_ref()
            .and_then(|(cert, _)| inspect(cert))
            .is_some_and(|(days, names)| {
                days > RENEW_DAYS && wanted.iter().all(|w| names.contains(w))
            });
        let (serving_cert, serving_key) = if let (true, Some(pair)) = (reuse, current) {
            pair
        } else {
            let key = KeyPair::generate().map_err(rcgen_err("generate the serving key"))?;
            let mut params = CertificateParams::new(wanted.clone())
                .map_err(rcgen_err("use the server names"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            validity(&mut params, LEAF_DAYS);
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(rcgen_err("sign the serving certificate"))?;
            write_private(&p("serving.key"), &key.serialize_pem())?;
            write_private(&p("serving.crt"), &cert.pem())?;
            tracing::info!(names = ?wanted, "issued the API serving certificate");
            (cert.pem(), key.serialize_pem())
        };

        // The admin client certificate (system:admin in system:masters).
        let current = read(&p("admin.crt"))?.zip(read(&p("admin.key"))?);
        let reuse = current
            .as_ref()
            .and_then(|(cert, _)| inspect(cert))
            .is_some_and(|(days, _)| days > RENEW_DAYS);
        let (admin_cert, admin_key) = if let (true, Some(pair)) = (reuse, current) {
            pair
        } else {
            let key = KeyPair::generate().map_err(rcgen_err("generate the admin key"))?;
            let cert = client_params("system:admin", "system:masters")
                .signed_by(&key, &issuer)
                .map_err(rcgen_err("sign the admin certificate"))?;
            write_private(&p("admin.key"), &key.serialize_pem())?;
            write_private(&p("admin.crt"), &cert.pem())?;
            (cert.pem(), key.serialize_pem())
        };

        let admin_token = match read(&p("admin.token"))? {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let token = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                write_private(&p("admin.token"), &token)?;
                token
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            ca_cert,
            serving_cert,
            serving_key,
            admin_cert,
            admin_key,
            admin_token,
        })
    }

    /// The cluster CA of an existing server's `dir`, to issue client
    /// certificates with (`orch kubeconfig create`); nothing is created.
    ///
    /// # Errors
    /// The CA certificate or key is missing or unreadable.
    pub fn existing_ca(dir: &Path) -> Result<Self, Error> {
        let ca_cert = read(&dir.join("ca.crt"))?.ok_or_else(|| {
            Error::Pki(format!(
                "no cluster CA in {}; run this on the server machine, with the --data-dir orch server uses",
                dir.display()
            ))
        })?;
        let pki = Self {
            dir: dir.to_owned(),
            ca_cert,
            serving_cert: String::new(),
            serving_key: String::new(),
            admin_cert: String::new(),
            admin_key: String::new(),
            admin_token: String::new(),
        };
        pki.issuer()?;
        Ok(pki)
    }

    /// The CA, to issue with.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, Error> {
        let key = read(&self.dir.join("ca.key"))?
            .ok_or_else(|| Error::Pki(format!("{}/ca.key is missing", self.dir.display())))?;
        let key = KeyPair::from_pem(&key).map_err(rcgen_err("read the CA key"))?;
        Issuer::from_ca_cert_pem(&self.ca_cert, key).map_err(rcgen_err("read the CA certificate"))
    }

    /// A client certificate for `user` in `groups`, valid for `seconds`
    /// from now, with a new key: (certificate PEM, key PEM).
    ///
    /// # Errors
    /// An unreadable CA key.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[String],
        seconds: i64,
    ) -> Result<(String, String), Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("make a key"))?;
        let cert = client_params_for(user, groups, seconds)
            .signed_by(&key, &self.issuer()?)
            .map_err(rcgen_err("sign the client certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for the key and subject of `csr_pem` (a PEM
    /// CERTIFICATE REQUEST): CN the user, each O a group, client auth,
    /// valid for `seconds` from now (upstream's kube-apiserver-client
    /// signer).
    ///
    /// # Errors
    /// A request that cannot be parsed, or an unreadable CA key.
    pub fn sign_client_request(&self, csr_pem: &str, seconds: i64) -> Result<String, Error> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::Pki(format!("the request is not a PEM CERTIFICATE REQUEST: {e}"))
        })?;
        let mut cn = String::new();
        let mut groups = Vec::new();
        for (ty, value) in csr.params.distinguished_name.iter() {
            let text = dn_text(value);
            match ty {
                DnType::CommonName => cn = text,
                DnType::OrganizationName => groups.push(text),
                _ => {}
            }
        }
        if cn.is_empty() {
            return Err(Error::Pki("the request names no user (subject CN)".into()));
        }
        csr.params = client_params_for(&cn, &groups, seconds);
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(rcgen_err("sign the client certificate"))?;
        Ok(cert.pem())
    }

    /// A kubeconfig for the admin, pointing at `server`.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        kubeconfig(
            server,
            &self.ca_cert,
            "default",
            &self.admin_cert,
            &self.admin_key,
        )
    }
}

/// The text of a subject field.
fn dn_text(value: &rcgen::DnValue) -> String {
    match value {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_owned(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_owned(),
        rcgen::DnValue::BmpString(s) => String::from_utf16_lossy(
            &s.as_bytes()
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect::<Vec<_>>(),
        ),
        rcgen::DnValue::UniversalString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => String::new(),
    }
}

/// Client certificate parameters: CN `user`, an O per group, client auth,
/// valid from a minute ago (clock skew) for `seconds` from now.
fn client_params_for(user: &str, groups: &[String], seconds: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    for g in groups {
        params
            .distinguished_name
            .push(DnType::OrganizationName, g.as_str());
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = jiff::Timestamp::now().as_second();
    let at = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(s).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    params.not_before = at(now - 60);
    params.not_after = at(now + seconds);
    params
}

/// A kubeconfig for `server` (trusting `ca`) as `user` with a client
/// certificate and key (PEM).
pub fn kubeconfig(server: &str, ca: &str, user: &str, cert: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: {user}
  name: default
current-context: default
preferences: {{}}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca),
        user = serde_json::to_string(user).unwrap_or_default(),
        cert = b64(cert),
        key = b64(key),
    )
}

/// Write a kubeconfig with mode 0600, creating its directory.
///
/// # Errors
/// The path cannot be written; the message names it.
pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                Error::Pki(format!(
                    "cannot create {} for the kubeconfig: {e}; pass --write-kubeconfig",
                    dir.display()
                ))
            })?;
    }
    write_private(path, contents)
}
