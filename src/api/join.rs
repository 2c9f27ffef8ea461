//! The join token's format, shared by the server (which issues it) and the
//! agent (which checks the server against it):
//! `K10<sha256 hex of the CA PEM>::<user>:<secret>`, as k3s's tokens; and
//! node passwords, which keep a node's name to the machine that first
//! took it (k3s's `pkg/nodepassword`): the hash of a node's password is
//! kept in the Secret `kube-system/<node>.node-password.orch`, made when
//! the name is first claimed, and a later claim must bring the same
//! password.

use serde_json::{Value, json};

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

/// Extra join tokens (`orch token create`) are bootstrap tokens as
/// kubeadm keeps them: a Secret `kube-system/bootstrap-token-<id>` of this
/// type, with `token-id`, `token-secret`, `expiration` and `description`.
pub const BOOTSTRAP_TYPE: &str = "bootstrap.kubernetes.io/token";

/// The Secret holding bootstrap token `id`.
pub fn bootstrap_secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// `(id, secret)` of a bootstrap token, `K10<hash>::<id>.<secret>` or
/// `<id>.<secret>` (id: 6, secret: 16 of `[a-z0-9]`); `None` for any
/// other token.
pub fn parse_bootstrap(token: &str) -> Option<(&str, &str)> {
    let token = token.trim();
    let rest = match token.strip_prefix("K10") {
        Some(r) => r.split_once("::")?.1,
        None => token,
    };
    let (id, secret) = rest.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// A bootstrap token's id and secret from 22 random bytes.
pub fn new_bootstrap(random: &[u8; 22]) -> (String, String) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let text: String = random
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    (text[..6].to_owned(), text[6..].to_owned())
}

/// A duration such as `24h`, `90m`, `1h30m`, `45s` or `2d` in seconds;
/// `0` means no expiry (`None`).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_ttl(text: &str) -> Result<Option<u64>, String> {
    let bad = || {
        format!(
            "invalid --ttl {text:?}: use a duration such as 24h, 90m, 1h30m, 2d, or 0 for no expiry"
        )
    };
    let text = text.trim();
    if text == "0" {
        return Ok(None);
    }
    let too_long = || {
        format!(
            "invalid --ttl {text:?}: too long; the longest is {}d (about 292 years, as kubeadm's), or 0 for no expiry",
            MAX_TTL_SECONDS / 86_400
        )
    };
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        if number.is_empty() {
            return Err(bad());
        }
        // Digits only, so a parse failure is a number past u64.
        let n: u64 = number.parse().map_err(|_| too_long())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .filter(|&t| t <= MAX_TTL_SECONDS)
            .ok_or_else(too_long)?;
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Some(total))
}

/// The longest TTL: Go's longest `time.Duration` (i64 nanoseconds), which
/// bounds kubeadm's `--ttl`, in whole days.
const MAX_TTL_SECONDS: u64 = (i64::MAX as u64 / 1_000_000_000) / 86_400 * 86_400;

/// The Secret in kube-system holding the hash of node `node`'s password
/// (k3s keeps `<node>.node-password.k3s` the same way).
pub fn node_password_secret(node: &str) -> String {
    format!("{node}.node-password.orch")
}

/// That Secret, for a node claiming its name with `password`.
pub fn node_password_object(node: &str, password: &str) -> Value {
    use base64::Engine as _;
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": node_password_secret(node), "namespace": "kube-system",
                     "labels": {"orch.io/node-password": node}},
        "type": "Opaque",
        "data": {"hash": base64::engine::general_purpose::STANDARD.encode(ca_hash(password))},
    })
}

/// Does the stored node password Secret `secret` hold `password`'s hash?
pub fn node_password_matches(secret: &Value, password: &str) -> bool {
    use base64::Engine as _;
    secret
        .pointer("/data/hash")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|stored| stored == ca_hash(password).as_bytes())
}

/// Why node `node` may not take its name: another machine holds it.
pub fn node_taken(node: &str) -> String {
    format!(
        "node {node:?} is already taken by another machine (its node password differs); pick another --node-name, or to move the name to this machine delete the old one's password first: kubectl -n kube-system delete secret {}",
        node_password_secret(node)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_and_ttls_parse() {
        let hash = "ab".repeat(32);
        assert_eq!(
            parse_bootstrap(&format!("K10{hash}::abc123.0123456789abcdef")),
            Some(("abc123", "0123456789abcdef"))
        );
        assert_eq!(
            parse_bootstrap("abc123.0123456789abcdef"),
            Some(("abc123", "0123456789abcdef"))
        );
        for bad in [
            format!("K10{hash}::server:secret"),
            "ABC123.0123456789abcdef".into(),
            "abc12.0123456789abcdef".into(),
            "abc123.0123456789abcde".into(),
        ] {
            assert_eq!(parse_bootstrap(&bad), None, "{bad}");
        }
        let (id, secret) = new_bootstrap(&[7; 22]);
        assert!(parse_bootstrap(&format!("{id}.{secret}")).is_some());
        assert_eq!(parse_ttl("24h"), Ok(Some(86_400)));
        assert_eq!(parse_ttl("1h30m"), Ok(Some(5_400)));
        assert_eq!(parse_ttl("2d"), Ok(Some(172_800)));
        assert_eq!(parse_ttl("0"), Ok(None));
        for bad in ["", "h", "10", "5x", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        // Issue #21: this overflowed into a token valid for about 17 hours.
        assert_eq!(parse_ttl("106751d"), Ok(Some(106_751 * 86_400)));
        for long in [
            "213503982334602d",
            "106752d",
            "106751d1s",
            "99999999999999999999999s",
        ] {
            let err = parse_ttl(long).expect_err(long);
            assert!(err.contains("too long") && !err.contains('\n'), "{err}");
        }
    }

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

    #[test]
    fn node_passwords_are_kept_as_hashes_and_checked() {
        let secret = node_password_object("node-a", "correct horse battery staple");
        assert_eq!(secret["metadata"]["name"], "node-a.node-password.orch");
        assert_eq!(secret["metadata"]["namespace"], "kube-system");
        assert!(
            !secret.to_string().contains("correct horse"),
            "only the hash is kept: {secret}"
        );
        assert!(node_password_matches(
            &secret,
            "correct horse battery staple"
        ));
        assert!(!node_password_matches(
            &secret,
            "correct horse battery stapler"
        ));
        assert!(!node_password_matches(&json!({"data": {}}), ""));
        assert!(
            node_taken("node-a")
                .contains("kubectl -n kube-system delete secret node-a.node-password.orch")
        );
    }
}
