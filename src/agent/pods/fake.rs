//! An in-memory [`PodRuntime`] for the pod worker's unit tests: sandboxes
//! and container instances in a map, every call recorded in order, and
//! knobs for how containers behave (ignore SIGTERM, an exec's outcome and
//! duration). No root, no processes, no network: tests run in
//! milliseconds, with `tokio::time::pause` where time matters.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use serde_json::Value;

use super::api::PodApi;
use super::runtime::{CreateContainer, Error, PodRuntime, SandboxSpec};
use crate::runtime::shim::{self, ContainerState};

/// One call the worker made, in the order it made them.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Call {
    StartSandbox(String),
    Create(String),
    Kill(String, i32),
    Remove(String),
    Exec(String, Vec<String>),
    RemoveSandbox(String),
    /// A tmpfs at this path (relative to the pod's directory).
    MountTmpfs(String),
    SetPodLimits(String),
    /// The bundle of this instance.
    RemoveBundle(String),
    ReleasePod(String),
}

#[derive(Default)]
struct Inner {
    /// Container instances by pod UID.
    sandboxes: HashMap<String, Vec<ContainerState>>,
    calls: Vec<Call>,
    /// Instances that go on running after SIGTERM (only SIGKILL ends them).
    ignore_sigterm: HashSet<String>,
    /// What an exec in an instance returns (`Ok` when not set).
    exec_results: HashMap<String, Result<(), String>>,
    /// How long an exec takes.
    exec_time: Duration,
    /// Pods get addresses of their own.
    network: bool,
}

/// The fake runtime. Clones share their state.
#[derive(Clone, Default)]
pub(super) struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
}

impl FakeRuntime {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake runtime lock"))
    }

    /// The calls made so far.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.with(|i| i.calls.clone())
    }

    /// Instance `id` of pod `uid` exits with `code`.
    pub(super) fn exit(&self, uid: &str, id: &str, code: i32) {
        self.with(|i| stop(i, uid, id, code));
    }

    /// Instance `id` goes on running after SIGTERM.
    pub(super) fn ignore_sigterm(&self, id: &str) {
        self.with(|i| i.ignore_sigterm.insert(id.to_owned()));
    }

    /// Execs in instance `id` return `result`, after `time`.
    pub(super) fn exec_returns(&self, id: &str, result: Result<(), String>, time: Duration) {
        self.with(|i| {
            i.exec_results.insert(id.to_owned(), result);
            i.exec_time = time;
        });
    }

    /// Pods get addresses of their own (10.42.0.7).
    pub(super) fn with_network(self) -> Self {
        self.with(|i| i.network = true);
        self
    }

    /// The pod's instances (empty without a sandbox).
    pub(super) fn instances(&self, uid: &str) -> Vec<ContainerState> {
        self.with(|i| i.sandboxes.get(uid).cloned().unwrap_or_default())
    }
}

/// End instance `id` of pod `uid` with `code`, if it runs.
fn stop(inner: &mut Inner, uid: &str, id: &str, code: i32) {
    let instance = inner
        .sandboxes
        .get_mut(uid)
        .and_then(|cs| cs.iter_mut().find(|c| c.id == id && c.status == "running"));
    if let Some(c) = instance {
        c.status = "exited".into();
        c.exit_code = Some(code);
        c.finished_at = Some("2026-12-07T00:00:01Z".into());
    }
}

fn no_sandbox(uid: &str) -> Error {
    Error::Shim(shim::Error::Shim(format!("no sandbox for pod {uid}")))
}

impl PodRuntime for FakeRuntime {
    fn start_sandbox(
        &self,
        uid: &str,
        _spec: &SandboxSpec,
    ) -> BoxFuture<'static, Result<Vec<ContainerState>, Error>> {
        let containers = self.with(|i| {
            i.calls.push(Call::StartSandbox(uid.to_owned()));
            i.sandboxes.entry(uid.to_owned()).or_default().clone()
        });
        Box::pin(async move { Ok(containers) })
    }

    fn containers(&self, uid: &str) -> BoxFuture<'static, Result<Vec<ContainerState>, Error>> {
        let result = self.with(|i| i.sandboxes.get(uid).cloned().ok_or_else(|| no_sandbox(uid)));
        Box::pin(async move { result })
    }

    fn watch_exits(&self, _uid: &str, _events: Arc<tokio::sync::Notify>) -> BoxFuture<'static, ()> {
        Box::pin(futures::future::pending())
    }

    fn create_container(
        &self,
        uid: &str,
        container: CreateContainer,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let result = self.with(|i| {
            i.calls.push(Call::Create(container.id.clone()));
            let cs = i.sandboxes.get_mut(uid).ok_or_else(|| no_sandbox(uid))?;
            cs.push(ContainerState {
                id: container.id,
                pid: 1,
                status: "running".into(),
                started_at: Some("2026-12-07T00:00:00Z".into()),
                ..ContainerState::default()
            });
            Ok(())
        });
        Box::pin(async move { result })
    }

    fn kill(&self, uid: &str, id: &str, signal: i32) -> BoxFuture<'static, Result<(), Error>> {
        self.with(|i| {
            i.calls.push(Call::Kill(id.to_owned(), signal));
            if signal == 9 || !i.ignore_sigterm.contains(id) {
                stop(i, uid, id, 128 + signal);
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, uid: &str, id: &str) -> BoxFuture<'static, Result<(), Error>> {
        self.with(|i| {
            i.calls.push(Call::Remove(id.to_owned()));
            if let Some(cs) = i.sandboxes.get_mut(uid) {
                cs.retain(|c| c.id != id);
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn exec(
        &self,
        _uid: &str,
        id: &str,
        args: Vec<String>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<(), String>> {
        let (result, time) = self.with(|i| {
            i.calls.push(Call::Exec(id.to_owned(), args));
            let result = i.exec_results.get(id).cloned().unwrap_or(Ok(()));
            (result, i.exec_time)
        });
        Box::pin(async move {
            tokio::time::sleep(time).await;
            result
        })
    }

    fn allocate_address(&self, _uid: &str) -> BoxFuture<'static, Result<Ipv4Addr, Error>> {
        Box::pin(async { Ok(Ipv4Addr::new(10, 42, 0, 7)) })
    }

    fn attach_network(&self, _uid: &str) -> BoxFuture<'static, Result<Ipv4Addr, Error>> {
        Box::pin(async { Ok(Ipv4Addr::new(10, 42, 0, 7)) })
    }

    fn remove_sandbox(&self, uid: &str) -> BoxFuture<'static, ()> {
        self.with(|i| {
            i.calls.push(Call::RemoveSandbox(uid.to_owned()));
            i.sandboxes.remove(uid);
        });
        Box::pin(async {})
    }

    fn has_network(&self) -> bool {
        self.with(|i| i.network)
    }

    fn reconcile_network(
        &self,
        _live: HashSet<String>,
    ) -> BoxFuture<'static, Result<usize, Error>> {
        Box::pin(async { Ok(0) })
    }

    fn mount_tmpfs(
        &self,
        dir: PathBuf,
        _size: Option<u64>,
        _mode: u32,
    ) -> BoxFuture<'static, Result<(), Error>> {
        // The path below the pod's directory (`shm`, `volumes/<name>`).
        let tail: Vec<String> = dir
            .iter()
            .rev()
            .take_while(|c| *c != "pods")
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let tail: Vec<String> = tail.into_iter().rev().skip(1).collect();
        self.with(|i| i.calls.push(Call::MountTmpfs(tail.join("/"))));
        // As a mount would, the directory is there afterwards.
        let made =
            std::fs::create_dir_all(&dir).map_err(|source| Error::Mount { path: dir, source });
        Box::pin(async move { made })
    }

    fn set_pod_limits(
        &self,
        uid: &str,
        _limits: crate::runtime::spec::Resources,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.with(|i| i.calls.push(Call::SetPodLimits(uid.to_owned())));
        Box::pin(async { Ok(()) })
    }

    fn remove_bundle(&self, bundle: PathBuf) -> BoxFuture<'static, ()> {
        let id = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.with(|i| i.calls.push(Call::RemoveBundle(id)));
        // Nothing is mounted in a fake bundle: the directory just goes.
        let _ = std::fs::remove_dir_all(&bundle);
        Box::pin(async {})
    }

    fn release_pod(&self, uid: &str) -> BoxFuture<'static, ()> {
        self.with(|i| i.calls.push(Call::ReleasePod(uid.to_owned())));
        Box::pin(async {})
    }
}

/// An in-memory [`PodApi`]: what the worker posted, in order. Clones share
/// their state.
#[derive(Clone, Default)]
pub(super) struct FakeApi {
    inner: Arc<Mutex<Posted>>,
}

/// What the worker wrote.
#[derive(Default)]
pub(super) struct Posted {
    pub statuses: Vec<Value>,
    /// Events: type, reason, message.
    pub events: Vec<(String, String, String)>,
    /// Pods deleted for good, by UID.
    pub deleted: Vec<String>,
}

impl FakeApi {
    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Posted) -> T) -> T {
        f(&mut self.inner.lock().expect("fake api lock"))
    }

    /// The events recorded so far with `reason`: their messages.
    pub(super) fn events(&self, reason: &str) -> Vec<String> {
        self.with(|p| {
            p.events
                .iter()
                .filter(|(_, r, _)| r == reason)
                .map(|(_, _, m)| m.clone())
                .collect()
        })
    }
}

impl PodApi for FakeApi {
    fn post_status(
        &self,
        _ns: &str,
        _name: &str,
        status: Value,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.with(|p| p.statuses.push(status));
        Box::pin(async { Ok(()) })
    }

    fn delete_pod(
        &self,
        _ns: &str,
        _name: &str,
        uid: &str,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.with(|p| p.deleted.push(uid.to_owned()));
        Box::pin(async { Ok(()) })
    }

    fn record_event(&self, _ns: &str, event: Value) -> BoxFuture<'static, ()> {
        let text = |f: &str| event[f].as_str().unwrap_or_default().to_owned();
        self.with(|p| {
            p.events
                .push((text("type"), text("reason"), text("message")))
        });
        Box::pin(async {})
    }
}
