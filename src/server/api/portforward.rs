//! `pods/portforward`: kubectl's SPDY/3.1 session, over a WebSocket
//! (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl ≥ 1.31) or over
//! the upgraded connection itself (`Upgrade: SPDY/3.1`, older kubectl and
//! the fallback); and the client libraries' WebSocket channels
//! (`v4.channel.k8s.io`, the Python client's `portforward()`), one
//! connection per port in `?ports=`.
//!
//! For each local connection kubectl opens two streams with the same
//! `requestid` and `port`: `error` and `data`. Once both are there the
//! server opens a stream to the pod's node through the agent's tunnel
//! (`POST /portForward/<ns>/<pod>?uid=…&port=…`), copies the data stream
//! into it and its answer back, and ends both streams when the pod's side
//! closes. A failure to connect is written on the error stream, which
//! kubectl prints as "an error occurred forwarding …".

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::body::{Body, RequestBody};
use super::tunnel::{TunnelBody, Tunnels};
use crate::api::spdy;
use crate::api::status::ApiError;

/// The WebSocket subprotocol that tunnels SPDY (KEP-4006).
const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The client libraries' WebSocket port-forward: channel 2i carries port
/// i's data, 2i+1 its errors, each opened by a message with the port.
const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// The stream protocol kubectl asks for over plain SPDY.
const STREAM_PROTOCOL: &str = "portforward.k8s.io";
/// Largest DATA frame sent.
const CHUNK: usize = 32 * 1024;
/// DATA frames from the client that may wait for one pod connection (at
/// kubectl's 32 KiB per frame, 8 MiB).
const STREAM_QUEUE: usize = 256;

fn header_has(headers: &HeaderMap, name: impl header::AsHeaderName, want: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(want))
}

/// Serve `kubectl port-forward` to `pod`.
///
/// # Errors
/// The pod is not running or has no node, or the request is not an
/// upgrade to SPDY/3.1 (plain or over a WebSocket).
pub async fn serve(
    tunnels: &Arc<Tunnels>,
    mut req: Request<RequestBody>,
    pod: &Value,
) -> Result<Response<Body>, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to forward ports to pod {name}: it is not running (phase {phase})"
        )));
    }
    let h = req.headers();
    let websocket = header_has(h, header::UPGRADE, "websocket")
        && header_has(h, header::SEC_WEBSOCKET_PROTOCOL, WEBSOCKET_PROTOCOL);
    let channels = !websocket
        && header_has(h, header::UPGRADE, "websocket")
        && header_has(h, header::SEC_WEBSOCKET_PROTOCOL, CHANNEL_PROTOCOL);
    let spdy = header_has(h, header::UPGRADE, "SPDY/3.1")
        && header_has(h, "x-stream-protocol-version", STREAM_PROTOCOL);
    // The ports a channel session forwards (`?ports=80,8080` or repeated).
    let mut ports: Vec<u16> = Vec::new();
    if channels {
        let query = super::request::parse_query(req.uri().query());
        for p in query
            .get("ports")
            .or_else(|| query.get("port"))
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
        {
            match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid port {p:?} in ports: a port is a number from 1 to 65535"
                    )));
                }
            }
        }
        if ports.is_empty() {
            return Err(ApiError::bad_request(
                "query parameter ports is required: the pod's ports to forward, e.g. ?ports=8080",
            ));
        }
        if ports.len() > 127 {
            // Two channels per port, numbered in one byte.
            return Err(ApiError::bad_request(format!(
                "{} ports asked for; one connection forwards at most 127",
                ports.len()
            )));
        }
    }
    let response = if websocket || channels {
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| ApiError::bad_request("a WebSocket upgrade needs Sec-WebSocket-Key"))?;
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                super::exec::accept_key(key.as_bytes()),
            )
            .header(
                header::SEC_WEBSOCKET_PROTOCOL,
                if websocket {
                    WEBSOCKET_PROTOCOL
                } else {
                    CHANNEL_PROTOCOL
                },
            )
            .body(Body::empty())
    } else if spdy {
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", STREAM_PROTOCOL)
            .body(Body::empty())
    } else {
        return Err(ApiError::bad_request(format!(
            "port-forward is served over SPDY/3.1, upgraded directly (X-Stream-Protocol-Version: {STREAM_PROTOCOL}) or over a WebSocket ({WEBSOCKET_PROTOCOL}), as kubectl port-forward asks for it, or over WebSocket channels ({CHANNEL_PROTOCOL}) as the client libraries do"
        )));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let target = Target {
        tunnels: tunnels.clone(),
        node: node.to_owned(),
        path: format!("/portForward/{ns}/{name}?uid={uid}"),
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(err) => {
                tracing::debug!(%err, "port-forward upgrade failed");
                return;
            }
        };
        if channels {
            let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
            channel_session(target, ports, ws).await;
            return;
        }
        // Bytes in, bytes out, whichever way they travel.
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(32);
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(64);
        let io = if websocket {
            let ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, None).await;
            tokio::spawn(websocket_io(ws, in_tx, out_rx))
        } else {
            tokio::spawn(raw_io(upgraded, in_tx, out_rx))
        };
        session(target, in_rx, out_tx).await;
        io.abort();
    });
    response.map_err(|e| ApiError::internal(e.to_string()))
}

/// Carry SPDY bytes in WebSocket binary messages.
async fn websocket_io(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    in_tx: mpsc::Sender<Bytes>,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
) {
    let (mut sink, mut stream) = ws.split();
    let (pong_tx, mut pong_rx) = mpsc::channel::<Bytes>(4);
    let writer = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                Some(b) = out_rx.recv() => Message::Binary(b.into()),
                Some(p) = pong_rx.recv() => Message::Pong(p),
                else => break,
            };
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(m)) = stream.next().await {
        match m {
            // (A clone of Bytes is a reference count.)
            Message::Binary(b) if in_tx.send(b.clone()).await.is_err() => break,
            Message::Ping(p) => {
                let _ = pong_tx.send(p).await;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    drop(in_tx);
    drop(pong_tx);
    let _ = writer.await;
}

/// Carry SPDY bytes on the upgraded connection itself.
async fn raw_io(
    io: TokioIo<hyper::upgrade::Upgraded>,
    in_tx: mpsc::Sender<Bytes>,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if in_tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(in_tx);
    let _ = writer.await;
}

/// Where forwarded connections go: the pod's node, through its tunnel.
struct Target {
    tunnels: Arc<Tunnels>,
    node: String,
    /// `/portForward/<ns>/<pod>?uid=…` (the port is added per connection).
    path: String,
}

/// One forwarded connection: its two streams, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: String,
    /// The data stream's bytes, until the pair starts.
    from_client: Option<mpsc::Receiver<Bytes>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Read frames until the client goes away; start each pair's forwarding.
async fn session(target: Target, mut input: mpsc::Receiver<Bytes>, out: mpsc::Sender<Vec<u8>>) {
    let target = Arc::new(target);
    let mut reader = spdy::Reader::new();
    let mut writer = spdy::Writer::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Stream id → its pair's request id; data stream id → where its bytes go.
    let mut streams: HashMap<u32, String> = HashMap::new();
    let mut to_pod: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    'session: while let Some(bytes) = input.recv().await {
        reader.push(&bytes);
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward: broken SPDY stream");
                    let _ = out.send(spdy::goaway(0)).await;
                    break 'session;
                }
            };
            match frame {
                spdy::Frame::SynStream {
                    stream, headers, ..
                } => {
                    let get = |n: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == n)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let (kind, port) = (get("streamtype"), get("port"));
                    // Older clients pair streams by port alone.
                    let id = match get("requestid") {
                        r if r.is_empty() => format!("port-{port}"),
                        r => r,
                    };
                    let valid_port = port.parse::<u16>().is_ok_and(|p| p > 0);
                    if !valid_port || !matches!(kind.as_str(), "error" | "data") {
                        let _ = out.send(spdy::reset(stream, spdy::REFUSED_STREAM)).await;
                        continue;
                    }
                    if out.send(writer.syn_reply(stream)).await.is_err() {
                        break 'session;
                    }
                    let pair = pairs.entry(id.clone()).or_default();
                    pair.port = port;
                    if kind == "error" {
                        pair.error = Some(stream);
                    } else {
                        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                        to_pod.insert(stream, tx);
                        pair.data = Some(stream);
                        pair.from_client = Some(rx);
                    }
                    streams.insert(stream, id.clone());
                    if let (Some(error), Some(data), Some(rx)) =
                        (pair.error, pair.data, pair.from_client.take())
                    {
                        pair.task = Some(tokio::spawn(forward(
                            target.clone(),
                            pair.port.clone(),
                            error,
                            data,
                            rx,
                            out.clone(),
                        )));
                    }
                }
                spdy::Frame::Data { stream, fin, data } => {
                    // Never waits on one connection: a pod that stops
                    // reading would stall every other stream (and the
                    // pings) behind it. SPDY here has no flow control, so
                    // a connection that falls STREAM_QUEUE frames behind
                    // is reset instead.
                    let full = match to_pod.get(&stream) {
                        Some(tx) if !data.is_empty() => match tx.try_send(data) {
                            Ok(()) => false,
                            Err(mpsc::error::TrySendError::Full(_)) => true,
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                to_pod.remove(&stream);
                                false
                            }
                        },
                        _ => false,
                    };
                    if full {
                        to_pod.remove(&stream);
                        if let Some(id) = streams.get(&stream).cloned()
                            && let Some(pair) = pairs.remove(&id)
                        {
                            if let Some(t) = pair.task {
                                t.abort();
                            }
                            for s in [pair.error, pair.data].into_iter().flatten() {
                                streams.remove(&s);
                                let _ = out.send(spdy::reset(s, spdy::CANCEL)).await;
                            }
                        }
                        continue;
                    }
                    if fin {
                        // The client is done sending: the pod's side
                        // gets a half-close.
                        to_pod.remove(&stream);
                    }
                }
                spdy::Frame::Reset { stream } => {
                    to_pod.remove(&stream);
                    if let Some(id) = streams.remove(&stream)
                        && let Some(pair) = pairs.remove(&id)
                    {
                        if let Some(t) = pair.task {
                            t.abort();
                        }
                        for s in [pair.error, pair.data].into_iter().flatten() {
                            streams.remove(&s);
                            to_pod.remove(&s);
                        }
                    }
                }
                spdy::Frame::Ping(id) => {
                    let _ = out.send(spdy::ping(id)).await;
                }
                spdy::Frame::GoAway => break 'session,
                spdy::Frame::Ignored => {}
            }
        }
        // Finished pairs are forgotten, with their streams.
        pairs.retain(|_, p| {
            let done = p
                .task
                .as_ref()
                .is_some_and(tokio::task::JoinHandle::is_finished);
            if done {
                for s in [p.error, p.data].into_iter().flatten() {
                    streams.remove(&s);
                    to_pod.remove(&s);
                }
            }
            !done
        });
    }
    for pair in pairs.into_values() {
        if let Some(t) = pair.task {
            t.abort();
        }
    }
}

/// Forward one connection: the client's data stream to the pod's port
/// and back; then end both streams (the error stream with the reason,
/// when there is one).
async fn forward(
    target: Arc<Target>,
    port: String,
    error: u32,
    data: u32,
    from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let sent = copy_from_pod(
        &target,
        &port,
        from_client,
        &out,
        |b| spdy::data(data, false, b),
        |b| spdy::data(error, false, b),
    )
    .await;
    if sent {
        let _ = out.send(spdy::data(data, true, &[])).await;
        let _ = out.send(spdy::data(error, true, &[])).await;
    }
}

/// Forward one connection to `port` and copy what the pod sends into
/// `out` as `data` messages; a failure to connect, or a break mid-copy,
/// goes out as one `error` message. False when `out` is gone (the client
/// left).
async fn copy_from_pod<T>(
    target: &Target,
    port: &str,
    from_client: mpsc::Receiver<Bytes>,
    out: &mpsc::Sender<T>,
    data: impl Fn(&[u8]) -> T,
    error: impl Fn(&[u8]) -> T,
) -> bool {
    let mut from_pod = match open(target, port, from_client).await {
        Ok(body) => body,
        Err(e) => return out.send(error(e.as_bytes())).await.is_ok(),
    };
    while let Some(frame) = from_pod.frame().await {
        let bytes = match frame.map(Frame::into_data) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => continue,
            Err(e) => {
                let why = format!("the connection to the pod's node broke: {e}");
                return out.send(error(why.as_bytes())).await.is_ok();
            }
        };
        for chunk in bytes.chunks(CHUNK) {
            if out.send(data(chunk)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Open a connection to `port` of the pod through its node's tunnel,
/// with what the client sends as its input; the pod's side as a body.
async fn open(
    target: &Target,
    port: &str,
    mut from_client: mpsc::Receiver<Bytes>,
) -> Result<Incoming, String> {
    let body: TunnelBody = BodyExt::boxed(http_body_util::StreamBody::new(
        futures::stream::poll_fn(move |cx| {
            from_client
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))))
        }),
    ));
    let path = format!("{}&port={port}", target.path);
    target
        .tunnels
        .request(&target.node, hyper::Method::POST, &path, body)
        .await
        .map(Response::into_body)
        .map_err(|e| e.message)
}

/// A channel session: one connection to each of `ports`, opened at once;
/// the WebSocket closes when all of them have ended.
async fn channel_session(
    target: Target,
    ports: Vec<u16>,
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let target = Arc::new(target);
    let (sink, mut stream) = ws.split();
    let (out, writer) = super::exec::writer(sink);
    let message = |channel: usize, bytes: &[u8]| {
        let mut m = Vec::with_capacity(bytes.len() + 1);
        m.push(u8::try_from(channel).unwrap_or(u8::MAX));
        m.extend_from_slice(bytes);
        Message::Binary(m.into())
    };
    let mut to_pod = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        // Each channel starts with its port, little-endian.
        for channel in [2 * i, 2 * i + 1] {
            let _ = out.send(message(channel, &port.to_le_bytes())).await;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        to_pod.push(Some(tx));
        let (target, out) = (target.clone(), out.clone());
        let port = port.to_string();
        tasks.push(tokio::spawn(async move {
            copy_from_pod(
                &target,
                &port,
                rx,
                &out,
                |b| message(2 * i, b),
                |b| message(2 * i + 1, b),
            )
            .await;
        }));
    }
    let aborts: Vec<_> = tasks
        .iter()
        .map(tokio::task::JoinHandle::abort_handle)
        .collect();
    let reader = {
        let (out, aborts) = (out.clone(), aborts.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                match m {
                    Message::Binary(b) if b.len() > 1 && b[0] % 2 == 0 => {
                        // As with SPDY: one port that stops reading is cut
                        // off rather than holding up the others.
                        let i = usize::from(b[0] / 2);
                        let Some(Some(tx)) = to_pod.get(i) else {
                            continue;
                        };
                        match tx.try_send(b.slice(1..)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => to_pod[i] = None,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                to_pod[i] = None;
                                aborts[i].abort();
                                let why: &[u8] = b"the pod's port did not take the data sent to it fast enough; the connection was closed";
                                let _ = out.send(message(2 * i + 1, why)).await;
                            }
                        }
                    }
                    Message::Ping(p) => {
                        let _ = out.send(Message::Pong(p)).await;
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        })
    };
    // Until every port's connection has ended, or the client has gone
    // (then the connections go too).
    let mut reader = reader;
    tokio::select! {
        () = async { for t in tasks { let _ = t.await; } } => {}
        _ = &mut reader => {
            for a in aborts {
                a.abort();
            }
        }
    }
    let _ = out
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            },
        )))
        .await;
    drop(out);
    reader.abort();
    let _ = writer.await;
}
