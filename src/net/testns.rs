//! Throw-away network namespaces for tests and benches.
//!
//! Everything the proxy tests program into nftables must happen inside a
//! namespace created here, never in the machine's root namespace. A [`NetNs`]
//! is removed when dropped, also when the test using it panics. Not used by
//! orch itself.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Create `orch-pxt-<tag>-<pid>`; a leftover of that name from a crashed
    /// run is removed first.
    ///
    /// # Errors
    /// `ip netns add` failed (not root, or no `ip`).
    pub fn create(tag: &str) -> Result<Self, String> {
        let name = format!("orch-pxt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.sh(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run `f` on a thread that has entered this namespace; processes it
    /// spawns (such as `nft`) and sockets it opens live in the namespace too.
    ///
    /// # Panics
    /// If the namespace cannot be entered, or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("cannot enter {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Run a command inside the namespace (`nsenter --net=…`), returning its
    /// stdout.
    ///
    /// # Errors
    /// The command failed; the message carries its stderr.
    pub fn sh(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(args))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Is `nft` installed? Root-only proxy tests print why they skip otherwise.
#[must_use]
pub fn have_nft() -> bool {
    Command::new("nft").arg("--version").output().is_ok()
}
