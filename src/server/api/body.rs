//! Bodies: the response's (a whole buffer, or a stream of chunks fed
//! through a channel for watch and logs) and the request's
//! ([`RequestBody`], whose unread rest a handler left is dealt with by
//! [`Unread`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

/// How much of a request body a handler left unread is still read (and
/// dropped) before an HTTP/2 answer goes out: the 413 limit's worth and
/// then some.
pub const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// How long that reading may take.
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

/// A request's body as the handlers see it: hyper's, whose unread rest
/// (when a handler answers without reading it all) goes to the request's
/// [`Unread`].
///
/// Handlers answer many requests without reading their bodies (401, 403,
/// 404, 405, 413). Over HTTP/2 no way of leaving the rest unread works
/// for every client still sending it:
/// - dropped before the answer is sent, h2 resets the stream with CANCEL
///   in the same write as the response, and the client loses the answer;
/// - dropped after it, h2 resets with NO_ERROR (RFC 9113 §8.1, as Go's
///   server does), which curl 7.88 reports as an error while uploading;
/// - read on after the answer, a client that stops sending when it sees
///   an error status (curl does) ends the stream short of its
///   content-length, which h2 resets with PROTOCOL_ERROR.
///
/// So over HTTP/2 the rest is read before the answer goes out (see
/// [`Unread::read_rest`]), within [`DRAIN_BYTES`] and [`DRAIN_TIME`];
/// past them it is dropped after the answer (NO_ERROR). Over HTTP/1.1
/// hyper reads or closes on its own once the body is dropped.
pub struct RequestBody {
    body: Option<Incoming>,
    unread: Arc<Mutex<Option<Incoming>>>,
}

/// Where a request's unread body waits: kept in the response body, so
/// what is left of it is dropped once hyper has sent the answer (or the
/// client went away).
pub struct Unread {
    body: Arc<Mutex<Option<Incoming>>>,
}

impl RequestBody {
    /// `body`, and where its unread rest will wait.
    pub fn new(body: Incoming) -> (Self, Unread) {
        let unread = Arc::new(Mutex::new(None));
        let held = Unread {
            body: unread.clone(),
        };
        (
            Self {
                body: Some(body),
                unread,
            },
            held,
        )
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else { return };
        if !body.is_end_stream()
            && let Ok(mut unread) = self.unread.lock()
        {
            *unread = Some(body);
        }
    }
}

impl Unread {
    /// Read what the handler left of the request body to its end, within
    /// [`DRAIN_BYTES`] and [`DRAIN_TIME`], dropping what comes. A body
    /// cut short by the bounds stays here, to be dropped after the answer.
    pub async fn read_rest(&self) {
        let Some(mut body) = self.body.lock().ok().and_then(|mut b| b.take()) else {
            return;
        };
        let read = async {
            let mut seen = 0usize;
            loop {
                match body.frame().await {
                    None => return true,
                    Some(Err(_)) => return true,
                    Some(Ok(frame)) => {
                        seen += frame.data_ref().map_or(0, Bytes::len);
                        if seen > DRAIN_BYTES {
                            return false;
                        }
                    }
                }
            }
        };
        let ended = tokio::time::timeout(DRAIN_TIME, read).await == Ok(true);
        if !ended && let Ok(mut unread) = self.body.lock() {
            *unread = Some(body);
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut().body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}
