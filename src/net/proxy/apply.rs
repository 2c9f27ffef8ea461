//! Applying: sending a planned transaction to the kernel (one nf_tables
//! netlink batch, or `nft -j -f -` for what that encoder does not cover),
//! and the [`Proxy`] that renders, plans and applies on every sync.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nftables::schema::{NfListObject, Table};
use nftables::types::NfFamily;

use super::plan::{Cmd, Side, Stale, plan_changes, plan_full};
use super::render::{Part, Rendered};
use super::{Error, HostPort, ProxyConfig, SyncStats, TABLE};

/// Stale chains are flushed at once but deleted only this long after: kernels
/// before 6.2 may still see a just-removed map element referencing them.
pub(super) const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// The size of the netlink batch [`Proxy::sync`] sends for `cmds`, or
/// `None` when they hold something it leaves to `nft` (for benches).
#[must_use]
pub fn netlink_batch_len(cmds: &[Cmd]) -> Option<usize> {
    super::nfnl::encode(cmds, 1).ok().map(|b| b.len())
}

/// The nft JSON document of one transaction (what `nft -j -f -` reads).
///
/// # Errors
/// Serialisation failed (a bug).
pub fn encode(cmds: &[Cmd]) -> Result<Vec<u8>, Error> {
    let mut payload = Vec::with_capacity(cmds.len() * 200);
    payload.extend_from_slice(b"{\"nftables\":[");
    for (i, cmd) in cmds.iter().enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        cmd.to_json(&mut payload)?;
    }
    payload.extend_from_slice(b"]}");
    Ok(payload)
}

/// Run `cmds` as one `nft -j -f -` transaction.
pub(super) fn run_nft(kind: &'static str, cmds: &[Cmd]) -> Result<(), Error> {
    let payload = encode(cmds)?;
    exec_nft(&payload).map_err(|stderr| {
        let mut lines: Vec<String> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .map(str::to_owned)
            .collect();
        // JSON errors name the command by index; say which one that was.
        if let Some(i) = stderr
            .split("at index ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < cmds.len())
        {
            let mut what = cmds[i].to_string();
            what.truncate(200);
            lines.push(format!("(command {i}: {what})"));
        }
        Error::Rejected {
            kind,
            commands: cmds.len(),
            stderr: lines.join("; "),
        }
    })?
}

/// Apply one transaction: straight to the kernel over netlink (see
/// [`nfnl`]), or through `nft` when it holds something only nft encodes
/// or the netlink socket cannot take it. Says whether it went over netlink.
pub(super) fn apply(kind: &'static str, cmds: &[Cmd]) -> Result<bool, Error> {
    let batch = match super::nfnl::encode(cmds, 1) {
        Ok(batch) => batch,
        Err(super::nfnl::Unsupported(why)) => {
            tracing::debug!(%why, "service proxy transaction goes through nft");
            return run_nft(kind, cmds).map(|()| false);
        }
    };
    match super::nfnl::send(&batch) {
        Ok(()) => Ok(true),
        Err(super::nfnl::SendError::Socket(error)) => {
            tracing::debug!(%error, bytes = batch.len(), "netlink cannot take the transaction; it goes through nft");
            run_nft(kind, cmds).map(|()| false)
        }
        Err(super::nfnl::SendError::Refused { index, error }) => Err(Error::Refused {
            kind,
            commands: cmds.len(),
            at: match index {
                Some(i) => {
                    let mut what = cmds[i].to_string();
                    what.truncate(200);
                    format!("at command {i} ({what})")
                }
                None => "at commit".to_owned(),
            },
            source: error,
        }),
    }
}

/// Feed `payload` to `nft -j -f -`. The outer error is nft's stderr.
///
/// Not `nftables::helper::apply_ruleset`: it lets nft's stderr go to ours,
/// and our error message needs it.
fn exec_nft(payload: &[u8]) -> Result<Result<(), Error>, String> {
    let mut child = match Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Ok(Err(Error::Spawn(e))),
    };
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // nft reads all of its input before it reports, so this cannot deadlock.
    let written = stdin.write_all(payload);
    drop(stdin);
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Ok(Err(Error::Spawn(e))),
    };
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(written.map_err(Error::Spawn))
}

/// One planned transaction.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) cmds: Vec<Cmd>,
    /// It replaces the whole table.
    pub(super) full: bool,
    /// The stale chains and sets once it is in.
    pub(super) stale: Stale,
    /// How many Services were rendered anew for it.
    pub(super) rendered: usize,
}

/// The service proxy of one node: remembers what it last applied so each
/// sync sends only the difference.
///
/// ```no_run
/// # use orch::net::proxy::{Proxy, ProxyConfig};
/// let mut proxy = Proxy::new(ProxyConfig {
///     node_name: "node-1".into(),
///     node_ips: vec!["192.168.1.10".parse().unwrap()],
///     cluster_cidr: ("10.42.0.0".parse().unwrap(), 16),
///     dns: Some(("10.43.0.10".parse().unwrap(), "10.42.0.1:53".parse().unwrap())),
/// });
/// // On every change of the Service/EndpointSlice cache, from a blocking thread:
/// let stats = proxy.sync(&[], &[], &[]).expect("nft works");
/// assert!(stats.full);
/// ```
pub struct Proxy {
    cfg: ProxyConfig,
    /// The table as last rendered, by owner.
    pub(super) rendered: Rendered,
    /// The kernel holds `rendered`; false at start and after an error,
    /// which makes the next sync a full resync.
    applied: bool,
    stale: Stale,
    pub(super) stale_delay: Duration,
}

impl Proxy {
    /// A proxy that has applied nothing yet: its first sync is a full resync.
    #[must_use]
    pub fn new(cfg: ProxyConfig) -> Self {
        Self {
            cfg,
            rendered: Rendered::default(),
            applied: false,
            stale: Stale::default(),
            stale_delay: STALE_CHAIN_DELAY,
        }
    }

    /// Bring table `ip orch` to the state `services`, `slices` and
    /// `host_ports` ask for, in one atomic nft transaction: a full resync
    /// (delete and recreate the table) the first time and after any error,
    /// otherwise only what changed. Only Services whose object or
    /// EndpointSlices changed are rendered and compared again, so an update
    /// costs what changed plus a digest per Service. Blocks while `nft` runs.
    ///
    /// # Errors
    /// `nft` is missing or rejected the transaction; the kernel keeps its
    /// previous rules and the next sync is a full resync.
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        host_ports: &[HostPort],
    ) -> Result<SyncStats, Error> {
        let start = Instant::now();
        let plan = self.plan(services, slices, host_ports, start);
        let kind = if plan.full { "full resync" } else { "update" };
        let netlink = !plan.cmds.is_empty() && apply(kind, &plan.cmds)?;
        tracing::debug!(
            full = plan.full,
            commands = plan.cmds.len(),
            rendered = plan.rendered,
            "service proxy synced"
        );
        let stats = SyncStats {
            full: plan.full,
            commands: plan.cmds.len(),
            rendered: plan.rendered,
            netlink,
            elapsed: start.elapsed(),
        };
        self.applied(plan);
        Ok(stats)
    }

    /// Render what changed and plan the transaction that applies it. Until
    /// [`Self::applied`] is told it went in, the proxy assumes the kernel
    /// holds something else (the next plan is a full resync).
    pub(super) fn plan<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        host_ports: &[HostPort],
        now: Instant,
    ) -> Plan {
        fn side(p: Option<&Part>) -> Option<Side<'_>> {
            p.map(|p| (&p.chains, &p.sets))
        }
        let delta = self
            .rendered
            .update(&self.cfg, services, slices, host_ports);
        let full = !self.applied;
        self.applied = false;
        let mut stale = self.stale.clone();
        let cmds = if full {
            stale = Stale::default();
            plan_full(&self.rendered.ruleset(&self.cfg))
        } else {
            let changes: Vec<_> = delta
                .changes
                .iter()
                .map(|c| (side(c.old.as_deref()), side(c.new.as_deref())))
                .collect();
            plan_changes(&changes, &delta.moves, &mut stale, now, self.stale_delay)
        };
        Plan {
            cmds,
            full,
            stale,
            rendered: delta.rendered,
        }
    }

    /// `plan`'s transaction went in.
    pub(super) fn applied(&mut self, plan: Plan) {
        self.applied = true;
        self.stale = plan.stale;
    }

    /// The node-level settings this proxy was made with.
    #[must_use]
    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }
}

/// Delete orch's tables (`ip`, `ip6` and `inet` `orch`) if present, in one
/// transaction; no other table is touched. For `orch agent --cleanup` and
/// uninstall.
///
/// # Errors
/// `nft` is missing or failed.
pub fn cleanup() -> Result<(), Error> {
    let mut batch = nftables::batch::Batch::new();
    for family in [NfFamily::IP, NfFamily::IP6, NfFamily::INet] {
        let table = || {
            NfListObject::Table(Table {
                family,
                name: TABLE.into(),
                handle: None,
            })
        };
        // `add` then `delete`: an absent table is not an error.
        batch.add(table());
        batch.delete(table());
    }
    let payload = serde_json::to_vec(&batch.to_nftables())?;
    exec_nft(&payload).map_err(|stderr| Error::Rejected {
        kind: "cleanup",
        commands: 6,
        stderr: stderr.trim().replace('\n', "; "),
    })?
}
