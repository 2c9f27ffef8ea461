//! Endpoints and EndpointSlices from Services and their pods: every
//! Service with a selector gets an Endpoints object (ready addresses and
//! not-ready ones, or all as ready with `publishNotReadyAddresses`) and
//! EndpointSlices — one per set of resolved ports, at most 100 endpoints
//! each — with named target ports resolved against each pod's container
//! ports. Pod readiness changes show up as soon as the informer sees them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, meta_str, run_workers};
use crate::api::selector::LabelSelector;
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key, split_key};
use crate::server::registry::{ListQuery, WriteOptions};

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    {
        let (queue, ctx2) = (queue.clone(), ctx.clone());
        let mut svc_rx = ctx.informers.services.subscribe();
        let mut pod_rx = ctx.informers.pods.subscribe();
        tasks.spawn(async move {
            for svc in ctx2.informers.services.list(None) {
                queue.add(object_key(&svc));
            }
            loop {
                tokio::select! {
                    c = svc_rx.recv() => match c {
                        Ok(c) => queue.add(c.key),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        Err(_) => ctx2.informers.services.list(None).iter().for_each(|s| queue.add(object_key(s))),
                    },
                    c = pod_rx.recv() => match c {
                        Ok(c) => {
                            // Services in the pod's namespace whose selector matches it (before or after).
                            for pod in [c.old.as_deref(), c.new.as_deref()].into_iter().flatten() {
                                let ns = meta_str(pod, "namespace");
                                for svc in ctx2.informers.services.list(Some(ns)) {
                                    if selector(&svc).is_some_and(|s| s.matches_object(pod)) {
                                        queue.add(object_key(&svc));
                                    }
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        Err(_) => ctx2.informers.services.list(None).iter().for_each(|s| queue.add(object_key(s))),
                    },
                }
            }
        });
    }
    run_workers(tasks, "endpoints", queue, 1, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// Ready addresses, not-ready addresses and ports of one Endpoints subset.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

/// Endpoints per EndpointSlice (upstream's `--max-endpoints-per-slice`).
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

fn slice_name(service: &str, i: usize) -> String {
    if i == 0 {
        format!("{service}-orch")
    } else {
        format!("{service}-orch-{i}")
    }
}

fn selector(svc: &Value) -> Option<LabelSelector> {
    let map = svc.pointer("/spec/selector")?.as_object()?;
    if map.is_empty() {
        return None;
    }
    LabelSelector::from_label_selector(&json!({"matchLabels": map})).ok()
}

fn pod_ready(pod: &Value) -> bool {
    super::pod_ready_since(pod).is_some()
}

/// The container port a Service port targets on this pod.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match port.get("targetPort").or_else(|| port.get("port")) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| {
                p["name"].as_str() == Some(name.as_str())
                    && p["protocol"].as_str().unwrap_or("TCP")
                        == port["protocol"].as_str().unwrap_or("TCP")
            })
            .and_then(|p| p["containerPort"].as_i64()),
        _ => None,
    }
}

async fn upsert(
    ctx: &Context,
    group: &str,
    plural: &str,
    ns: &str,
    name: &str,
    want: Value,
    compare: &[&str],
) -> Result<(), ApiError> {
    let res = ctx.res(group, plural);
    match ctx.registry.get(&res, Some(ns), name).await {
        Ok(mut current) => {
            if compare.iter().all(|f| current.get(*f) == want.get(*f)) {
                return Ok(());
            }
            for f in compare {
                match want.get(*f) {
                    Some(v) => current[*f] = v.clone(),
                    None => {
                        if let Some(m) = current.as_object_mut() {
                            m.remove(*f);
                        }
                    }
                }
            }
            ctx.registry
                .update(
                    &res,
                    Some(ns),
                    name,
                    current,
                    None,
                    &WriteOptions::default(),
                )
                .await
                .map(|_| ())
        }
        Err(e) if e.code == 404 => ctx
            .registry
            .create(&res, Some(ns), want, &WriteOptions::default())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Delete the Service's slices not named in `keep`.
async fn remove_slices_except(
    ctx: &Context,
    ns: &str,
    service: &str,
    keep: &[String],
) -> Result<(), ApiError> {
    let res = ctx.res("discovery.k8s.io", "endpointslices");
    let query = ListQuery {
        labels: LabelSelector::parse(&format!(
            "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
        ))
        .map_err(|e| ApiError::internal(e.to_string()))?,
        ..ListQuery::default()
    };
    for old in ctx.registry.list(&res, Some(ns), &query).await?.decoded()? {
        let old_name = meta_str(&old, "name");
        if !keep.iter().any(|n| n == old_name) {
            match ctx
                .registry
                .delete(&res, Some(ns), old_name, &Default::default())
                .await
            {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let (ns, name) = split_key(&key);
    let (ns, name) = (ns.unwrap_or_default().to_owned(), name.to_owned());
    let Some(svc) = ctx.informers.services.get(&key) else {
        // The Service is gone; its Endpoints and slices go with it.
        let res = ctx.res("", "endpoints");
        match ctx
            .registry
            .delete(&res, Some(&ns), &name, &Default::default())
            .await
        {
            Ok(_) | Err(ApiError { code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        remove_slices_except(&ctx, &ns, &name, &[]).await?;
        return Ok(Action::AwaitChange);
    };
    let Some(sel) = selector(&svc) else {
        // Services without a selector have their Endpoints managed by hand.
        return Ok(Action::AwaitChange);
    };
    let publish_not_ready = svc.pointer("/spec/publishNotReadyAddresses") == Some(&json!(true));
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Group addresses by their resolved port set, as upstream's subsets do.
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    // EndpointSlice endpoints, grouped by their resolved ports like the
    // subsets (a slice has one port list).
    let mut slice_groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut pods: Vec<Arc<Value>> = ctx
        .informers
        .pods
        .list(Some(&ns))
        .into_iter()
        .filter(|p| sel.matches_object(p))
        .collect();
    pods.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
    for pod in pods {
        let ip = pod
            .pointer("/status/podIP")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ip.is_empty() || super::is_deleting(&pod) || !super::pod_is_active(&pod) {
            continue;
        }
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|p| {
                let port = target_port(p, &pod)?;
                let mut e =
                    json!({"port": port, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                if let Some(n) = p["name"].as_str() {
                    e["name"] = json!(n);
                }
                Some(e)
            })
            .collect();
        let ready = pod_ready(&pod) || publish_not_ready;
        let node = pod
            .pointer("/spec/nodeName")
            .cloned()
            .unwrap_or(Value::Null);
        let mut address = json!({"ip": ip, "nodeName": node, "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}});
        // A pod whose subdomain is this service is known by its hostname
        // (`db-0.db.<ns>.svc…`: StatefulSets' pods), as upstream's
        // ShouldSetHostname has it.
        let hostname = pod
            .pointer("/spec/hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .filter(|_| {
                pod.pointer("/spec/subdomain").and_then(Value::as_str) == Some(name.as_str())
            });
        if let Some(h) = hostname {
            address["hostname"] = json!(h);
        }
        let port_key = serde_json::to_string(&resolved).expect("JSON");
        let entry = subsets
            .entry(port_key.clone())
            .or_insert_with(|| (Vec::new(), Vec::new(), resolved.clone()));
        if ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
        let group = slice_groups
            .entry(port_key)
            .or_insert_with(|| (resolved, Vec::new()));
        let mut endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
        });
        if let Some(h) = hostname {
            endpoint["hostname"] = json!(h);
        }
        group.1.push(endpoint);
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ready, not_ready, ports)| {
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = Value::Array(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = Value::Array(not_ready);
            }
            s
        })
        .collect();
    let mut endpoints = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": svc.pointer("/metadata/labels").cloned().unwrap_or(json!({}))}});
    if !subsets.is_empty() {
        endpoints["subsets"] = Value::Array(subsets);
    }
    upsert(&ctx, "", "endpoints", &ns, &name, endpoints, &["subsets"]).await?;
    // Slices of at most 100 endpoints (upstream's default), named
    // `<service>-orch` then `<service>-orch-<n>`; a Service without
    // endpoints keeps one empty slice.
    let mut wanted: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
    for (ports, endpoints) in slice_groups.into_values() {
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            wanted.push((ports.clone(), chunk.to_vec()));
        }
    }
    if wanted.is_empty() {
        wanted.push((Vec::new(), Vec::new()));
    }
    let mut names = Vec::new();
    for (i, (ports, endpoints)) in wanted.into_iter().enumerate() {
        let slice_name = slice_name(&name, i);
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
                         "ownerReferences": [super::controller_ref(&svc)]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        upsert(
            &ctx,
            "discovery.k8s.io",
            "endpointslices",
            &ns,
            &slice_name,
            slice,
            &["endpoints", "ports"],
        )
        .await?;
        names.push(slice_name);
    }
    // Slices no longer needed (fewer endpoints or port sets than before).
    remove_slices_except(&ctx, &ns, &name, &names).await?;
    Ok(Action::AwaitChange)
}
