//! The join token's format, shared by the server (which issues it) and the
//! agent (which checks the server against it):
//! `K10<sha256 hex of the CA PEM>::<user>:<secret>`, as k3s's tokens.

/// Lowercase hex SHA-256 of the CA certificate PEM.
pub fn ca_hash(ca_pem: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CA hash a join token pins, or why the token is not one.
///
/// # Errors
/// A message naming what is wrong and where to get a good token.
pub fn token_ca_hash(token: &str) -> Result<&str, String> {
    let rest = token.strip_prefix("K10").ok_or("the token is not an orch join token (it should start with K10); copy <data-dir>/server/token from the server")?;
    let (hash, secret) = rest.split_once("::").ok_or(
        "the join token is malformed (no '::'); copy <data-dir>/server/token from the server",
    )?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        return Err("the join token is malformed (bad CA hash or empty secret); copy <data-dir>/server/token from the server".into());
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_before_use() {
        let good = format!("K10{}::server:secret", "ab".repeat(32));
        assert_eq!(token_ca_hash(&good).unwrap(), "ab".repeat(32));
        for bad in [
            "secret",
            "K10abc::server:x",
            &format!("K10{}::", "ab".repeat(32)),
            &format!("K10{}", "ab".repeat(32)),
        ] {
            assert!(token_ca_hash(bad).is_err(), "{bad}");
        }
        assert_eq!(ca_hash("x").len(), 64);
    }
}
