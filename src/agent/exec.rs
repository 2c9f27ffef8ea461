//! `kubectl exec` and `kubectl attach` on the node: the kubelet API's
//! `POST /exec/<ns>/<pod>/<container>?uid=…&command=…&stdin=…&tty=…` and
//! `POST /attach/<ns>/<pod>/<container>?uid=…&stdin=…`.
//!
//! The request body carries the client's messages and the response body
//! the command's, framed as [`crate::api::remotecommand`] says; the
//! server turns them into WebSocket messages. The shim starts the command
//! and hands over its stdio (a terminal's master with `tty`); threads
//! here copy between those descriptors and the HTTP/2 stream, and the
//! last message is the `Status` with the exit code.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};

use super::pods::Kubelet;
use crate::api::remotecommand::{self as rc, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, frame};
use crate::runtime::shim;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, message: String) -> Response<Body> {
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

/// Attach to the container's stdio through its shim: the shim already
/// speaks the framing, so bytes are copied as they are.
pub async fn attach(
    k: &Arc<Kubelet>,
    req: Request<Incoming>,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let query = crate::api::query::parse_query(req.uri().query());
    let first = |key: &str| {
        query
            .get(key)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default()
    };
    let stdin = matches!(first("stdin").as_str(), "true" | "1");
    let socket = k.run_dir.join("pods").join(first("uid")).join("shim.sock");
    let prefix = format!("{container}.");
    let name = container.to_owned();
    let attached = tokio::task::spawn_blocking(move || {
        let state = shim::call(&socket, &shim::Request::State)?;
        let id = state
            .containers
            .iter()
            .filter(|c| c.status == "running")
            .filter_map(|c| {
                let n: u32 = c.id.strip_prefix(&prefix)?.parse().ok()?;
                Some((n, c.id.clone()))
            })
            .max()
            .map(|(_, id)| id)
            .ok_or_else(|| shim::Error::Shim(format!("container {name} is not running")))?;
        shim::attach(&socket, &id, stdin)
    })
    .await
    .expect("attach panicked");
    let conn = match attached {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unable to attach to {container} of pod {pod}: {e}"),
            );
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    // Shim → client.
    let Ok(reader) = conn.try_clone() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot clone a socket".into(),
        );
    };
    std::thread::spawn(move || {
        let mut r = reader;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
            }
        }
    });
    // Client → shim, until the client is done; then the shim hears it.
    let mut input = req.into_body();
    tokio::spawn(async move {
        let (in_tx, in_rx) = std::sync::mpsc::channel::<Bytes>();
        let writer = std::thread::spawn(move || {
            let mut w = conn;
            for chunk in in_rx {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = w.shutdown(std::net::Shutdown::Both);
        });
        while let Some(Ok(f)) = input.frame().await {
            if let Ok(data) = f.into_data()
                && in_tx.send(data).is_err()
            {
                break;
            }
        }
        drop(in_tx);
        // The writer ends on its own once the input channel is gone.
        drop(writer);
    });
    let body = http_body_util::StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body.boxed_unsync())
        .expect("response parts are valid")
}

/// Run the exec the request asks for and stream it.
pub async fn serve(
    k: &Arc<Kubelet>,
    req: Request<Incoming>,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let query = crate::api::query::parse_query(req.uri().query());
    let first = |key: &str| {
        query
            .get(key)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default()
    };
    let flag = |key: &str| matches!(first(key).as_str(), "true" | "1");
    let uid = first("uid");
    let args = query.get("command").cloned().unwrap_or_default();
    let (tty, stdin) = (flag("tty"), flag("stdin"));
    if args.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container".into(),
        );
    }
    let socket = k.run_dir.join("pods").join(&uid).join("shim.sock");
    let prefix = format!("{container}.");
    let s = socket.clone();
    let found = tokio::task::spawn_blocking(move || {
        let state = shim::call(&s, &shim::Request::State)?;
        // The newest running instance of the container.
        Ok::<_, shim::Error>(
            state
                .containers
                .iter()
                .filter(|c| c.status == "running")
                .filter_map(|c| {
                    let n: u32 = c.id.strip_prefix(&prefix)?.parse().ok()?;
                    Some((n, c.id.clone()))
                })
                .max()
                .map(|(_, id)| id),
        )
    })
    .await
    .expect("shim state panicked");
    let id = match found {
        Ok(Some(id)) => id,
        Ok(None) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running in pod {pod}"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unable to reach the shim of pod {pod}: {e}"),
            );
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    tokio::spawn(session(socket, id, args, tty, stdin, req.into_body(), tx));
    let body = http_body_util::StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body.boxed_unsync())
        .expect("response parts are valid")
}

/// Start the command and stream it. With a terminal, the client's first
/// size comes first (kubectl sends it at once), so the command starts
/// with the right size.
async fn session(
    socket: std::path::PathBuf,
    id: String,
    args: Vec<String>,
    tty: bool,
    stdin: bool,
    mut input: Incoming,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut deframer = rc::Deframer::default();
    let mut early = Vec::new();
    if tty {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(f)) = input.frame().await {
                let Ok(data) = f.into_data() else { continue };
                deframer.push(&data);
                while let Some(m) = deframer.next_message() {
                    let size = m.0 == RESIZE;
                    early.push(m);
                    if size {
                        return;
                    }
                }
            }
        })
        .await;
    }
    let size = early
        .iter()
        .find(|(c, _)| *c == RESIZE)
        .and_then(|(_, d)| rc::parse_resize(d));
    let started = tokio::task::spawn_blocking(move || {
        shim::exec_stream(&socket, &id, args, tty, stdin, size)
    })
    .await
    .expect("exec start panicked");
    match started {
        Ok(session) => stream(session, tty, deframer, early, input, tx),
        Err(e) => {
            let status = rc::failure(&format!("cannot run the command: {e}"));
            let _ = tx
                .send(Bytes::from(frame(ERROR, status.to_string().as_bytes())))
                .await;
        }
    }
}

/// Copy `fd` to the client as `channel` messages until it ends.
fn pump_out(
    fd: OwnedFd,
    channel: u8,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // A terminal whose other side closed reads EIO: the end.
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .blocking_send(Bytes::from(frame(channel, &buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    })
}

/// Wire the session's descriptors to the HTTP/2 stream.
fn stream(
    mut session: shim::ExecSession,
    tty: bool,
    mut deframer: rc::Deframer,
    early: Vec<(u8, Vec<u8>)>,
    mut input: Incoming,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut fds = std::mem::take(&mut session.fds).into_iter();
    // (where stdin goes, the terminal for resizes, output pumps)
    let (stdin_fd, terminal, pumps) = if tty {
        let master = fds.next();
        let out = master.as_ref().and_then(|m| m.try_clone().ok());
        let resize = master.as_ref().and_then(|m| m.try_clone().ok());
        let pumps: Vec<_> = out
            .into_iter()
            .map(|fd| pump_out(fd, STDOUT, tx.clone()))
            .collect();
        (master, resize, pumps)
    } else {
        let stdout = fds.next();
        let stderr = fds.next();
        let stdin = fds.next();
        let mut pumps = Vec::new();
        pumps.extend(stdout.map(|fd| pump_out(fd, STDOUT, tx.clone())));
        pumps.extend(stderr.map(|fd| pump_out(fd, STDERR, tx.clone())));
        (stdin, None, pumps)
    };
    // Client → command: stdin bytes through a writer thread; resizes on
    // the terminal; [255, 0] closes stdin.
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    if let Some(fd) = stdin_fd {
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(fd);
            for chunk in in_rx {
                if f.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut in_tx = Some(in_tx);
        let mut handle = |channel: u8, data: Vec<u8>| match channel {
            STDIN => {
                if let Some(t) = &in_tx {
                    let _ = t.send(data);
                }
            }
            RESIZE => {
                if let (Some(term), Some((w, h))) = (&terminal, rc::parse_resize(&data)) {
                    let _ = rustix::termios::tcsetwinsize(
                        term,
                        rustix::termios::Winsize {
                            ws_row: h,
                            ws_col: w,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        },
                    );
                }
            }
            CLOSE if data.first() == Some(&STDIN) => in_tx = None,
            _ => {}
        };
        for (channel, data) in early {
            handle(channel, data);
        }
        while let Some(Ok(f)) = input.frame().await {
            let Ok(data) = f.into_data() else { continue };
            deframer.push(&data);
            while let Some((channel, data)) = deframer.next_message() {
                handle(channel, data);
            }
        }
    });
    // The end: the exit code once the command is gone and its output is
    // read (programs it left behind may hold the output open; they get a
    // moment, not forever).
    tokio::spawn(async move {
        // Threads of their own: a session can last hours, and must not
        // hold one of the runtime's blocking threads meanwhile.
        let (code_tx, code_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = code_tx.send(session.wait().ok());
        });
        let code = code_rx.await.ok().flatten();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            for p in pumps {
                let _ = p.join();
            }
            let _ = drained_tx.send(());
        });
        let _ = tokio::time::timeout(Duration::from_secs(2), drained_rx).await;
        let status = match code {
            Some(c) => rc::exit_status(c),
            None => rc::failure("the pod's shim went away before the command ended"),
        };
        let _ = tx
            .send(Bytes::from(frame(ERROR, status.to_string().as_bytes())))
            .await;
    });
}
