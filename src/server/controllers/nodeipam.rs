//! Node IPAM: every node gets a /24 of the cluster CIDR (`--cluster-cidr`,
//! 10.42.0.0/16 by default) as `spec.podCIDR`/`spec.podCIDRs`, which its
//! agent hands out to pods. A range is never given twice; a deleted node's
//! range is free again. One worker, so two nodes never race for a range.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, feed, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key};
use crate::server::registry::WriteOptions;

/// The prefix length of each node's range.
pub const NODE_MASK: u8 = 24;

/// The `index`-th /24 of `cidr`, or `None` past its end.
pub fn node_range(cidr: (Ipv4Addr, u8), index: u32) -> Option<String> {
    let (base, bits) = cidr;
    if bits > NODE_MASK {
        return None;
    }
    let count = 1u32 << (NODE_MASK - bits);
    if index >= count {
        return None;
    }
    let network = u32::from(base) & (u32::MAX << (32 - u32::from(bits)));
    let start = network + (index << (32 - u32::from(NODE_MASK)));
    Some(format!("{}/{NODE_MASK}", Ipv4Addr::from(start)))
}

/// Which range of `cidr` a node's `podCIDR` is, if it is one of them.
fn index_of(cidr: (Ipv4Addr, u8), pod_cidr: &str) -> Option<u32> {
    let (ip, bits) = pod_cidr.split_once('/')?;
    if bits != NODE_MASK.to_string() {
        return None;
    }
    let ip: Ipv4Addr = ip.parse().ok()?;
    let (base, prefix) = cidr;
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(ip) & mask != u32::from(base) & mask {
        return None;
    }
    Some((u32::from(ip) & !mask) >> (32 - u32::from(NODE_MASK)))
}

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let Some(cidr) = ctx.config.cluster_cidr else {
        return;
    };
    let queue = Queue::new();
    let (ctx2, ctx3) = (ctx.clone(), ctx.clone());
    feed(
        tasks,
        &ctx.informers.nodes,
        &queue,
        move |c| {
            let mut keys = vec![c.key.clone()];
            if c.new.is_none() {
                // A range is free again: the nodes waiting for one.
                keys.extend(
                    ctx3.informers
                        .nodes
                        .list(None)
                        .iter()
                        .filter(|n| n.pointer("/spec/podCIDR").is_none())
                        .map(|n| object_key(n)),
                );
            }
            keys
        },
        move || {
            ctx2.informers
                .nodes
                .list(None)
                .iter()
                .map(|n| object_key(n))
                .collect()
        },
    );
    // Ranges given by this process that the cache may not show yet.
    let given: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    run_workers(tasks, "nodeipam", queue, 1, move |name| {
        reconcile(ctx.clone(), cidr, given.clone(), name)
    });
}

async fn reconcile(
    ctx: Arc<Context>,
    cidr: (Ipv4Addr, u8),
    given: Arc<Mutex<HashMap<String, u32>>>,
    name: String,
) -> Result<Action, ApiError> {
    let nodes = ctx.informers.nodes.list(None);
    let node_name = |n: &Value| {
        n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let Some(node) = nodes.iter().find(|n| node_name(n) == name) else {
        // Deleted: its range is free.
        given.lock().expect("given lock").remove(&name);
        return Ok(Action::AwaitChange);
    };
    if node
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::AwaitChange);
    }
    let mut used: HashSet<u32> = nodes
        .iter()
        .filter_map(|n| n.pointer("/spec/podCIDR").and_then(Value::as_str))
        .filter_map(|c| index_of(cidr, c))
        .collect();
    {
        let mut given = given.lock().expect("given lock");
        let live: HashSet<String> = nodes.iter().map(|n| node_name(n)).collect();
        given.retain(|n, _| live.contains(n));
        used.extend(given.values().copied());
    }
    let Some((index, range)) = (0..)
        .map(|i| (i, node_range(cidr, i)))
        .take_while(|(_, r)| r.is_some())
        .find(|(i, _)| !used.contains(i))
        .and_then(|(i, r)| Some((i, r?)))
    else {
        tracing::warn!(node = %name, cidr = %format!("{}/{}", cidr.0, cidr.1), "no /24 left in the cluster CIDR for this node; widen --cluster-cidr");
        // A deleted node frees one (and requeues this); look again anyway.
        return Ok(Action::RequeueAfter(std::time::Duration::from_secs(30)));
    };
    let res = ctx.res("", "nodes");
    let mut fresh = ctx.registry.get(&res, None, &name).await?;
    if fresh
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::AwaitChange);
    }
    fresh["spec"]["podCIDR"] = json!(range);
    fresh["spec"]["podCIDRs"] = json!([range]);
    ctx.registry
        .update(&res, None, &name, fresh, None, &WriteOptions::default())
        .await?;
    given
        .lock()
        .expect("given lock")
        .insert(name.clone(), index);
    tracing::info!(node = %name, pod_cidr = %range, "node pod range assigned");
    Ok(Action::AwaitChange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranges_are_the_24s_of_the_cluster_cidr() {
        let cidr = (Ipv4Addr::new(10, 42, 0, 0), 16);
        assert_eq!(node_range(cidr, 0).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(node_range(cidr, 255).as_deref(), Some("10.42.255.0/24"));
        assert_eq!(node_range(cidr, 256), None);
        assert_eq!(index_of(cidr, "10.42.7.0/24"), Some(7));
        assert_eq!(index_of(cidr, "10.43.7.0/24"), None);
        assert_eq!(index_of(cidr, "10.42.7.0/25"), None);
        let small = (Ipv4Addr::new(10, 99, 0, 0), 23);
        assert_eq!(node_range(small, 1).as_deref(), Some("10.99.1.0/24"));
        assert_eq!(node_range(small, 2), None);
        assert_eq!(node_range((Ipv4Addr::new(10, 0, 0, 0), 25), 0), None);
    }
}
