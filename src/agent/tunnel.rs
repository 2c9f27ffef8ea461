//! The agent's end of the tunnel (see `server::api::tunnel`): it dials the
//! server, upgrades the connection, and serves its kubelet API over HTTP/2
//! on it — so the node needs no inbound port. Reconnects with a jittered
//! back-off when the connection breaks or the server restarts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;

use super::join::Credentials;
use super::logs::{LogOptions, file_for, render, tail};
use super::pods::Kubelet;
use super::response::{Body, streamed, text};

/// Keep a tunnel to the server open, forever.
pub async fn run(creds: Credentials, k: Arc<Kubelet>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match connect_and_serve(&creds, &k).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => tracing::debug!(error = %e, "tunnel to the server failed"),
        }
        let jitter = Duration::from_millis(u64::from(std::process::id() % 250));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn connect_and_serve(creds: &Credentials, k: &Arc<Kubelet>) -> Result<(), String> {
    let uri: http::Uri = creds.url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("no host in the server URL")?.to_owned();
    let port = uri.port_u16().unwrap_or(6443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()).flatten() {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    // The node's certificate when it has one, else the join token.
    let tls = match &creds.identity {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
            tls.with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => tls.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut req = Request::get(format!("/orch/v1/tunnel?node={}", k.node))
        .header(header::HOST, format!("{host}:{port}"));
    if creds.identity.is_none() {
        req = req.header(header::AUTHORIZATION, format!("Bearer {}", creds.token));
    }
    let req = req
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "orch-tunnel")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!(
            "the server answered {} to the tunnel",
            resp.status()
        ));
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| e.to_string())?;
    tracing::info!("tunnel to the server up");
    let k = k.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let k = k.clone();
        async move { Ok::<_, Infallible>(kubelet_api(&k, req).await) }
    });
    // Per-stream windows well below the connection's: one stream whose
    // body is not read (a port-forward to a pod that stopped reading)
    // must not take the whole tunnel's window (hyper's defaults make
    // them equal).
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(crate::api::remotecommand::TUNNEL_STREAM_WINDOW)
        .initial_connection_window_size(crate::api::remotecommand::TUNNEL_CONNECTION_WINDOW)
        .serve_connection(upgraded, service)
        .await
        .map_err(|e| e.to_string())
}

/// The kubelet API: `/containerLogs/<ns>/<pod>/<container>?uid=…&…`,
/// `/exec/<ns>/<pod>/<container>?uid=…&command=…`, `/attach/…` and
/// `/portForward/<ns>/<pod>?uid=…&port=…`.
async fn kubelet_api(k: &Arc<Kubelet>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["exec", _ns, pod, container] = parts.as_slice() {
        let (pod, container) = ((*pod).to_owned(), (*container).to_owned());
        return super::exec::serve(k, req, &pod, &container).await;
    }
    if let ["portForward", _ns, pod] = parts.as_slice() {
        let pod = (*pod).to_owned();
        return super::portforward::serve(k, req, &pod).await;
    }
    if let ["attach", _ns, pod, container] = parts.as_slice() {
        let (pod, container) = ((*pod).to_owned(), (*container).to_owned());
        return super::exec::attach(k, req, &pod, &container).await;
    }
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such kubelet API path {path}"),
        );
    };
    let uid = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("uid="))
        .unwrap_or_default();
    let opts = LogOptions::parse(&query);
    let dir = k.log_dir.join(format!("{ns}_{pod}_{uid}")).join(container);
    let Some((file, restart)) = file_for(&dir, opts.previous) else {
        let why = if opts.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: no logs yet")
        };
        return text(StatusCode::BAD_REQUEST, why);
    };
    // One handle for the whole request: it stays on the file it opened
    // when the shim rotates it (rename, then a new file), so following
    // reads the old file to its end before it moves to the new one.
    let mut handle = match tokio::fs::File::open(&file).await {
        Ok(f) => f,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log of container \"{container}\": {e}"),
            );
        }
    };
    let mut raw = Vec::new();
    let _ = handle.read_to_end(&mut raw).await;
    // Whole records only; a record being written comes with the follow.
    let cut = raw.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut pending = raw.split_off(cut);
    let mut open = false;
    let mut out = render(&String::from_utf8_lossy(&raw), &opts, &mut open);
    if let Some(n) = opts.tail_lines {
        out = tail(&out, n).to_owned();
    }
    // --limit-bytes counts bytes, as the kubelet does (it may cut a
    // character in two).
    let mut out = out.into_bytes();
    let mut budget = opts.limit_bytes.unwrap_or(usize::MAX);
    out.truncate(budget);
    budget -= out.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let _ = tx.send(Bytes::from(out)).await;
    if opts.follow && budget > 0 {
        let socket = k.run_dir.join("pods").join(uid).join("shim.sock");
        let id = format!("{container}.{restart}");
        tokio::spawn(async move {
            // Seen renamed away: read what is left, then the next file.
            let mut draining = false;
            loop {
                let mut new = Vec::new();
                if handle.read_to_end(&mut new).await.is_err() {
                    break;
                }
                if !new.is_empty() {
                    pending.extend_from_slice(&new);
                    let cut = pending
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |i| i + 1);
                    let rest = pending.split_off(cut);
                    let records = std::mem::replace(&mut pending, rest);
                    let mut chunk =
                        render(&String::from_utf8_lossy(&records), &opts, &mut open).into_bytes();
                    chunk.truncate(budget);
                    budget -= chunk.len();
                    if tx.send(Bytes::from(chunk)).await.is_err() || budget == 0 {
                        break;
                    }
                    continue;
                }
                if draining {
                    draining = false;
                    // The current file may be between its rename and its
                    // successor's creation for a moment: a few tries.
                    let mut next = None;
                    for _ in 0..20 {
                        match tokio::fs::File::open(next_file(&handle, &file).await).await {
                            Ok(f) => {
                                next = Some(f);
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    match next {
                        Some(f) => handle = f,
                        // The log is gone (the pod was deleted).
                        None => break,
                    }
                    continue;
                }
                // At the end of this file: has the shim rotated it? Then
                // one more read first: the shim may have written to it
                // between our last read and the rename.
                if rotated(&handle, &file).await {
                    draining = true;
                    continue;
                }
                // Done when the container has exited and all is read.
                let s = socket.clone();
                let exited = tokio::task::spawn_blocking(move || {
                    crate::runtime::shim::call(&s, &crate::runtime::shim::Request::State)
                })
                .await
                .ok()
                .and_then(Result::ok)
                .is_none_or(|st| {
                    st.containers
                        .iter()
                        .find(|c| c.id == id)
                        .is_none_or(|c| c.status == "exited")
                });
                if exited || tx.is_closed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    } else {
        drop(tx);
    }
    streamed(rx, "text/plain; charset=utf-8")
}

/// The file to follow after the rotated one `handle` has read to its end:
/// the next rotated file (`<path>.<time>`, in order), or `path` itself
/// when `handle`'s is the newest. A follower that fell more than one
/// rotation behind so reads every file still there, in order.
async fn next_file(handle: &tokio::fs::File, path: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ours = handle.metadata().await.ok().map(|m| (m.dev(), m.ino()));
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_owned();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut rotated: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    rotated.sort();
    let position = rotated.iter().position(|p| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino()))
            .is_some_and(|id| Some(id) == ours)
    });
    match position {
        Some(i) => rotated.get(i + 1).cloned(),
        // Ours is gone (the oldest go first): the oldest still there.
        None => rotated.first().cloned(),
    }
    .unwrap_or_else(|| path.to_owned())
}

/// Is the file at `path` no longer the one `handle` reads (renamed away
/// by a rotation, a new one in its place)?
async fn rotated(handle: &tokio::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (handle.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(open), Ok(now)) => open.ino() != now.ino() || open.dev() != now.dev(),
        _ => false,
    }
}
