//! The kubelet API's HTTP responses: plain-text answers and streamed
//! bodies, shared by the tunnel that serves the API and the handlers it
//! routes to (logs, exec, attach, port-forward). No routing here.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Frame;
use hyper::{Response, StatusCode, header};

/// The body of every kubelet API response.
pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A plain-text answer (the kubelet API's errors).
pub(super) fn text(status: StatusCode, message: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            http_body_util::Full::new(Bytes::from(message))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("response parts are valid")
}

/// A 200 whose body is what comes through `rx`, until it closes.
pub(super) fn streamed(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    content_type: &str,
) -> Response<Body> {
    let body = http_body_util::StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.boxed_unsync())
        .expect("response parts are valid")
}
