//! Joining: from a server URL and a join token to an API client that trusts
//! the server's CA.
//!
//! The token is `K10<sha256 of the CA PEM>::<user>:<secret>` (k3s's format).
//! The agent fetches the CA from `/cacerts` without trusting anything, checks
//! its hash against the token, and only then sends the secret — to a server
//! verified with that CA.

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
        },
    ))
}
