//! Image references, normalised the way Docker and containerd do:
//! `busybox` → `docker.io/library/busybox:latest`,
//! `localhost:5000/app@sha256:…` stays on its registry.

use std::fmt;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `localhost:5000`, …
    pub registry: String,
    /// `library/busybox`, `org/app`, …
    pub repository: String,
    /// The tag, if any (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:<hex>`, if pinned by digest.
    pub digest: Option<String>,
}

pub const DOCKER_HUB: &str = "docker.io";

impl ImageRef {
    /// Parse and normalise `input`.
    ///
    /// # Errors
    /// A message naming what is wrong (empty, upper case in the
    /// repository, a bad tag or digest).
    pub fn parse(input: &str) -> Result<Self, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("an image reference may not be empty".into());
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(d.to_owned())),
            None => (input, None),
        };
        if let Some(d) = &digest {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("{input:?}: the digest must be sha256:<64 hex digits>"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{input:?}: the digest must be sha256:<64 hex digits>"
                ));
            }
        }
        // A tag is after the last ':' of the last path component.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_owned()),
            ),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(format!("{input:?}: {t:?} is not a valid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(valid_component) {
            return Err(format!(
                "{input:?}: repository names are lower case letters, digits and . _ - separated by /"
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            (
                "index.docker.io/library/alpine",
                "docker.io/library/alpine:latest",
            ),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("ghcr.io/org/tool:v2.1", "ghcr.io/org/tool:v2.1"),
            ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000/busybox:1"),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap().to_string(), want, "{input}");
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = ImageRef::parse(&format!("busybox@{digest}")).unwrap();
        assert_eq!(pinned.tag, None);
        assert_eq!(pinned.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(pinned.name(), "docker.io/library/busybox");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        assert!(ImageRef::parse("").unwrap_err().contains("empty"));
        assert!(
            ImageRef::parse("BusyBox")
                .unwrap_err()
                .contains("lower case")
        );
        assert!(ImageRef::parse("busybox:").unwrap_err().contains("tag"));
        assert!(
            ImageRef::parse("busybox@sha256:abc")
                .unwrap_err()
                .contains("digest")
        );
        assert!(
            ImageRef::parse("busybox@md5:abc")
                .unwrap_err()
                .contains("digest")
        );
    }
}
