//! A pod's namespaces — network, IPC and UTS, shared by its containers
//! (no pause container): created by its shim (a single-threaded process,
//! so no fork helper is needed — ARCHITECTURE.md decision 3), each
//! bind-mounted at a path containers join; loopback up in the network one,
//! the pod's host name set in the UTS one. The agent adds the pod's veth,
//! address and route afterwards (`net::pod`).
//!
//! A PID namespace shared by the pod's containers (`shareProcessNamespace`)
//! needs a process to be its PID 1 all along — it dies with its PID 1 —
//! so the shim starts one ([`spawn_pid_holder`]): the pause container's
//! job, without a container.

use std::fs;
use std::io;
use std::path::Path;

use rustix::mount::UnmountFlags;
use rustix::net::{AddressFamily, SocketType, netlink};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Move the calling process into a new network namespace, pin it at
/// `path` and bring loopback up; or, when `path` already holds one (the
/// shim restarted), join that one.
///
/// Call only from a single-threaded process: `unshare` moves the calling
/// thread alone.
///
/// # Errors
/// Needs root (CAP_SYS_ADMIN); fails if the kernel refuses.
pub fn create_or_join(path: &Path) -> io::Result<()> {
    if let Ok(existing) = fs::File::open(path)
        && rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&existing),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .is_ok()
    {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, b"")?;
    // SAFETY: NEWNET only changes the calling thread's network namespace;
    // the shim is single-threaded, so no other thread sees a changed view
    // (the hazard `unshare_unsafe` warns about is FILES, not used here).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(errno)?;
    rustix::mount::mount_bind("/proc/self/ns/net", path).map_err(errno)?;
    loopback_up()
}

/// The namespaces a pod shares, each pinned at a path.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces<'a> {
    pub net: Option<&'a Path>,
    pub ipc: Option<&'a Path>,
    /// The UTS namespace's pin and the host name to set in it.
    pub uts: Option<(&'a Path, &'a str)>,
}

/// Move the calling process into new network/IPC/UTS namespaces (those
/// asked for) and pin each at its path — or join them when they are
/// pinned already (the shim restarted).
///
/// Call only from a single-threaded process.
///
/// # Errors
/// Needs root; fails if the kernel refuses.
pub fn create_or_join_pod(ns: &PodNamespaces<'_>) -> io::Result<()> {
    use rustix::thread::{LinkNameSpaceType, UnshareFlags};
    let wanted: Vec<(&Path, LinkNameSpaceType, UnshareFlags, &str)> = [
        ns.net
            .map(|p| (p, LinkNameSpaceType::Network, UnshareFlags::NEWNET, "net")),
        ns.ipc.map(|p| {
            (
                p,
                LinkNameSpaceType::InterProcessCommunication,
                UnshareFlags::NEWIPC,
                "ipc",
            )
        }),
        ns.uts.map(|(p, _)| {
            (
                p,
                LinkNameSpaceType::HostNameAndNISDomainName,
                UnshareFlags::NEWUTS,
                "uts",
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // Pinned already: join them all.
    let pinned: Vec<fs::File> = wanted
        .iter()
        .filter_map(|(p, ..)| fs::File::open(p).ok())
        .collect();
    if pinned.len() == wanted.len() {
        let joined = wanted.iter().zip(&pinned).all(|((_, kind, ..), f)| {
            rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(f), Some(*kind))
                .is_ok()
        });
        if joined {
            return Ok(());
        }
    }
    let mut flags = UnshareFlags::empty();
    for (path, _, flag, _) in &wanted {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, b"")?;
        flags |= *flag;
    }
    // SAFETY: NEWNET/NEWIPC/NEWUTS only change the calling thread's
    // namespaces; the shim is single-threaded (FILES, the flag
    // `unshare_unsafe` warns about, is not used).
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(errno)?;
    for (path, _, _, name) in &wanted {
        rustix::mount::mount_bind(format!("/proc/self/ns/{name}").as_str(), *path)
            .map_err(errno)?;
    }
    if let Some((_, hostname)) = ns.uts {
        rustix::system::sethostname(hostname.as_bytes()).map_err(errno)?;
    }
    if ns.net.is_some() {
        loopback_up()?;
    }
    Ok(())
}

/// Start the PID 1 of a pod's shared PID namespace and pin the namespace
/// at `path` (in the caller's mount namespace). The process reaps whatever
/// the pod's processes leave orphaned and is killed when the caller dies.
///
/// Call only from a single-threaded process.
///
/// # Errors
/// The clone or the pin failed.
pub fn spawn_pid_holder(path: &Path) -> io::Result<rustix::process::Pid> {
    // A pin left by an earlier shim names a namespace whose PID 1 is gone.
    remove(path)?;
    // The holder sees the caller die as the end of this pipe.
    let (alive_r, alive_w) = rustix::pipe::pipe().map_err(errno)?;
    // SAFETY: clone without a new stack is fork (the child gets a copy of
    // this single-threaded process); the child runs only async-signal-safe
    // calls in `hold` and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(libc::CLONE_NEWPID | libc::SIGCHLD),
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: in the child, see above.
        unsafe { hold(alive_r.as_raw_fd()) }
    }
    drop(alive_r);
    // The write end stays open (unused) for the caller's life.
    std::mem::forget(alive_w);
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?)
        .ok_or_else(|| io::Error::other("clone returned pid 0 in the parent"))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, b"")?;
    rustix::mount::mount_bind(
        format!("/proc/{}/ns/pid", pid.as_raw_nonzero()).as_str(),
        path,
    )
    .map_err(errno)?;
    Ok(pid)
}

/// The PID 1 of a pod's shared PID namespace: reap children until the
/// process that started it dies.
///
/// # Safety
/// Only in a child just forked from a single-threaded process.
unsafe fn hold(alive: i32) -> ! {
    // SAFETY: plain system calls on this process's own state.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // Keep nothing of the shim's open but the pipe.
        if alive > 0 {
            libc::syscall(libc::SYS_close_range, 0, alive - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, alive + 1, u32::MAX, 0);
        // The shim died before PDEATHSIG was set: the pipe has no writer.
        let mut fd = libc::pollfd {
            fd: alive,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&raw mut fd, 1, 0) > 0 {
            libc::_exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"pod-pid1".as_ptr(), 0, 0, 0);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigwaitinfo(&raw const set, std::ptr::null_mut());
        }
    }
}

/// Unpin a pod's namespace (it goes when nothing uses it any more).
///
/// # Errors
/// The unmount or removal failed for a reason other than "not there".
pub fn remove(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(errno(e)),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `ip link set lo up`, in this thread's namespace, over rtnetlink:
/// RTM_NEWLINK for ifindex 1 (loopback is always 1 in a new namespace)
/// with IFF_UP, and wait for the acknowledgement.
fn loopback_up() -> io::Result<()> {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const IFF_UP: u32 = 1;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[0, 0]); // ifi_family AF_UNSPEC, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&1i32.to_ne_bytes()); // ifi_index: lo
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    let sock = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None) // None is NETLINK_ROUTE
        .map_err(errno)?;
    rustix::net::sendto(
        &sock,
        &msg,
        rustix::net::SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )
    .map_err(errno)?;
    let mut buf = [0u8; 256];
    let (n, _) =
        rustix::net::recv(&sock, &mut buf[..], rustix::net::RecvFlags::empty()).map_err(errno)?;
    // NLMSG_ERROR (2) carries an errno; 0 is the acknowledgement.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}
