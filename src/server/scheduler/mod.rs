//! The scheduler: binds pending pods (no `spec.nodeName`, the default
//! scheduler) to nodes.
//!
//! Node state (allocatable, requested, pods with their owners and host
//! ports) is kept incrementally from the pod and node informers, so one
//! scheduling decision costs O(nodes looked at), not O(cluster). Decisions
//! are taken one pod at a time (so accounting stays exact); a chosen node is
//! "assumed" at once and the binding write happens in the background.
//! Pods no node can take get PodScheduled=False/Unschedulable and a
//! `FailedScheduling` event with upstream's message, and are retried when
//! nodes or pods change.

#![forbid(unsafe_code)]

pub mod plugins;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::api::meta::{is_deleting, meta_str};
use crate::api::patch::PatchType;
use crate::api::placement::{NodeInfo, PodOnNode, PodView};
use crate::api::status::ApiError;
use crate::server::events::Recorder;
use crate::server::informer::{Informer, Queue, object_key, split_key};
use crate::server::reconcile::{Action, run_workers};
use crate::server::registry::{Registry, WriteOptions};
use plugins::{filter, score, unschedulable_message};

const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings written at once.
const BINDS_IN_FLIGHT: usize = 64;

/// What the scheduler works from: the registry it binds through, the
/// pod and node informers it keeps its node state from, and where it
/// records its events.
pub struct Context {
    pub registry: Arc<Registry>,
    pub pods: Arc<Informer>,
    pub nodes: Arc<Informer>,
    pub events: Arc<Recorder>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeInfo>,
    /// Node names, sorted: the order searches rotate through.
    names: Vec<String>,
    /// Which node each counted pod is on.
    pod_node: HashMap<String, String>,
    /// Pods that fit nowhere, waiting for the cluster to change.
    unschedulable: HashSet<String>,
    /// The last FailedScheduling message per pod (events only on change).
    last_message: HashMap<String, String>,
    /// Where the next search starts, so pods spread over equal nodes.
    next_start: usize,
}

fn is_pending(pod: &Value) -> bool {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let scheduler = pod
        .pointer("/spec/schedulerName")
        .and_then(Value::as_str)
        .unwrap_or(SCHEDULER_NAME);
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    node.is_empty()
        && scheduler == SCHEDULER_NAME
        && !is_deleting(pod)
        && phase != "Succeeded"
        && phase != "Failed"
}

fn counts_on_node(pod: &Value) -> Option<String> {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    (phase != "Succeeded" && phase != "Failed").then(|| node.to_owned())
}

impl State {
    fn insert_node(&mut self, name: String, info: NodeInfo) {
        if let Err(i) = self.names.binary_search(&name) {
            self.names.insert(i, name.clone());
        }
        self.nodes.insert(name, info);
    }

    fn remove_node(&mut self, name: &str) {
        if let Ok(i) = self.names.binary_search_by(|n| n.as_str().cmp(name)) {
            self.names.remove(i);
        }
        self.nodes.remove(name);
    }

    fn account(&mut self, key: &str, pod: Option<&Value>) {
        let now_on = pod.and_then(counts_on_node);
        if let Some(prev) = self.pod_node.get(key).cloned()
            && Some(&prev) != now_on.as_ref()
        {
            if let Some(n) = self.nodes.get_mut(&prev) {
                n.remove_pod(key);
            }
            self.pod_node.remove(key);
        }
        if let (Some(node), Some(pod)) = (now_on, pod) {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.add_pod(key, PodOnNode::of(pod));
            }
            self.pod_node.insert(key.to_owned(), node);
        }
    }

    fn requeue_unschedulable(&mut self, queue: &Queue) {
        for key in self.unschedulable.drain() {
            queue.add(key);
        }
    }
}

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut s = state.lock().expect("scheduler lock");
        // Through insert_node: it also keeps the sorted names the
        // scheduler walks (nodes stored before a restart must count).
        for node in ctx.nodes.list(None) {
            s.insert_node(
                meta_str(&node, "name").to_owned(),
                NodeInfo::from_node(&node),
            );
        }
        for pod in ctx.pods.list(None) {
            let key = object_key(&pod);
            s.account(&key, Some(&pod));
            if is_pending(&pod) {
                queue.add(key);
            }
        }
    }
    {
        let (queue, state, ctx2) = (queue.clone(), state.clone(), ctx.clone());
        let mut pods = ctx.pods.subscribe();
        let mut nodes = ctx.nodes.subscribe();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    change = pods.recv() => match change {
                        Ok(c) => {
                            let mut s = state.lock().expect("scheduler lock");
                            s.account(&c.key, c.new.as_deref());
                            match c.new.as_deref() {
                                Some(pod) if is_pending(pod) && !s.unschedulable.contains(&c.key) => {
                                    queue.add(c.key.clone());
                                }
                                Some(pod) if is_pending(pod) => {}
                                // A pod gone or finished frees room.
                                None => {
                                    s.last_message.remove(&c.key);
                                    s.unschedulable.remove(&c.key);
                                    s.requeue_unschedulable(&queue);
                                }
                                Some(pod) if counts_on_node(pod).is_none() && c.old.as_deref().and_then(counts_on_node).is_some() => s.requeue_unschedulable(&queue),
                                _ => {}
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let mut s = state.lock().expect("scheduler lock");
                            for pod in ctx2.pods.list(None) {
                                let key = object_key(&pod);
                                s.account(&key, Some(&pod));
                                if is_pending(&pod) { queue.add(key) }
                            }
                        }
                        Err(_) => return,
                    },
                    change = nodes.recv() => match change {
                        Ok(c) => {
                            let mut s = state.lock().expect("scheduler lock");
                            match c.new.as_deref() {
                                Some(node) => match s.nodes.get_mut(&c.key) {
                                    Some(info) => info.update_from(node),
                                    None => {
                                        let mut info = NodeInfo::from_node(node);
                                        for pod in ctx2.pods.list(None) {
                                            if counts_on_node(&pod).as_deref() == Some(c.key.as_str()) {
                                                info.add_pod(&object_key(&pod), PodOnNode::of(&pod));
                                            }
                                        }
                                        s.insert_node(c.key.clone(), info);
                                    }
                                },
                                None => s.remove_node(&c.key),
                            }
                            s.requeue_unschedulable(&queue);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        Err(_) => {}
                    },
                }
            }
        });
    }
    {
        // A safety net: look at unschedulable pods again now and then.
        let (queue, state) = (queue.clone(), state.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                state
                    .lock()
                    .expect("scheduler lock")
                    .requeue_unschedulable(&queue);
            }
        });
    }
    let binds = Arc::new(Semaphore::new(BINDS_IN_FLIGHT));
    let q2 = queue.clone();
    run_workers(tasks, "scheduler", queue, 1, move |key| {
        schedule_one(ctx.clone(), state.clone(), binds.clone(), q2.clone(), key)
    });
}

async fn schedule_one(
    ctx: Arc<Context>,
    state: Arc<Mutex<State>>,
    binds: Arc<Semaphore>,
    queue: Arc<Queue>,
    key: String,
) -> Result<Action, ApiError> {
    let Some(pod) = ctx.pods.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    if !is_pending(&pod)
        || state
            .lock()
            .expect("scheduler lock")
            .pod_node
            .contains_key(&key)
    {
        return Ok(Action::AwaitChange);
    }
    let view = PodView::of(&pod);
    let decision = {
        let mut guard = state.lock().expect("scheduler lock");
        let s = &mut *guard;
        let total = s.names.len();
        // Upstream's adaptive percentageOfNodesToScore: enough feasible
        // nodes to choose well, not all of a large cluster.
        let percent = (50usize.saturating_sub(total / 125)).max(5);
        let enough = (total * percent / 100).max(100);
        let start = if total > 0 { s.next_start % total } else { 0 };
        let mut best: Option<(i64, String)> = None;
        let mut feasible = 0;
        let mut reasons: HashMap<String, usize> = HashMap::new();
        for i in 0..total {
            let name = &s.names[(start + i) % total];
            let node = &s.nodes[name];
            match filter(&view, node) {
                Ok(()) => {
                    feasible += 1;
                    let sc = score(&view, node);
                    if best.as_ref().is_none_or(|(b, _)| sc > *b) {
                        best = Some((sc, name.clone()));
                    }
                    if feasible >= enough {
                        break;
                    }
                }
                Err(reason) => *reasons.entry(reason).or_insert(0) += 1,
            }
        }
        s.next_start = start + 1;
        match best {
            Some((_, node)) => {
                // Assume: count the pod on the node before the write lands.
                s.nodes
                    .get_mut(&node)
                    .expect("chosen from the map")
                    .add_pod(&key, PodOnNode::of(&pod));
                s.pod_node.insert(key.clone(), node.clone());
                s.unschedulable.remove(&key);
                Ok(node)
            }
            None => {
                s.unschedulable.insert(key.clone());
                Err(unschedulable_message(total, &reasons))
            }
        }
    };
    match decision {
        Ok(node) => {
            let permit = binds
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ApiError::internal("scheduler stopped"))?;
            let (ns, name) = split_key(&key);
            let (ns, name) = (ns.unwrap_or_default().to_owned(), name.to_owned());
            tokio::spawn(async move {
                let _permit = permit;
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                match ctx
                    .registry
                    .bind(&ns, &name, &binding, &WriteOptions::default())
                    .await
                {
                    Ok(()) => {
                        ctx.events.record(
                            &pod,
                            "Normal",
                            "Scheduled",
                            format!("Successfully assigned {ns}/{name} to {node}"),
                            SCHEDULER_NAME,
                        );
                    }
                    Err(err) => {
                        // Forget the assumption; try again later.
                        let mut s = state.lock().expect("scheduler lock");
                        if s.pod_node.get(&key) == Some(&node) {
                            if let Some(n) = s.nodes.get_mut(&node) {
                                n.remove_pod(&key);
                            }
                            s.pod_node.remove(&key);
                        }
                        drop(s);
                        if err.code != 404 {
                            tracing::debug!(%err, pod = %key, "binding failed, will retry");
                            queue.add_after(key, Duration::from_millis(500));
                        }
                    }
                }
            });
            Ok(Action::AwaitChange)
        }
        Err(message) => {
            let changed = {
                let mut s = state.lock().expect("scheduler lock");
                s.last_message
                    .insert(key.clone(), message.clone())
                    .as_deref()
                    != Some(message.as_str())
            };
            if changed {
                let (ns, name) = split_key(&key);
                let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]}});
                let res = ctx
                    .registry
                    .resource("", "pods")
                    .expect("kind is in the catalog")
                    .clone();
                match ctx
                    .registry
                    .patch(
                        &res,
                        ns,
                        name,
                        (PatchType::Strategic, &patch),
                        Some("status"),
                        &WriteOptions::default(),
                    )
                    .await
                {
                    Ok(_) | Err(ApiError { code: 404, .. }) => {}
                    Err(e) => return Err(e),
                }
                ctx.events
                    .record(&pod, "Warning", "FailedScheduling", message, SCHEDULER_NAME);
            }
            Ok(Action::AwaitChange)
        }
    }
}
