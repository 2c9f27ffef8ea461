//! One connection on the API port, from accept to close: the TLS
//! handshake, HTTP/1.1 or HTTP/2, and the limits that keep slow, idle and
//! greedy clients from holding connections (issue #21).
//!
//! Upstream gives Go's `http.Server` a `ReadHeaderTimeout` of 32 s and an
//! `IdleTimeout` of 90 s (k8s.io/apiserver `pkg/server/secure_serving.go`);
//! [`Limits::default`] has those. Here:
//!
//! - the TLS handshake must end within `tls_handshake`;
//! - the first request's headers must arrive within `read_header` of the
//!   handshake. Over HTTP/1.1 hyper times the wait for every later request
//!   head too, from the end of the previous response, so an idle HTTP/1.1
//!   connection closes after `read_header` rather than `idle`;
//! - a connection with no request in flight for `idle` is closed (HTTP/2
//!   with a GOAWAY); a watch is a request in flight until it ends;
//! - at most `max_unauthenticated` connections may be open that have not
//!   made an authenticated request nor shown a valid client certificate.
//!   One more closes the oldest of them: a flood of slow connections then
//!   cannot lock out real clients, whose connections are the newest.
//!
//! Upgraded connections (exec, port-forward, the agents' tunnels) leave
//! these limits when hyper hands them over.
//!
//! Requests are held to the size limits of the HTTP stack; see
//! [`MAX_REQUEST_TARGET_BYTES`] for what that means for long selectors.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ApiServer;
use super::body::{Body, RequestBody, Unread};
use crate::server::auth::authn::PeerCertificate;

/// How long connections may take and how many may wait unauthenticated.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The TLS handshake must end within this (Go ties it to
    /// `ReadHeaderTimeout`; a handshake needs far less).
    pub tls_handshake: Duration,
    /// A request's headers must arrive within this.
    pub read_header: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle: Duration,
    /// Connections that may wait unauthenticated at once (at least 1).
    pub max_unauthenticated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            read_header: Duration::from_secs(32),
            idle: Duration::from_secs(90),
            max_unauthenticated: 1024,
        }
    }
}

/// The longest request target (path and query, as sent: percent-encoded)
/// a request may have, over either protocol. The `http` crate's `Uri`
/// holds at most this, and hyper's HTTP/1.1 parser and the h2 crate both
/// refuse longer ones before a request exists, so no handler can answer
/// them with a `Status`. Upstream has no limit of its own here: Go reads
/// 1 MiB of headers (`MaxHeaderBytes`), so label and field selectors up to
/// about 1 MiB work there and up to about 64 KiB here (issue #21).
///
/// Beyond it, over HTTP/1.1, hyper answers 414 URI Too Long (no body) and
/// closes the connection.
pub const MAX_REQUEST_TARGET_BYTES: usize = 65_534;

/// The HTTP/2 header list a request may have, as HTTP/2 counts it (each
/// field's name and value plus 32 bytes), advertised in
/// `SETTINGS_MAX_HEADER_LIST_SIZE`. It is 64 KiB so that every request
/// whose `:path` is over [`MAX_REQUEST_TARGET_BYTES`] is over it too:
/// client-go (kubectl) then refuses to send it ("http2: request header
/// list larger than peer's advertised limit"), and a request that goes
/// out anyway gets h2's 431 without a body — kubectl 1.33 shows either,
/// from one run to the next (presumably as its request goes out before or
/// after the server's SETTINGS arrive). With a larger list such a request
/// reaches the h2 crate's path check, which resets the stream with
/// PROTOCOL_ERROR, and kubectl 1.33 retried that on new connections
/// every 40 ms without end.
pub const MAX_HTTP2_HEADER_LIST_BYTES: u32 = 64 * 1024;

// h2 counts a list over its limit once the sum reaches it; a `:path` one
// byte over the target limit adds its 5-byte name and 32 bytes.
const _: () = assert!(
    MAX_HTTP2_HEADER_LIST_BYTES as usize <= MAX_REQUEST_TARGET_BYTES + 1 + ":path".len() + 32
);

/// How many bytes of an HTTP/1.1 request head are read (Go's
/// `MaxHeaderBytes` upstream, 1 MiB); a larger head gets hyper's 431
/// Request Header Fields Too Large. The request target within it is held
/// to [`MAX_REQUEST_TARGET_BYTES`].
pub const MAX_HTTP1_HEAD_BYTES: usize = 1024 * 1024;

/// How long a connection closing for being idle may take to finish.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(5);

/// The connections that have not authenticated yet, oldest first.
pub(super) struct Unauthenticated {
    max: usize,
    /// The next connection's number, and the waiting ones by number with
    /// what tells each it was closed to make room.
    open: Mutex<(u64, BTreeMap<u64, Arc<Notify>>)>,
}

impl Unauthenticated {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// Count a new connection, closing the oldest waiting one if that
    /// makes too many.
    pub(super) fn admit(self: &Arc<Self>) -> Pending {
        let evicted = Arc::new(Notify::new());
        let mut open = self.open.lock().expect("lock poisoned");
        let id = open.0;
        open.0 += 1;
        open.1.insert(id, evicted.clone());
        while open.1.len() > self.max {
            if let Some((_, oldest)) = open.1.pop_first() {
                // Stored as a permit if that connection is not waiting yet.
                oldest.notify_one();
            }
        }
        Pending {
            gate: self.clone(),
            id,
            evicted,
        }
    }

    fn leave(&self, id: u64) {
        self.open.lock().expect("lock poisoned").1.remove(&id);
    }

    /// How many connections wait unauthenticated now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().expect("lock poisoned").1.len()
    }
}

/// A connection's place among the unauthenticated: left when it
/// authenticates or closes.
pub(super) struct Pending {
    gate: Arc<Unauthenticated>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Pending {
    /// Resolves if the connection must close to make room.
    async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.gate.leave(self.id);
    }
}

/// What a request's handlers know of the connection it came on.
pub struct Peer {
    /// The client certificate, checked once per connection.
    pub certificate: PeerCertificate,
    pending: Pending,
}

impl Peer {
    /// A request on this connection authenticated: it no longer counts
    /// against `max_unauthenticated`.
    pub fn authenticated(&self) {
        self.pending.gate.leave(self.pending.id);
    }
}

/// Serve one accepted connection until it closes or a limit closes it.
pub(super) async fn serve(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    api: Arc<ApiServer>,
    limits: Arc<Limits>,
    pending: Pending,
) {
    let handshake = tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp));
    let tls = tokio::select! {
        () = pending.evicted() => {
            tracing::debug!(%addr, "closed in its TLS handshake: too many unauthenticated connections");
            return;
        }
        tls = handshake => match tls {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!(%addr, %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%addr, "TLS handshake timed out");
                return;
            }
        },
    };
    // A certificate the CA did not sign (or expired) got through the
    // handshake only to be answered 401 by the authenticators.
    let peer = Arc::new(Peer {
        certificate: api.x509.verify_peer(tls.get_ref().1.peer_certificates()),
        pending,
    });
    if matches!(peer.certificate, PeerCertificate::Valid(_)) {
        peer.authenticated();
    }
    let activity = Arc::new(Activity::default());
    let service = {
        let (peer, activity) = (peer.clone(), activity.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = activity.begin();
            let (api, peer) = (api.clone(), peer.clone());
            let http2 = req.version() == hyper::Version::HTTP_2;
            let (parts, body) = req.into_parts();
            let (body, unread) = RequestBody::new(body);
            let req = Request::from_parts(parts, body);
            async move {
                let resp = api.handle(req, &peer).await;
                // Only a body the handler read (so was let in, and parsed)
                // counts: a refused one cost nothing to give back.
                let received = unread.bytes_read();
                if received >= crate::memory::HEAVY_BYTES {
                    // What handling a large body freed goes back before the
                    // answer (its Values are several times its size).
                    crate::memory::release_now().await;
                }
                if http2 {
                    unread.read_rest().await;
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    bytes: received,
                    _unread: unread,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header)
        .max_buf_size(MAX_HTTP1_HEAD_BYTES);
    builder
        .http2()
        .max_header_list_size(MAX_HTTP2_HEADER_LIST_BYTES);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let expired = tokio::select! {
        ended = conn.as_mut() => {
            if let Err(err) = ended {
                tracing::debug!(%addr, %err, "connection ended with an error");
            }
            return;
        }
        expired = activity.expired(&limits) => expired,
        () = peer.pending.evicted() => Expired::Evicted,
    };
    tracing::debug!(%addr, ?expired, "closing the connection");
    if expired == Expired::Idle {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(GRACEFUL_CLOSE, conn).await;
    }
}

/// Why a connection is closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No request headers within `read_header` of the handshake.
    NoRequest,
    /// No request in flight for `idle`.
    Idle,
    /// Unauthenticated, and the oldest when there were too many.
    Evicted,
}

/// The requests in flight on one connection.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// A request arrived; it is in flight until the returned guard (kept
    /// in its response body) is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Resolves when the connection has outlived a limit: no first request
    /// within `read_header`, or nothing in flight for `idle`.
    async fn expired(&self, limits: &Limits) -> Expired {
        let mut deadline = Instant::now() + limits.read_header;
        let mut why = Expired::NoRequest;
        loop {
            // Registered now, so no change after the check below is missed.
            let changed = self.changed.notified();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
            } else if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return why;
            }
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                deadline = Instant::now() + limits.idle;
                why = Expired::Idle;
            }
        }
    }
}

/// One request in flight (see [`Activity::begin`]).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request in flight, and the request
/// body's unread rest, until hyper has sent it all (or the client went
/// away). Once done, a request that carried a lot either way asks for the
/// heap it freed to be given back ([`crate::memory::release_soon`]).
struct Tracked {
    body: Body,
    /// What the handler read of the request body plus what was sent so far.
    bytes: usize,
    _unread: Unread,
    _in_flight: InFlight,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.bytes >= crate::memory::HEAVY_BYTES {
            crate::memory::release_soon();
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            let sent = frame.data_ref().map_or(0, Bytes::len);
            this.bytes = this.bytes.saturating_add(sent);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_target_limit_is_the_http_crates() {
        let target = |len: usize| format!("/api?labelSelector={}", "a".repeat(len - 19));
        assert!(http::uri::PathAndQuery::try_from(target(MAX_REQUEST_TARGET_BYTES)).is_ok());
        assert!(
            http::uri::PathAndQuery::try_from(target(MAX_REQUEST_TARGET_BYTES + 1)).is_err(),
            "the http crate took a longer target: raise MAX_REQUEST_TARGET_BYTES and \
             MAX_HTTP2_HEADER_LIST_BYTES with it"
        );
    }

    #[test]
    fn the_oldest_unauthenticated_connection_makes_room() {
        let gate = Unauthenticated::new(2);
        let first = gate.admit();
        let second = gate.admit();
        let third = gate.admit();
        assert_eq!(gate.len(), 2, "never more than the cap");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), first.evicted())
                .await
                .expect("the oldest connection is told to close");
            assert!(
                tokio::time::timeout(Duration::from_millis(10), second.evicted())
                    .await
                    .is_err(),
                "newer connections stay"
            );
        });
        // An authenticated connection leaves the count; a closed one too.
        Peer {
            certificate: PeerCertificate::None,
            pending: second,
        }
        .authenticated();
        assert_eq!(gate.len(), 1);
        drop(third);
        assert_eq!(gate.len(), 0);
    }

    #[tokio::test]
    async fn connections_expire_without_a_request_or_when_idle() {
        let limits = Limits {
            read_header: Duration::from_millis(40),
            idle: Duration::from_millis(80),
            ..Limits::default()
        };
        let quiet = Arc::new(Activity::default());
        let started = Instant::now();
        assert_eq!(quiet.expired(&limits).await, Expired::NoRequest);
        assert!(started.elapsed() >= limits.read_header);

        let busy = Arc::new(Activity::default());
        let request = busy.begin();
        let watch = tokio::spawn({
            let busy = busy.clone();
            let limits = limits.clone();
            async move { busy.expired(&limits).await }
        });
        // A request in flight (a watch) keeps the connection open.
        tokio::time::sleep(limits.idle * 4).await;
        assert!(!watch.is_finished(), "a request in flight is not idle");
        let ended = Instant::now();
        drop(request);
        assert_eq!(watch.await.unwrap(), Expired::Idle);
        assert!(
            ended.elapsed() >= limits.idle,
            "idle counts from the end of the last request"
        );
    }
}
