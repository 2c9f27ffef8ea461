//! Service account tokens: JWTs (ES256) the server signs for the
//! TokenRequest API (`serviceaccounts/<name>/token`), which the agent asks
//! for when it writes a pod's projected `serviceAccountToken` volume, and
//! which the server accepts as bearer tokens.
//!
//! Claims are upstream's: `iss`, `sub` (`system:serviceaccount:<ns>:<name>`),
//! `aud`, `exp`/`iat`/`nbf`, `jti`, and a `kubernetes.io` object naming the
//! namespace, the service account and (for bound tokens) the pod. The
//! signing key is made once in `<data-dir>/server/tls/service-account.key`.
//!
//! A token is only good against the API when its `aud` names one of the
//! API's own audiences ([`Audiences`], `--api-audiences`): a token made
//! for another party (`kubectl create token app --audience vault`) is
//! refused, as kube-apiserver refuses it.

use std::path::Path;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use super::Error;

/// The issuer, and the API's audience unless `--api-audiences` names
/// others (as k3s: the in-cluster URL of the API).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The API's own audiences (kube-apiserver's `--api-audiences`): a token
/// authenticates only when its `aud` names one of them, and a TokenRequest
/// that asks for no audience gets them all. Upstream's default when the
/// flag is not given is the service account issuer, [`ISSUER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audiences(Vec<String>);

impl Default for Audiences {
    fn default() -> Self {
        Self(vec![ISSUER.to_owned()])
    }
}

impl Audiences {
    /// These audiences, each once, in the order given.
    ///
    /// # Errors
    /// None given, or one is empty (nothing could match it, and an empty
    /// `--api-audiences` is more likely a mistake than a wish to refuse
    /// every service account token).
    pub fn new<S: AsRef<str>>(audiences: &[S]) -> Result<Self, Error> {
        let mut out: Vec<String> = Vec::new();
        for a in audiences {
            let a = a.as_ref().trim();
            if a.is_empty() {
                return Err(Error::Audiences("an audience may not be empty"));
            }
            if !out.iter().any(|o| o == a) {
                out.push(a.to_owned());
            }
        }
        if out.is_empty() {
            return Err(Error::Audiences("at least one is needed"));
        }
        Ok(Self(out))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The audiences a token with `aud` claim `token` is good for here:
    /// those it shares with the API. A token with no `aud` at all (none
    /// of orch's, which always names one) counts as made for the API, as
    /// upstream treats its legacy tokens. Empty: the token was made for
    /// someone else and must not authenticate.
    pub fn accepted(&self, token: &[String]) -> Vec<String> {
        if token.is_empty() {
            return self.0.clone();
        }
        self.0
            .iter()
            .filter(|a| token.contains(a))
            .cloned()
            .collect()
    }
}

/// Leeway for clocks that disagree a little.
const LEEWAY_SECONDS: i64 = 60;

/// The issuer of legacy tokens, the ones the token controller writes into
/// Secrets of type `kubernetes.io/service-account-token` (upstream's).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// The pod the token is bound to: (name, uid).
    pub pod: Option<(String, String)>,
    pub audiences: Vec<String>,
    /// A legacy token's Secret (it is good while the Secret holds it).
    pub secret: Option<String>,
}

impl Signer {
    /// Load the signing key from `path`, making it (mode 0600) the first
    /// time.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds no P-256 key.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let pem = match std::fs::read_to_string(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| Error::Pki(format!("service account key: {e}")))?;
                let pem = key.serialize_pem();
                super::pki::write_private_file(path, &pem)?;
                pem
            }
            Err(e) => return Err(Error::Pki(format!("{}: {e}", path.display()))),
        };
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::Pki(format!("{}: {e}", path.display())))?;
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der(), &rng)
                .map_err(|e| {
                    Error::Pki(format!(
                        "{}: not a P-256 private key ({e}); remove it to make a new one",
                        path.display()
                    ))
                })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..16]);
        Ok(Self { key, kid, rng })
    }

    /// A token for service account `name` (uid `sa_uid`) in `namespace`,
    /// valid for `seconds` from now, optionally bound to a pod.
    ///
    /// # Errors
    /// Signing failed (it does not, with a valid key).
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        sa_uid: &str,
        audiences: &[String],
        seconds: i64,
        pod: Option<(&str, &str)>,
    ) -> Result<(String, jiff::Timestamp), Error> {
        let now = jiff::Timestamp::now().as_second();
        let exp = now + seconds;
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": sa_uid},
        });
        if let Some((pod, uid)) = pod {
            k8s["pod"] = json!({"name": pod, "uid": uid});
        }
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "exp": exp, "iat": now, "nbf": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
        });
        let expires = jiff::Timestamp::from_second(exp)
            .map_err(|e| Error::Pki(format!("token expiry: {e}")))?;
        Ok((self.sign(&claims)?, expires))
    }

    /// The claims of a token this server signed that is valid now, or
    /// `None`.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&unb64(h)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &unb64(s)?)
            .ok()?;
        let claims: Value = serde_json::from_slice(&unb64(c)?).ok()?;
        if claims["iss"] == LEGACY_ISSUER {
            let claim = |k: &str| {
                claims[format!("kubernetes.io/serviceaccount/{k}")]
                    .as_str()
                    .map(str::to_owned)
            };
            return Some(Claims {
                namespace: claim("namespace")?,
                service_account: claim("service-account.name")?,
                service_account_uid: claim("service-account.uid").unwrap_or_default(),
                pod: None,
                audiences: Vec::new(),
                secret: Some(claim("secret.name")?),
            });
        }
        let now = jiff::Timestamp::now().as_second();
        let exp = claims["exp"].as_i64()?;
        let nbf = claims["nbf"].as_i64().unwrap_or(0);
        if claims["iss"] != ISSUER || now > exp + LEEWAY_SECONDS || now + LEEWAY_SECONDS < nbf {
            return None;
        }
        let k8s = &claims["kubernetes.io"];
        let audiences = match &claims["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Some(Claims {
            namespace: k8s["namespace"].as_str()?.to_owned(),
            service_account: k8s["serviceaccount"]["name"].as_str()?.to_owned(),
            service_account_uid: k8s["serviceaccount"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pod: k8s["pod"]["name"].as_str().map(|n| {
                (
                    n.to_owned(),
                    k8s["pod"]["uid"].as_str().unwrap_or_default().to_owned(),
                )
            }),
            audiences,
            secret: None,
        })
    }

    /// A legacy token (no expiry, no audience) for service account `name`
    /// (uid `sa_uid`) in `namespace`, held by Secret `secret`, with
    /// upstream's claims.
    ///
    /// # Errors
    /// Signing failed (it does not, with a valid key).
    pub fn issue_legacy(
        &self,
        namespace: &str,
        name: &str,
        sa_uid: &str,
        secret: &str,
    ) -> Result<String, Error> {
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        self.sign(&claims)
    }

    /// `claims` as a signed JWT (ES256, with our key's id).
    fn sign(&self, claims: &Value) -> Result<String, Error> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| Error::Pki(format!("signing a token: {e}")))?;
        Ok(format!("{signing_input}.{}", b64(sig.as_ref())))
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

use rustls::pki_types::pem::PemObject;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_not_when_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.key");
        let signer = Signer::load_or_create(&key).unwrap();
        let aud = vec![ISSUER.to_owned()];
        let (token, exp) = signer
            .issue("default", "app", "u-1", &aud, 3600, Some(("web-0", "p-1")))
            .unwrap();
        assert!(exp > jiff::Timestamp::now());
        let claims = signer.verify(&token).unwrap();
        assert_eq!(
            claims,
            Claims {
                namespace: "default".into(),
                service_account: "app".into(),
                service_account_uid: "u-1".into(),
                pod: Some(("web-0".into(), "p-1".into())),
                audiences: aud.clone(),
                secret: None,
            }
        );
        // The same key after a restart.
        let again = Signer::load_or_create(&key).unwrap();
        assert!(again.verify(&token).is_some());
        // Expired (beyond the leeway), tampered, or from another key: no.
        let (old, _) = signer
            .issue("default", "app", "u", &aud, -120, None)
            .unwrap();
        assert!(signer.verify(&old).is_none());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(br#"{"iss":"https://kubernetes.default.svc.cluster.local","exp":99999999999,"kubernetes.io":{"namespace":"kube-system","serviceaccount":{"name":"admin"}}}"#);
        parts[1] = &forged;
        assert!(signer.verify(&parts.join(".")).is_none());
        let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.verify(&token).is_none());
        assert!(signer.verify("not-a-jwt").is_none());
    }

    #[test]
    fn tokens_are_good_for_the_audiences_they_share_with_the_api() {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        let default = Audiences::default();
        assert_eq!(default.as_slice(), [ISSUER]);
        let both = Audiences::new(&["vault", ISSUER]).unwrap();
        #[rustfmt::skip]
        let cases: &[(&Audiences, &[&str], &[&str])] = &[
            (&default, &[ISSUER], &[ISSUER]),
            (&default, &["vault"], &[]),
            (&default, &["vault", ISSUER], &[ISSUER]),
            (&default, &["https://kubernetes.default.svc"], &[]),
            // No aud at all: made for the API (upstream's legacy tokens).
            (&default, &[], &[ISSUER]),
            (&both, &["vault"], &["vault"]),
            (&both, &[ISSUER], &[ISSUER]),
            (&both, &["vault", ISSUER], &["vault", ISSUER]),
            (&both, &["consul"], &[]),
        ];
        for (api, token, want) in cases {
            assert_eq!(
                api.accepted(&list(token)),
                list(want),
                "a token for {token:?} against {:?}",
                api.as_slice()
            );
        }
    }

    #[test]
    fn api_audiences_are_named_and_not_empty() {
        assert_eq!(
            Audiences::new(&[" vault", "vault", ISSUER])
                .unwrap()
                .as_slice(),
            ["vault", ISSUER],
            "trimmed, each once"
        );
        let bad: [&[&str]; 3] = [&[""], &["vault", " "], &[]];
        for bad in bad {
            let err = Audiences::new(bad).unwrap_err().to_string();
            assert!(err.contains("audience"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn legacy_tokens_name_their_secret_and_never_expire() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("sa.key")).unwrap();
        let token = signer.issue_legacy("ns1", "ci", "u-9", "ci-token").unwrap();
        let claims = signer.verify(&token).unwrap();
        assert_eq!(
            claims,
            Claims {
                namespace: "ns1".into(),
                service_account: "ci".into(),
                service_account_uid: "u-9".into(),
                pod: None,
                audiences: Vec::new(),
                secret: Some("ci-token".into()),
            }
        );
        let other = Signer::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.verify(&token).is_none());
    }
}
