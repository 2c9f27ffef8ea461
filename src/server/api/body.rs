//! Bodies: the response's (a whole buffer, or a stream of chunks fed
//! through a channel for watch and logs) and the request's
//! ([`RequestBody`], which finishes reading itself when a handler answers
//! without reading it).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

/// How much of a request body nobody read is still read (and dropped)
/// after the handler answered: the 413 limit's worth and then some.
pub const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// How long that reading may take.
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

/// A request's body as the handlers see it: hyper's, read to its end (up
/// to [`DRAIN_BYTES`] and [`DRAIN_TIME`]) in the background when a handler
/// drops it unread.
///
/// Handlers answer many requests without reading their bodies (401, 403,
/// 404, 405, 413). Over HTTP/2, dropping hyper's body before the answer
/// is sent makes h2 reset the stream in the same write as the response,
/// and clients still sending (curl, exit 92) lose the answer. Reading on
/// lets the client finish its request and see the status; past the
/// bounds the stream is reset (NO_ERROR) after the response went out, as
/// RFC 9113 §8.1 allows and Go's server does.
pub struct RequestBody(Option<Incoming>);

impl RequestBody {
    pub fn new(body: Incoming) -> Self {
        Self(Some(body))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (never, in the server) the body is dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Read `body` to its end and drop what comes, within the bounds.
async fn drain(mut body: Incoming) {
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut().0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
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
