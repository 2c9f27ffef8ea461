//! `pods/exec` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`,
//! `v4.base64.channel.k8s.io`), as kubectl ≥ 1.30 and the client libraries
//! speak it. The server opens
//! an exec stream to the pod's node through the agent's tunnel first —
//! so a container that is not running is an ordinary error `Status` —
//! then upgrades the client's connection and relays messages both ways
//! until the agent sends the closing `Status` (exit code on channel 3).
//!
//! SPDY, kubectl's fallback, is refused with a message that says so.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

use super::body::{Body, RequestBody};
use super::tunnel::{TunnelBody, Tunnels};
use crate::api::remotecommand::{self as rc, PROTOCOLS};
use crate::api::status::ApiError;

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub(super) fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// The subprotocol to speak: the best of ours the client offers.
fn pick_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

/// Serve `kubectl exec` into `container` of `pod`.
///
/// # Errors
/// The pod is finished or unscheduled, the request is not a WebSocket
/// upgrade, or the node refused to start the command.
pub async fn serve(
    tunnels: &Tunnels,
    mut req: Request<RequestBody>,
    pod: &Value,
    container: &str,
    what: &str,
) -> Result<Response<Body>, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::bad_request(format!(
            "cannot {what} into a container in a completed pod; current phase is {phase}"
        )));
    }
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (websocket, key) else {
        return Err(ApiError::bad_request(format!(
            "{what} is served over WebSocket (v5.channel.k8s.io or v4.channel.k8s.io); kubectl 1.30 or later does this unless KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false, and SPDY is not supported"
        )));
    };
    let Some(protocol) = pick_protocol(req.headers()) else {
        return Err(ApiError::bad_request(format!(
            "no supported {what} subprotocol offered; this server speaks {}",
            PROTOCOLS.join(", ")
        )));
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let query = req.uri().query().unwrap_or_default();
    let path = format!("/{what}/{ns}/{name}/{container}?uid={uid}&{query}");
    // Client → agent messages, framed, as the tunnel request's body.
    let (to_agent, from_client) = tokio::sync::mpsc::channel::<Bytes>(32);
    let input: TunnelBody = BodyExt::boxed(http_body_util::StreamBody::new(
        futures::stream::unfold(from_client, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        }),
    ));
    let answer = tunnels
        .request(node, hyper::Method::POST, &path, input)
        .await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let v5 = protocol == PROTOCOLS[0];
    let base64 = protocol == rc::BASE64_PROTOCOL;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(err) => {
                tracing::debug!(%err, "exec upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        relay(ws, answer.into_body(), to_agent, v5, base64).await;
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()))
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(Body::empty())
        .expect("static response parts are valid"))
}

/// The one writer of a WebSocket: what is sent to the channel goes out in
/// order, until a Close message (the last) or a failed send; then the
/// socket is closed.
pub(super) fn writer<S>(
    mut sink: S,
) -> (
    tokio::sync::mpsc::Sender<Message>,
    tokio::task::JoinHandle<()>,
)
where
    S: futures::Sink<Message> + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (tx, task)
}

/// Copy messages between the client's WebSocket and the agent's stream
/// until the agent is done. `base64`: the client speaks
/// `v4.base64.channel.k8s.io`.
async fn relay(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    mut from_agent: Incoming,
    to_agent: tokio::sync::mpsc::Sender<Bytes>,
    v5: bool,
    base64: bool,
) {
    let (sink, mut stream) = ws.split();
    let (out_tx, writer) = writer(sink);
    // Client → agent (pings are answered by the WebSocket layer).
    let client_out = out_tx.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            // Text frames carry messages as binary ones do (upstream reads
            // both the same way); the Python client sends `str` as text.
            let message = match &m {
                Message::Binary(data) => rc::decode_message(base64, data),
                Message::Text(text) => rc::decode_message(base64, text.as_bytes()),
                _ => None,
            };
            match m {
                Message::Binary(_) | Message::Text(_) => {
                    let Some((channel, data)) = message else {
                        continue;
                    };
                    if !v5 && channel == rc::CLOSE {
                        continue;
                    }
                    let framed = rc::frame(channel, &data);
                    if to_agent.send(Bytes::from(framed)).await.is_err() {
                        break;
                    }
                }
                Message::Ping(p) => {
                    let _ = client_out.send(Message::Pong(p)).await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    // Agent → client, until the agent's stream ends.
    let mut deframer = rc::Deframer::default();
    while let Some(Ok(f)) = from_agent.frame().await {
        let Ok(data) = f.into_data() else { continue };
        deframer.push(&data);
        while let Some((channel, data)) = deframer.next_message() {
            let msg = if base64 {
                Message::Text(rc::encode_base64(channel, &data).into())
            } else {
                let mut msg = Vec::with_capacity(data.len() + 1);
                msg.push(channel);
                msg.extend_from_slice(&data);
                Message::Binary(msg.into())
            };
            if out_tx.send(msg).await.is_err() {
                break;
            }
        }
    }
    let _ = out_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example in RFC 6455 §1.3.
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
