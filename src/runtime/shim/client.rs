//! The agent's side of a shim: bind the socket a shim is started on, send
//! it requests, and hold the streams of exec and attach.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use super::protocol::{ExecExit, Request, Response};
use super::{Error, errno, io_err};

/// A streaming exec, from the caller's side.
pub struct ExecSession {
    /// With a tty: the terminal's master. Otherwise stdout, stderr and,
    /// when asked for, stdin.
    pub fds: Vec<OwnedFd>,
    conn: UnixStream,
}

impl ExecSession {
    /// Wait up to `timeout` for the command to end: its exit code, or
    /// `None` when it is still running (drop the session to end it, when
    /// it was started with `kill_on_hangup`).
    ///
    /// # Errors
    /// The shim went away before saying.
    pub fn wait_for(&self, timeout: Duration) -> Result<Option<i32>, Error> {
        self.conn
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io_err("waiting for the exec"))?;
        let mut line = Vec::new();
        match BufReader::new(&self.conn).read_until(b'\n', &mut line) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err("waiting for the exec")(e)),
            Ok(_) => serde_json::from_slice::<ExecExit>(&line)
                .map(|e| Some(e.exit_code))
                .map_err(|_| Error::Shim("the shim ended before the command did".into())),
        }
    }

    /// Wait for the command to end; its exit code.
    ///
    /// # Errors
    /// The shim went away before saying.
    pub fn wait(self) -> Result<i32, Error> {
        let mut line = Vec::new();
        BufReader::new(&self.conn)
            .read_until(b'\n', &mut line)
            .map_err(io_err("waiting for the exec"))?;
        serde_json::from_slice::<ExecExit>(&line)
            .map(|e| e.exit_code)
            .map_err(|_| Error::Shim("the shim ended before the command did".into()))
    }
}

/// Start a streaming exec (see [`Request::ExecStream`]).
///
/// # Errors
/// The shim is not there or refused (no such container, not running).
pub fn exec_stream(
    socket: &Path,
    id: &str,
    args: Vec<String>,
    tty: bool,
    stdin: bool,
    size: Option<(u16, u16)>,
    kill_on_hangup: bool,
) -> Result<ExecSession, Error> {
    let what = || format!("shim {}", socket.display());
    let stream = UnixStream::connect(socket).map_err(io_err(what()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err(what()))?;
    let request = Request::ExecStream {
        id: id.to_owned(),
        args,
        tty,
        stdin,
        size,
        kill_on_hangup,
    };
    let mut line = serde_json::to_vec(&request).expect("requests serialise");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err(what()))?;
    // The answer line and its descriptors come in one message.
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [io::IoSliceMut::new(&mut buf)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io_err(what())(errno(e)))?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let answer = &buf[..got.bytes];
    let response: Response = serde_json::from_slice(answer.trim_ascii_end())
        .map_err(|e| Error::Shim(format!("unreadable answer: {e}")))?;
    if !response.ok {
        return Err(Error::Shim(response.error.unwrap_or_default()));
    }
    stream.set_read_timeout(None).map_err(io_err(what()))?;
    Ok(ExecSession { fds, conn: stream })
}

/// Attach to container `id` (see [`Request::Attach`]): the connection,
/// past the answer, carrying frames both ways.
///
/// # Errors
/// The shim is not there or refused.
pub fn attach(socket: &Path, id: &str, stdin: bool) -> Result<UnixStream, Error> {
    let what = || format!("shim {}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(io_err(what()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err(what()))?;
    let mut line = serde_json::to_vec(&Request::Attach {
        id: id.to_owned(),
        stdin,
    })
    .expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err(what()))?;
    // The answer line, a byte at a time: output frames follow it.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).map_err(io_err(what()))? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => answer.push(byte[0]),
        }
    }
    let response: Response = serde_json::from_slice(&answer)
        .map_err(|e| Error::Shim(format!("unreadable answer: {e}")))?;
    if !response.ok {
        return Err(Error::Shim(response.error.unwrap_or_default()));
    }
    stream.set_read_timeout(None).map_err(io_err(what()))?;
    Ok(stream)
}

/// Bind a shim's socket at `<dir>/shim.sock` for the shim about to be
/// started, which gets it as stdin (`orch shim --listener-on-stdin`):
/// callers can connect at once — the kernel queues them until the shim,
/// its namespaces made, accepts — so nobody polls for the shim to come up.
///
/// # Errors
/// The socket cannot be bound.
pub fn listen(dir: &Path) -> io::Result<UnixListener> {
    let socket = dir.join("shim.sock");
    let _ = fs::remove_file(&socket);
    UnixListener::bind(&socket)
}

/// Send one request to the shim at `socket`.
///
/// # Errors
/// The shim is not there or failed the request.
pub fn call(socket: &Path, request: &Request) -> Result<Response, Error> {
    let what = || format!("shim {}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(io_err(what()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err(what()))?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err(what()))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(io_err(what()))?;
    let mut answer = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut answer)
        .map_err(io_err(what()))?;
    let response: Response = serde_json::from_slice(&answer)
        .map_err(|e| Error::Shim(format!("unreadable answer: {e}")))?;
    if response.ok {
        Ok(response)
    } else {
        Err(Error::Shim(response.error.unwrap_or_default()))
    }
}
