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

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::pods::Kubelet;
use super::response::{Body, streamed, text};
use crate::api::remotecommand::{self as rc, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, frame};
use crate::runtime::shim;

/// What an exec or attach request asks for.
struct Asked {
    /// The pod's shim socket.
    socket: std::path::PathBuf,
    command: Vec<String>,
    stdin: bool,
    tty: bool,
}

impl Asked {
    fn parse(k: &Kubelet, req: &Request<Incoming>) -> Self {
        let query = crate::api::query::parse_query(req.uri().query());
        let first = |key: &str| crate::api::query::first(&query, key).unwrap_or_default();
        let flag = |key: &str| matches!(first(key), "true" | "1");
        Self {
            socket: k.run_dir.join("pods").join(first("uid")).join("shim.sock"),
            command: query.get("command").cloned().unwrap_or_default(),
            stdin: flag("stdin"),
            tty: flag("tty"),
        }
    }
}

/// The id of `container`'s newest instance in the shim, if it runs.
fn running_instance(socket: &std::path::Path, container: &str) -> Result<String, shim::Error> {
    let state = shim::call(socket, &shim::Request::State)?;
    super::pods::latest(&state.containers)
        .remove(container)
        .filter(|(_, s)| s.status == "running")
        .map(|(_, s)| s.id)
        .ok_or_else(|| shim::Error::Shim(format!("container {container} is not running")))
}

/// Attach to the container's stdio through its shim: the shim already
/// speaks the framing, so bytes are copied as they are.
pub async fn attach(
    k: &Arc<Kubelet>,
    req: Request<Incoming>,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let asked = Asked::parse(k, &req);
    let name = container.to_owned();
    let attached = tokio::task::spawn_blocking(move || {
        let id = running_instance(&asked.socket, &name)?;
        shim::attach(&asked.socket, &id, asked.stdin)
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
    streamed(rx, "application/octet-stream")
}

/// Run the exec the request asks for and stream it.
pub async fn serve(
    k: &Arc<Kubelet>,
    req: Request<Incoming>,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let asked = Asked::parse(k, &req);
    if asked.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container".into(),
        );
    }
    let (socket, name) = (asked.socket.clone(), container.to_owned());
    let found = tokio::task::spawn_blocking(move || running_instance(&socket, &name))
        .await
        .expect("shim state panicked");
    let id = match found {
        Ok(id) => id,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unable to run a command in {container} of pod {pod}: {e}"),
            );
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    tokio::spawn(session(asked, id, req.into_body(), tx));
    streamed(rx, "application/octet-stream")
}

/// Start the command and stream it. With a terminal, the client's first
/// size comes first (kubectl sends it at once), so the command starts
/// with the right size.
async fn session(
    asked: Asked,
    id: String,
    mut input: Incoming,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let Asked {
        socket,
        command: args,
        stdin,
        tty,
    } = asked;
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
        shim::exec_stream(&socket, &id, args, tty, stdin, size, false)
    })
    .await
    .expect("exec start panicked");
    match started {
        Ok(session) => stream(session, tty, deframer, early, input, tx),
        Err(e) => {
            let status = rc::failure(&format!("cannot run the command: {e}"));
            let _ = tx.send(Bytes::from(frame(ERROR, &status))).await;
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
                    shim::set_terminal_size(term, w, h);
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
        let _ = tx.send(Bytes::from(frame(ERROR, &status))).await;
    });
}
