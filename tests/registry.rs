//! Pulls from an HTTPS registry behind bearer-token auth: the real
//! docker-registry, serving TLS with a certificate the test made, and a
//! token server of the test's own that issues the signed JWTs the
//! registry checks (docker's token protocol). The image is a multi-arch
//! index whose entry for this machine has a zstd-compressed layer, listed
//! after another platform's: `orch image pull` and an agent's pod pull
//! pick this platform's manifest and unpack the zstd layer.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use support::agents::{Agent, agent_dirs};
use support::{Cluster, Netns, in_netns};

const REGISTRY: &str = "127.0.0.1:5443";
const SERVICE: &str = "orch-test-registry";
const ISSUER: &str = "orch-test-issuer";
/// The identity token (OAuth2 refresh token) the token server takes for alice.
const REFRESH_TOKEN: &str = "r3fresh-alice";

/// A P-256 key and a self-signed certificate for 127.0.0.1 over it: the
/// registry's TLS identity and the token signer's.
struct Identity {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: PathBuf,
    key_pem: PathBuf,
}

impl Identity {
    fn new(dir: &Path) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pair = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["registry.test".into()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.self_signed(&pair).unwrap();
        let (cert_pem, key_pem) = (dir.join("registry.crt"), dir.join("registry.key"));
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, pair.serialize_pem()).unwrap();
        Self {
            key,
            cert_der: cert.der().to_vec(),
            cert_pem,
            key_pem,
        }
    }

    /// A registry token for `subject`, granting `access`.
    fn token(&self, subject: &str, access: &[Value]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header =
            json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)]});
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{subject}"),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Docker's token server: `GET /token?service=…&scope=repository:NAME:ACTIONS`
/// with basic auth as `user`; a token for the scopes asked, or 401. It
/// keeps who asked for what.
struct TokenServer {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(netns: &Netns, identity: Arc<Identity>, user: (&str, &str)) -> Self {
        // A socket stays in the namespace it was made in.
        let listener =
            orch::net::netlink::in_netns(&netns.path(), || TcpListener::bind("127.0.0.1:0"))
                .unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", user.0, user.1))
        );
        let subject = user.0.to_owned();
        let (asked, stop) = (
            Arc::<Mutex<Vec<String>>>::default(),
            Arc::<AtomicBool>::default(),
        );
        let (a, st) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(&stream);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let mut words = head
                    .first()
                    .map(|l| l.split_whitespace())
                    .into_iter()
                    .flatten();
                let method = words.next().unwrap_or_default().to_owned();
                let target = words.next().unwrap_or_default().to_owned();
                let header = |name: &str| {
                    head.iter().find_map(|h| {
                        h.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                };
                // GET with basic auth, or POST an OAuth2 refresh-token grant
                // (how identity tokens are exchanged).
                let query = if method == "POST" {
                    let len = header("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    let _ = reader.read_exact(&mut body);
                    String::from_utf8_lossy(&body).into_owned()
                } else {
                    target.split_once('?').map_or("", |(_, q)| q).to_owned()
                };
                let form = |key: &str| {
                    query.split('&').find_map(|p| {
                        p.split_once('=')
                            .filter(|(k, _)| *k == key)
                            .map(|(_, v)| percent_decode(v))
                    })
                };
                let authorized = if method == "POST" {
                    form("grant_type").as_deref() == Some("refresh_token")
                        && form("refresh_token").as_deref() == Some(REFRESH_TOKEN)
                } else {
                    header("authorization").as_deref() == Some(expected.as_str())
                };
                let query = query.as_str();
                let mut access = Vec::new();
                for pair in query.split('&') {
                    let Some(("scope", scope)) = pair.split_once('=') else {
                        continue;
                    };
                    let scope = percent_decode(scope);
                    let parts: Vec<&str> = scope.splitn(3, ':').collect();
                    if let [kind, name, actions] = parts[..] {
                        access.push(json!({"type": kind, "name": name,
                                           "actions": actions.split(',').collect::<Vec<_>>()}));
                    }
                }
                a.lock().unwrap().push(format!(
                    "{method} {} {}",
                    if authorized { "alice" } else { "anonymous" },
                    percent_decode(query)
                ));
                let mut stream = &stream;
                let response = if authorized {
                    let token = identity.token(&subject, &access);
                    let body = json!({"token": token, "access_token": token, "expires_in": 300})
                        .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Self {
            port,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// docker-registry on [`REGISTRY`] over TLS, trusting tokens from `token`.
struct Registry(Child);

impl Registry {
    fn start(netns: &Netns, dir: &Path, identity: &Identity, token: &TokenServer) -> Self {
        let root = dir.join("registry");
        std::fs::create_dir_all(&root).unwrap();
        let config = format!(
            "version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: {data}}}
http:
  addr: {REGISTRY}
  tls: {{certificate: {cert}, key: {key}}}
auth:
  token:
    realm: http://127.0.0.1:{port}/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {cert}
",
            data = root.join("data").display(),
            cert = identity.cert_pem.display(),
            key = identity.key_pem.display(),
            port = token.port,
        );
        std::fs::write(root.join("config.yml"), config).unwrap();
        let child = support::docker_registry(netns, &root.join("config.yml"), 5443);
        Self(child)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!(
        "sha256:{}",
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Write `bytes` as a blob of the OCI layout; its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    std::fs::write(
        layout.join("blobs/sha256").join(&digest["sha256:".len()..]),
        bytes,
    )
    .unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// A layer holding `/arch` with `arch` in it.
fn arch_layer(arch: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(arch.len() as u64 + 1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "arch", format!("{arch}\n").as_bytes())
        .unwrap();
    b.into_inner().unwrap()
}

/// Add to the busybox OCI layout an index tagged `multi` of two images:
/// one for another architecture (gzip layer) first, then one for this
/// machine's (zstd layer); each adds `/arch` naming its architecture.
fn multi_arch(layout: &Path) {
    let read = |d: &Value| -> Vec<u8> {
        let digest = d["digest"].as_str().unwrap();
        std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap()
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let latest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .unwrap()
        .clone();
    let base: Value = serde_json::from_slice(&read(&latest)).unwrap();
    let base_config: Value = serde_json::from_slice(&read(&base["config"])).unwrap();
    let here = orch::runtime::image::Platform::current().architecture;
    let other = if here == "arm64" { "amd64" } else { "arm64" };
    let mut entries = Vec::new();
    for arch in [other, here.as_str()] {
        let layer = arch_layer(arch);
        let (media_type, compressed) = if arch == here {
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                zstd::encode_all(&layer[..], 3).unwrap(),
            )
        } else {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&layer).unwrap();
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                e.finish().unwrap(),
            )
        };
        let mut config = base_config.clone();
        config["architecture"] = json!(arch);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(json!(sha256(&layer)));
        let config = blob(
            layout,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let mut manifest = base.clone();
        manifest["config"] = config;
        manifest["layers"]
            .as_array_mut()
            .unwrap()
            .push(blob(layout, media_type, &compressed));
        let mut entry = blob(
            layout,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        entry["platform"] = json!({"os": "linux", "architecture": arch});
        entries.push(entry);
    }
    let nested = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries});
    let mut entry = blob(
        layout,
        "application/vnd.oci.image.index.v1+json",
        nested.to_string().as_bytes(),
    );
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "multi"});
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

fn pull(netns: &Netns, store: &Path, registries: &Path, image: &str) -> Output {
    support::image_pull(netns, store, registries, &[], image)
}

#[test]
fn multi_arch_images_come_from_an_https_registry_with_token_auth() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("tokenreg");
    let identity = Arc::new(Identity::new(dir.path()));
    let tokens = TokenServer::start(&netns, identity.clone(), ("alice", "s3cret"));
    let _registry = Registry::start(&netns, dir.path(), &identity, &tokens);
    let built = dir.path().join("multi");
    std::fs::create_dir_all(&built).unwrap();
    let layout = support::busybox_layout(&built);
    multi_arch(&layout);
    let image = format!("{REGISTRY}/multi/busybox:v1");
    let out = in_netns(Some(&netns.0), "skopeo")
        .args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds=alice:s3cret",
        ])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the registry's CA the pull fails on the certificate...
    let store = dir.path().join("cli");
    // registries.yaml for the registry: `auth` (a flow mapping's body),
    // and the registry's CA when `ca`.
    let registries = |name: &str, auth: Option<&str>, ca: bool| {
        let mut yaml = format!("configs:\n  \"{REGISTRY}\":\n");
        if let Some(a) = auth {
            yaml.push_str(&format!("    auth: {{{a}}}\n"));
        }
        if ca {
            yaml.push_str(&format!(
                "    tls: {{ca_file: {}}}\n",
                identity.cert_pem.display()
            ));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let plain = registries(
        "plain.yaml",
        Some("username: alice, password: s3cret"),
        false,
    );
    let out = pull(&netns, &store, &plain, &image);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer")
            && err.contains("configs.\"127.0.0.1:5443\".tls.ca_file"),
        "{err}"
    );
    // ...with it and a wrong password, the token server says no...
    let wrong = registries("wrong.yaml", Some("username: alice, password: nope"), true);
    let out = pull(&netns, &store, &wrong, &image);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Not authorized") || err.contains("401"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("pulled"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ...and with the right one it pulls this machine's image.
    let good = registries(
        "registries.yaml",
        Some("username: alice, password: s3cret"),
        true,
    );
    let out = pull(&netns, &store, &good, &image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tokens
            .asked()
            .iter()
            .any(|a| a.starts_with("GET alice ") && a.contains("repository:multi/busybox:pull")),
        "{:?}",
        tokens.asked()
    );
    let here = orch::runtime::image::Platform::current().architecture;
    let arch_files: Vec<String> = walk(&store)
        .into_iter()
        .filter(|p| p.ends_with("arch") && p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(
        arch_files,
        [format!("{here}\n")],
        "only this machine's layer, unpacked"
    );

    // An identity token (an OAuth2 refresh token, as `docker login` to
    // some registries leaves) is exchanged at the token service; a wrong
    // one is refused there.
    let identity_yaml = |token: &str| {
        registries(
            &format!("identity-{token}.yaml"),
            Some(&format!("identity_token: {token}")),
            true,
        )
    };
    let by_token = dir.path().join("cli-identity");
    let out = pull(&netns, &by_token, &identity_yaml("stale"), &image);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refused the identitytoken (401"), "{err}");
    let out = pull(&netns, &by_token, &identity_yaml(REFRESH_TOKEN), &image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tokens.asked().iter().any(|a| a.starts_with("POST alice ")
            && a.contains("grant_type=refresh_token")
            && a.contains("scope=repository:multi/busybox:pull")),
        "{:?}",
        tokens.asked()
    );

    // An agent pulls it for a pod, with an identity token from the pod's
    // pull secret (and the CA from registries.yaml), and runs it.
    let ca_only = registries("ca-only.yaml", None, true);
    let server = Cluster::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let token = server.dir.path().join("server/token");
    let _agent = Agent::start_as(
        &server,
        &netns,
        &data,
        &run_dir,
        &logs,
        "tokenreg",
        "node-a",
        &token,
        &["--private-registry", ca_only.to_str().unwrap()],
    );
    let docker_config = json!({"auths": {REGISTRY: {
        "auth": STANDARD.encode("00000000-0000-0000-0000-000000000000:"),
        "identitytoken": REFRESH_TOKEN,
    }}});
    let pod = server.write(
        "pod.yaml",
        &format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: identity}}
type: kubernetes.io/dockerconfigjson
data: {{.dockerconfigjson: {}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: multi}}
spec:
  restartPolicy: Never
  imagePullSecrets: [{{name: identity}}]
  containers:
  - name: main
    image: {image}
    command: [cat, /arch]
",
            STANDARD.encode(docker_config.to_string())
        ),
    );
    server.ok("1.33", &["apply", "-f", pod.to_str().unwrap()]);
    let done = server.wait_json(&["get", "pod", "multi"], 60, "multi done", |p| {
        p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"
    });
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    assert_eq!(server.ok("1.33", &["logs", "multi"]), format!("{here}\n"));
    let exchanges = tokens
        .asked()
        .iter()
        .filter(|a| a.starts_with("POST alice "))
        .count();
    assert_eq!(
        exchanges,
        2,
        "the CLI's and the agent's: {:?}",
        tokens.asked()
    );
    let image_id = done["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(image_id.contains("@sha256:"), "{done}");
    server.ok("1.33", &["delete", "pod", "multi", "--timeout=60s"]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
