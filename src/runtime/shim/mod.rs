//! `orch shim`: one single-threaded process per pod, the only caller of
//! libcontainer (which clones, and must not do so from tokio's threads —
//! ARCHITECTURE.md decision 3).
//!
//! The shim owns its containers: it creates them (stdin `/dev/null`,
//! stdout and stderr pipes it reads into CRI-format log files), starts,
//! signals and deletes them, reaps them through pidfds and records each
//! exit code and finish time under `<dir>/exits/`, so an agent that
//! restarts (or dies) loses nothing: the shim and its containers keep
//! running, and the new agent asks the shim for the state.
//!
//! Protocol: the agent connects to `<dir>/shim.sock`, writes one JSON
//! [`Request`] and a newline, and reads one JSON [`Response`]. The event
//! loop is `poll(2)` over the socket, the log pipes and the pidfds — no
//! threads, no signals.
//!
//! The module is split by side: `protocol` holds the messages both sides
//! exchange, `client` what the agent (and tests) use to talk to a shim,
//! `server` the shim process itself: its state and its loop. Callers use
//! the names re-exported here.

mod client;
mod protocol;
mod server;

use std::io;
use std::os::fd::AsFd;

pub use client::{ExecSession, attach, call, exec_stream, listen};
pub use protocol::{ContainerState, ExecExit, Request, Response};
pub use server::run;

/// Talking to a shim (or starting one) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the shim answered: {0}")]
    Shim(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Set a terminal's size (from either side of it); best effort.
pub fn set_terminal_size(fd: impl AsFd, width: u16, height: u16) {
    let _ = rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    );
}
