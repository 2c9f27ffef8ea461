//! Tunnels to the node agents: how the server reaches a kubelet API
//! (`pods/log`, `pods/exec`) without any inbound port on the node
//! (ARCHITECTURE.md decision 5).
//!
//! An agent sends `GET /orch/v1/tunnel?node=<name>` with
//! `Upgrade: orch-tunnel`; the server answers 101 and speaks HTTP/2 as the
//! *client* over the upgraded connection, with the agent as the server.
//! Requests for a node's kubelet API go through the newest tunnel of that
//! node; when it breaks, the agent dials again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioExecutor;

use super::body::{Body, RequestBody};
use crate::api::status::ApiError;

pub const UPGRADE: &str = "orch-tunnel";

/// What requests to an agent carry (empty, or an exec's client messages).
pub type TunnelBody = BoxBody<Bytes, std::convert::Infallible>;

/// A tunnel's generation (so an old tunnel closing does not remove a
/// newer one) and its request sender.
type Tunnel = (u64, SendRequest<TunnelBody>);

#[derive(Default)]
pub struct Tunnels {
    nodes: Mutex<HashMap<String, Tunnel>>,
    next: Mutex<u64>,
}

impl Tunnels {
    /// Take an agent's upgrade request; the tunnel lives until the
    /// connection ends.
    pub fn accept(self: &Arc<Self>, req: Request<RequestBody>) -> Response<Body> {
        let node = req
            .uri()
            .query()
            .and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("node="))
                    .map(str::to_owned)
            })
            .filter(|n| !n.is_empty());
        let upgrade_ok = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(UPGRADE.as_bytes()));
        let Some(node) = node.filter(|_| upgrade_ok) else {
            return super::error_response(&ApiError::bad_request(format!(
                "a tunnel needs ?node=NAME and Upgrade: {UPGRADE}"
            )));
        };
        let generation = {
            let mut n = self.next.lock().expect("tunnel lock");
            *n += 1;
            *n
        };
        let on_upgrade = hyper::upgrade::on(req);
        let tunnels = self.clone();
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(err) => {
                    tracing::debug!(%err, node, "tunnel upgrade failed");
                    return;
                }
            };
            // As on the agent's side: a stalled stream takes a small share
            // of the connection's window, not all of it.
            let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(crate::api::remotecommand::TUNNEL_STREAM_WINDOW)
                .initial_connection_window_size(crate::api::remotecommand::TUNNEL_CONNECTION_WINDOW)
                .handshake(upgraded);
            let (send, conn) = match handshake.await {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(%err, node, "tunnel handshake failed");
                    return;
                }
            };
            tunnels
                .nodes
                .lock()
                .expect("tunnel lock")
                .insert(node.clone(), (generation, send));
            tracing::info!(node, "node agent tunnel up");
            if let Err(err) = conn.await {
                tracing::debug!(%err, node, "tunnel ended");
            }
            let mut nodes = tunnels.nodes.lock().expect("tunnel lock");
            if nodes.get(&node).is_some_and(|(g, _)| *g == generation) {
                nodes.remove(&node);
                tracing::info!(node, "node agent tunnel down");
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, UPGRADE)
            .body(Body::empty())
            .expect("static response parts are valid")
    }

    /// Send `method path_and_query` with `body` to `node`'s kubelet API;
    /// the answer's headers and body once it is a success.
    ///
    /// # Errors
    /// 503 when the node has no tunnel; the agent's own errors otherwise.
    pub async fn request(
        &self,
        node: &str,
        method: hyper::Method,
        path_and_query: &str,
        body: TunnelBody,
    ) -> Result<Response<Incoming>, ApiError> {
        let send = self
            .nodes
            .lock()
            .expect("tunnel lock")
            .get(node)
            .map(|(_, s)| s.clone());
        let Some(mut send) = send else {
            return Err(ApiError::service_unavailable(format!(
                "the node agent of {node:?} is not connected to this server"
            )));
        };
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(body)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ApiError::service_unavailable(format!("node {node:?}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = String::from_utf8_lossy(&bytes).trim().to_owned();
            return Err(match status.as_u16() {
                404 => ApiError::new(404, "NotFound", message),
                400 => ApiError::bad_request(message),
                _ => ApiError::internal(message),
            });
        }
        Ok(resp)
    }

    /// Send a GET for `path_and_query` to `node`'s kubelet API and stream
    /// the answer back.
    ///
    /// # Errors
    /// 503 when the node has no tunnel; the agent's own errors otherwise.
    pub async fn get(&self, node: &str, path_and_query: &str) -> Result<Response<Body>, ApiError> {
        let resp = self
            .request(
                node,
                hyper::Method::GET,
                path_and_query,
                Empty::new().map_err(|e| match e {}).boxed(),
            )
            .await?;
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let mut body = resp.into_body();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data()
                    && tx.send(data).await.is_err()
                {
                    break; // the client went away
                }
            }
        });
        let mut builder = Response::builder().status(StatusCode::OK);
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        Ok(builder
            .body(Body::Stream(rx))
            .expect("response parts are valid"))
    }
}
