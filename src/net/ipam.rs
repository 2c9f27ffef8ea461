//! Pod addresses from the node's podCIDR, kept on disk so an agent that
//! restarts (or crashed) hands out no address twice: one file per address
//! in use, `<dir>/<cidr>/<ip>`, created exclusively and holding the pod's
//! UID. Addresses are handed out round-robin from after the last one, so
//! an address just freed is not reused at once (stale conntrack entries
//! and caches of the old pod's address die out first). The files are read
//! once when the allocator opens; after that it keeps the pod → address
//! index in memory (the agent is the directory's only writer), so handing
//! out an address costs the same with one pod as with two hundred.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Ipam {
    dir: PathBuf,
    network: u32,
    prefix: u8,
    /// Each pod's address, as the files say (held while they change).
    by_pod: Mutex<HashMap<String, Ipv4Addr>>,
}

/// `10.42.3.0/24` → (10.42.3.0, 24), or a one-line reason.
///
/// # Errors
/// Not an IPv4 CIDR with a prefix of 8–30 bits.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like 10.42.0.0/24"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR like 10.42.0.0/24"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (8..=30).contains(l))
        .ok_or_else(|| format!("{s:?}: the prefix length must be 8 to 30"))?;
    let mask = u32::MAX << (32 - len);
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

impl Ipam {
    /// The allocator for `cidr`, keeping its files under `root`.
    ///
    /// # Errors
    /// The directory cannot be made.
    pub fn open(root: &Path, cidr: (Ipv4Addr, u8)) -> io::Result<Self> {
        let dir = root.join(format!("{}-{}", cidr.0, cidr.1));
        fs::create_dir_all(&dir)?;
        let mut ipam = Ipam {
            dir,
            network: u32::from(cidr.0),
            prefix: cidr.1,
            by_pod: Mutex::default(),
        };
        let index = ipam
            .assigned()?
            .into_iter()
            .map(|(ip, uid)| (uid, ip))
            .collect();
        *ipam.by_pod.get_mut().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(ipam)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's address: the first of the range.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    /// Every address in use and its pod's UID, read from the files.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn assigned(&self) -> io::Result<Vec<(Ipv4Addr, String)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let owner = fs::read_to_string(e.path()).unwrap_or_default();
            out.push((ip, owner.trim().to_owned()));
        }
        out.sort();
        Ok(out)
    }

    /// The pod's address: the one it has, or the next free one.
    ///
    /// # Errors
    /// The range is full (the message says so) or the disk failed.
    pub fn allocate(&self, uid: &str) -> io::Result<Ipv4Addr> {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = by_pod.get(uid) {
            return Ok(*ip);
        }
        let last = fs::read_to_string(self.dir.join("last"))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map_or(self.network + 1, u32::from);
        let (first, end) = (self.network + 2, self.network + self.size() - 1); // not .0, .1 (gateway) or broadcast
        let count = end - first;
        let start = if (first..end).contains(&last) {
            last + 1 - first
        } else {
            0
        };
        for i in 0..count {
            let ip = Ipv4Addr::from(first + (start + i) % count);
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(uid.as_bytes())?;
                    f.sync_all()?;
                    fs::write(self.dir.join("last"), ip.to_string())?;
                    by_pod.insert(uid.to_owned(), ip);
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "no pod address left in {}/{} ({} in use): delete pods or give the node a larger podCIDR",
            Ipv4Addr::from(self.network),
            self.prefix,
            by_pod.len()
        )))
    }

    /// Free the pod's address (none is fine).
    ///
    /// # Errors
    /// The disk failed.
    pub fn release(&self, uid: &str) -> io::Result<Option<Ipv4Addr>> {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ip) = by_pod.get(uid).copied() else {
            return Ok(None);
        };
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        by_pod.remove(uid);
        Ok(Some(ip))
    }

    /// Free every address whose pod is not in `live` (after a crash, or
    /// pods deleted while the agent was away); what was freed.
    ///
    /// # Errors
    /// The disk failed.
    pub fn reconcile(&self, live: &HashSet<String>) -> io::Result<Vec<(Ipv4Addr, String)>> {
        let mut by_pod = self.by_pod.lock().unwrap_or_else(|p| p.into_inner());
        let mut freed = Vec::new();
        for (ip, owner) in self.assigned()? {
            if !live.contains(&owner) {
                fs::remove_file(self.dir.join(ip.to_string()))?;
                freed.push((ip, owner));
            }
        }
        // The files are the truth: the index starts again from them.
        *by_pod = self
            .assigned()?
            .into_iter()
            .map(|(ip, uid)| (uid, ip))
            .collect();
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_persisted_and_reused_only_after_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cidr = parse_cidr("10.42.7.0/29").unwrap(); // .2–.6 usable
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 42, 7, 1));
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 7, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a, "same pod, same address");
        let b = ipam.allocate("b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 42, 7, 3));
        // A restarted agent sees the same assignments.
        let again = Ipam::open(dir.path(), cidr).unwrap();
        assert_eq!(again.allocate("b").unwrap(), b);
        assert_eq!(again.release("a").unwrap(), Some(a));
        // Round-robin: the freed .2 comes back only after .4–.6.
        let next: Vec<_> = ["c", "d", "e", "f"]
            .iter()
            .map(|u| again.allocate(u).unwrap().octets()[3])
            .collect();
        assert_eq!(next, [4, 5, 6, 2]);
        let full = again.allocate("g").unwrap_err().to_string();
        assert!(
            full.contains("no pod address left in 10.42.7.0/29"),
            "{full}"
        );
        // Reconcile frees what no live pod owns.
        let live: HashSet<String> = ["b", "d"].iter().map(|s| (*s).to_owned()).collect();
        let freed = again.reconcile(&live).unwrap();
        assert_eq!(freed.len(), 3);
        let left: Vec<String> = again.assigned().unwrap().into_iter().map(|x| x.1).collect();
        assert_eq!(left, ["b", "d"]);
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            parse_cidr("10.42.3.9/24").unwrap(),
            (Ipv4Addr::new(10, 42, 3, 0), 24)
        );
        assert!(parse_cidr("10.42.3.0").unwrap_err().contains("not a CIDR"));
        assert!(parse_cidr("10.42.3.0/31").unwrap_err().contains("8 to 30"));
        assert!(parse_cidr("fd00::/64").unwrap_err().contains("IPv4"));
    }
}
