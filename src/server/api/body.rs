//! Bodies: the response's (a whole buffer, or a stream of chunks fed
//! through a channel for watch and logs) and the request's
//! ([`RequestBody`], whose unread rest a handler left is dealt with by
//! [`Unread`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::{Semaphore, mpsc};

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
    /// Bytes the handler read.
    read: Arc<AtomicUsize>,
}

/// Where a request's unread body waits: kept in the response body, so
/// what is left of it is dropped once hyper has sent the answer (or the
/// client went away).
pub struct Unread {
    body: Arc<Mutex<Option<Incoming>>>,
    read: Arc<AtomicUsize>,
}

impl RequestBody {
    /// `body`, and where its unread rest will wait.
    pub fn new(body: Incoming) -> (Self, Unread) {
        let unread = Arc::new(Mutex::new(None));
        let read = Arc::new(AtomicUsize::new(0));
        let held = Unread {
            body: unread.clone(),
            read: read.clone(),
        };
        (
            Self {
                body: Some(body),
                unread,
                read,
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
    /// How much of the body the handler read (not what was drained).
    pub fn bytes_read(&self) -> usize {
        self.read.load(Ordering::Relaxed)
    }

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
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            let len = frame.data_ref().map_or(0, Bytes::len);
            this.read.fetch_add(len, Ordering::Relaxed);
        }
        frame
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
    /// A stream whose queued bytes are bounded (see [`metered`]).
    Metered(Metered),
}

/// The receiving side of [`metered`]: gives back the budget a chunk took
/// once hyper has taken the chunk.
pub struct Metered {
    rx: mpsc::Receiver<Bytes>,
    budget: Arc<Semaphore>,
    max: usize,
}

/// A streamed body whose sender waits while `budget` bytes are queued
/// and not yet taken by hyper (a chunk larger than the budget takes all
/// of it), so a client that stops reading pins at most `budget` bytes
/// here plus what hyper and the socket hold.
pub fn metered(budget: usize) -> (MeteredSender, Body) {
    let max = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let semaphore = Arc::new(Semaphore::new(max));
    // The count only needs to let many small chunks queue; bytes bound it.
    let (tx, rx) = mpsc::channel(1024);
    (
        MeteredSender {
            tx,
            budget: semaphore.clone(),
            max,
        },
        Body::Metered(Metered {
            rx,
            budget: semaphore,
            max,
        }),
    )
}

/// The sending side of [`metered`].
pub struct MeteredSender {
    tx: mpsc::Sender<Bytes>,
    budget: Arc<Semaphore>,
    max: usize,
}

/// The response body is gone (the client went away).
#[derive(Debug)]
pub struct Closed;

impl MeteredSender {
    /// Queue `chunk`, waiting for budget.
    ///
    /// # Errors
    /// [`Closed`] when the body was dropped.
    pub async fn send(&self, chunk: Bytes) -> Result<(), Closed> {
        let cost = u32::try_from(chunk.len().min(self.max)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            permit = self.budget.clone().acquire_many_owned(cost) => permit.map_err(|_| Closed)?,
            () = self.tx.closed() => return Err(Closed),
        };
        // Given back by the body once hyper takes the chunk.
        permit.forget();
        self.tx.send(chunk).await.map_err(|_| Closed)
    }

    /// Resolves when the body was dropped.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
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
            Self::Metered(m) => m.rx.poll_recv(cx).map(|chunk| {
                chunk.map(|b| {
                    m.budget.add_permits(b.len().min(m.max));
                    Ok(Frame::data(b))
                })
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) | Self::Metered(_) => SizeHint::default(),
        }
    }
}
