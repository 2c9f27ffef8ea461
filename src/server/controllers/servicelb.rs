//! ServiceLB, as k3s has it: a Service of type LoadBalancer gets the
//! addresses of the Ready nodes as `status.loadBalancer.ingress`, and every
//! node's service proxy serves the Service's ports on them. Nodes coming,
//! going or changing readiness update every LoadBalancer Service.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, feed, meta_str, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key, split_key};

/// The `InternalIP`s of the Ready nodes, sorted.
pub fn ingress_ips(nodes: &[Arc<Value>]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .flat_map(|n| {
            n["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == "InternalIP")
                .filter_map(|a| a["address"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn is_load_balancer(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
}

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    let lb_keys = {
        let ctx = ctx.clone();
        move || {
            ctx.informers
                .services
                .list(None)
                .iter()
                .filter(|s| is_load_balancer(s))
                .map(|s| object_key(s))
                .collect::<Vec<_>>()
        }
    };
    feed(
        tasks,
        &ctx.informers.services,
        &queue,
        |c| vec![c.key.clone()],
        lb_keys.clone(),
    );
    // Any node change may change the ingress of every LoadBalancer.
    let resync = lb_keys.clone();
    feed(
        tasks,
        &ctx.informers.nodes,
        &queue,
        move |_| resync(),
        lb_keys,
    );
    run_workers(tasks, "servicelb", queue, 1, move |key| {
        reconcile(ctx.clone(), key)
    });
}

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let (ns, name) = split_key(&key);
    let Some(svc) = ctx
        .informers
        .services
        .list(ns)
        .into_iter()
        .find(|s| meta_str(s, "name") == name)
    else {
        return Ok(Action::AwaitChange);
    };
    let want = if is_load_balancer(&svc) {
        let ips = ingress_ips(&ctx.informers.nodes.list(None));
        json!({"ingress": ips.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect::<Vec<_>>()})
    } else {
        json!({})
    };
    let current = svc
        .pointer("/status/loadBalancer")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let empty = |v: &Value| {
        v.as_object().is_none_or(|o| {
            o.is_empty()
                || o.get("ingress")
                    .is_some_and(|i| i.as_array().is_some_and(Vec::is_empty))
        })
    };
    if current == want || (empty(&current) && empty(&want)) {
        return Ok(Action::AwaitChange);
    }
    let mut updated = (*svc).clone();
    updated["status"]["loadBalancer"] = want;
    ctx.write(&ctx.res("", "services"), ns, name, updated, Some("status"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_is_the_ready_nodes_internal_ips() {
        let node = |ip: &str, ready: &str| {
            Arc::new(json!({"status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "h"}],
            }}))
        };
        let nodes = [
            node("192.168.1.12", "True"),
            node("192.168.1.11", "True"),
            node("192.168.1.13", "Unknown"),
        ];
        assert_eq!(ingress_ips(&nodes), ["192.168.1.11", "192.168.1.12"]);
    }
}
