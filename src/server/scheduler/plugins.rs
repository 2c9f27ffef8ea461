//! Filters and scores: pure functions over a pod and a node's state, so
//! they are tested (and property-tested) without a cluster. The node and
//! pod models and the placement check they start from are
//! [`crate::api::placement`]'s.

use std::collections::{HashMap, HashSet};

use crate::api::placement::{
    NodeInfo, PodView, Resources, Taint, node_selector_term_matches, placement, tolerates,
};

/// Why a node cannot take a pod, worded as upstream's scheduler words it.
pub fn filter(pod: &PodView<'_>, node: &NodeInfo) -> Result<(), String> {
    let tolerations = pod.tolerations;
    let req = &pod.req;
    if !node.ready {
        let t = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        };
        if !tolerates(tolerations, &t) {
            return Err("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
        }
    }
    placement(pod, node)?;
    resources_and_neighbours(pod, node, req)
}

fn resources_and_neighbours(
    pod: &PodView<'_>,
    node: &NodeInfo,
    req: &Resources,
) -> Result<(), String> {
    let free = |alloc: i64, used: i64| alloc - used;
    if node.allocatable.pods > 0 && free(node.allocatable.pods, node.requested.pods) < req.pods {
        return Err("Too many pods".into());
    }
    if req.cpu > 0 && free(node.allocatable.cpu, node.requested.cpu) < req.cpu {
        return Err("Insufficient cpu".into());
    }
    if req.memory > 0 && free(node.allocatable.memory, node.requested.memory) < req.memory {
        return Err("Insufficient memory".into());
    }
    if req.ephemeral > 0
        && free(node.allocatable.ephemeral, node.requested.ephemeral) < req.ephemeral
    {
        return Err("Insufficient ephemeral-storage".into());
    }
    if !pod.host_ports.is_empty() {
        let used: HashSet<&(String, i64)> = node
            .pods
            .values()
            .flat_map(|p| p.host_ports.iter())
            .collect();
        if pod.host_ports.iter().any(|p| used.contains(p)) {
            return Err("node(s) didn't have free ports for the requested pod ports".into());
        }
    }
    // Required anti-affinity on the hostname topology: no matching pod here.
    for (sel, namespaces) in &pod.anti_affinity {
        if node
            .pods
            .values()
            .any(|p| namespaces.contains(&p.namespace) && sel.matches(&p.labels))
        {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    Ok(())
}

/// Requests used for scoring: unset CPU and memory count as upstream's
/// non-zero defaults (100m, 200Mi), so best-effort pods still spread.
fn scoring_requests(req: &Resources) -> (i64, i64) {
    (
        if req.cpu == 0 { 100 } else { req.cpu },
        if req.memory == 0 {
            200 * 1024 * 1024
        } else {
            req.memory
        },
    )
}

/// The node's score for the pod (higher is better): least allocated,
/// balanced allocation, spreading an owner's pods, preferred node affinity,
/// and avoiding PreferNoSchedule taints.
pub fn score(pod: &PodView<'_>, node: &NodeInfo) -> i64 {
    let (cpu, mem) = scoring_requests(&pod.req);
    let frac = |used: i64, alloc: i64| {
        if alloc <= 0 {
            1.0
        } else {
            (used as f64 / alloc as f64).min(1.0)
        }
    };
    let cpu_f = frac(node.requested.cpu + cpu, node.allocatable.cpu);
    let mem_f = frac(node.requested.memory + mem, node.allocatable.memory);
    let least_allocated = ((1.0 - cpu_f) * 50.0 + (1.0 - mem_f) * 50.0) as i64;
    let balanced = (100.0 - (cpu_f - mem_f).abs() * 100.0) as i64;
    let spread = match pod.owner {
        Some(uid) => {
            let same = node
                .pods
                .values()
                .filter(|p| p.owner.as_deref() == Some(uid))
                .count() as i64;
            100 / (1 + same)
        }
        None => 100,
    };
    let preferred: i64 = pod
        .preferred
        .iter()
        .filter(|t| node_selector_term_matches(&t["preference"], node))
        .map(|t| t["weight"].as_i64().unwrap_or(0))
        .sum();
    let soft_taints = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(pod.tolerations, t))
        .count() as i64;
    least_allocated + balanced + 2 * spread + preferred.min(100) - 50 * soft_taints
}

/// Upstream's FailedScheduling message from the per-node reasons.
pub fn unschedulable_message(total: usize, reasons: &HashMap<String, usize>) -> String {
    let mut parts: Vec<(String, usize)> = reasons.iter().map(|(r, n)| (r.clone(), *n)).collect();
    parts.sort();
    let list: Vec<String> = parts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if total == 0 {
        return "0/0 nodes are available: no nodes available to schedule pods.".into();
    }
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::placement::PodOnNode;
    use crate::api::quantity::parse_quantity;
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::json;

    fn node(name: &str, cpu: &str, mem: &str) -> NodeInfo {
        NodeInfo::from_node(&json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": "a"}},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    fn pod(cpu: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}})
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("100m", 1000.0), Some(100));
        assert_eq!(parse_quantity("1.5", 1000.0), Some(1500));
        assert_eq!(parse_quantity("64Mi", 1.0), Some(64 << 20));
        assert_eq!(parse_quantity("1G", 1.0), Some(1_000_000_000));
        assert_eq!(parse_quantity("2e3", 1.0), Some(2000));
        assert_eq!(parse_quantity("bogus", 1.0), None);
    }

    #[test]
    fn filters_say_why() {
        let n = node("n1", "1", "1Gi");
        let big = pod("2");
        assert_eq!(
            filter(&PodView::of(&big), &n),
            Err("Insufficient cpu".into())
        );
        let mut tainted = node("n2", "8", "8Gi");
        tainted.taints.push(Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: "NoSchedule".into(),
        });
        let small = pod("100m");
        assert_eq!(
            filter(&PodView::of(&small), &tainted),
            Err("node(s) had untolerated taint {dedicated: gpu}".into())
        );
        let mut tolerant = small.clone();
        tolerant["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(filter(&PodView::of(&tolerant), &tainted), Ok(()));
        let mut selective = small.clone();
        selective["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(
            filter(&PodView::of(&selective), &n)
                .unwrap_err()
                .contains("node affinity/selector")
        );
        let mut cordoned = node("n3", "8", "8Gi");
        cordoned.unschedulable = true;
        assert_eq!(
            filter(&PodView::of(&small), &cordoned),
            Err("node(s) were unschedulable".into())
        );
    }

    #[test]
    fn message_matches_upstream_shape() {
        let reasons = HashMap::from([
            ("Insufficient cpu".to_owned(), 1),
            (
                "node(s) had untolerated taint {dedicated: gpu}".to_owned(),
                2,
            ),
        ]);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn emptier_nodes_and_spread_score_higher() {
        let empty = node("a", "4", "8Gi");
        let mut busy = node("b", "4", "8Gi");
        let p = pod("500m");
        busy.add_pod(
            "x",
            PodOnNode {
                requests: Resources {
                    cpu: 3000,
                    memory: 4 << 30,
                    ephemeral: 0,
                    pods: 1,
                },
                ..Default::default()
            },
        );
        let v = PodView::of(&p);
        assert!(score(&v, &empty) > score(&v, &busy));
    }

    proptest! {
        #[test]
        fn requests_never_exceed_allocatable_after_filtering(
            cpus in prop::collection::vec(1u32..4000, 1..20),
            node_cpu in 1u32..8,
        ) {
            // Place pods greedily on one node: the sum admitted never
            // exceeds what the node has.
            let mut n = node("n", &node_cpu.to_string(), "64Gi");
            for (i, c) in cpus.iter().enumerate() {
                let p = pod(&format!("{c}m"));
                let v = PodView::of(&p);
                if filter(&v, &n).is_ok() {
                    n.add_pod(&i.to_string(), PodOnNode { requests: v.req, ..Default::default() });
                }
                prop_assert!(n.requested.cpu <= n.allocatable.cpu);
            }
        }
    }
}
