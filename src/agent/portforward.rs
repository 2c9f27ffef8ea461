//! `kubectl port-forward` on the node: the kubelet API's
//! `POST /portForward/<ns>/<pod>?uid=…&port=…`. The agent connects to the
//! port on the pod's loopback inside the pod's network namespace (as
//! containerd's CRI does, so ports bound to 127.0.0.1 only are reachable
//! too), then the request body is copied to the connection and the
//! connection to the response body until either side ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pods::Kubelet;
use super::response::{Body, streamed, text};

/// Connect to `port` on the loopback of the network namespace pinned at
/// `netns` (the node's own when `None`): IPv4 first, then IPv6.
fn connect(netns: Option<std::path::PathBuf>, port: u16) -> std::io::Result<std::net::TcpStream> {
    let dial = move || {
        let timeout = Duration::from_secs(5);
        let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e4| {
            std::net::TcpStream::connect_timeout(&v6, timeout)
                .map_err(|e6| std::io::Error::new(e4.kind(), format!("IPv4: {e4}; IPv6: {e6}")))
        })
    };
    let Some(netns) = netns else {
        return dial();
    };
    // A thread of its own enters the pod's namespace and ends after the
    // connect: a socket stays in the namespace it was made in.
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns)?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        dial()
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
}

/// Serve one forwarded connection.
pub async fn serve(k: &Arc<Kubelet>, req: Request<Incoming>, pod: &str) -> Response<Body> {
    let query = crate::api::query::parse_query(req.uri().query());
    let first = |key: &str| crate::api::query::first(&query, key).unwrap_or_default();
    let (uid, port) = (first("uid").to_owned(), first("port"));
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p > 0) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("invalid port {port:?}: a port is a number from 1 to 65535"),
        );
    };
    let netns = k.netns(&uid);
    let netns = if uid.is_empty() {
        None
    } else if netns.exists() {
        Some(Some(netns))
    } else if k.shim_dir(&uid).exists() {
        // A hostNetwork pod: the node's namespace is the pod's.
        Some(None)
    } else {
        None
    };
    let Some(netns) = netns else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {pod} (uid {uid:?}) is not running on this node"),
        );
    };
    let socket = match tokio::task::spawn_blocking(move || connect(netns, port)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "error forwarding port {port} to pod {pod}, uid {uid}: nothing accepts connections on localhost:{port} in the pod ({e})"
                ),
            );
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let socket = match socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(socket))
    {
        Ok(s) => s,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let _ = socket.set_nodelay(true);
    let (mut from_pod, mut to_pod) = socket.into_split();
    // Client → pod, then a half-close so the pod sees the end.
    let mut input = req.into_body();
    tokio::spawn(async move {
        while let Some(Ok(f)) = input.frame().await {
            if let Ok(data) = f.into_data()
                && to_pod.write_all(&data).await.is_err()
            {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    // Pod → client, until the pod closes its side or the client is gone
    // (its end of the stream dropped: the connection is closed then).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::select! {
                read = from_pod.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                () = tx.closed() => break,
            };
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                break;
            }
        }
    });
    streamed(rx, "application/octet-stream")
}
