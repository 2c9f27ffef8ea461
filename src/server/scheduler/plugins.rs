//! Filters and scores: pure functions over a pod and a node's state, so
//! they are tested (and property-tested) without a cluster.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// Resource amounts: CPU in millicores, the rest in bytes or counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral: i64,
    pub pods: i64,
}

impl Resources {
    fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
    }
    fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.ephemeral -= o.ephemeral;
        self.pods -= o.pods;
    }
}

pub use crate::api::quantity::parse_quantity;

fn quantity(v: Option<&Value>, scale: f64) -> i64 {
    v.and_then(Value::as_str)
        .and_then(|s| parse_quantity(s, scale))
        .or_else(|| v.and_then(Value::as_i64).map(|n| (n as f64 * scale) as i64))
        .unwrap_or(0)
}

/// What a pod requests: the sum over containers, or the largest init
/// container if that is more, plus one pod slot.
pub fn pod_requests(pod: &Value) -> Resources {
    let sum_of = |list: &str| -> Vec<Resources> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let r = c.pointer("/resources/requests");
                Resources {
                    cpu: quantity(r.and_then(|r| r.get("cpu")), 1000.0),
                    memory: quantity(r.and_then(|r| r.get("memory")), 1.0),
                    ephemeral: quantity(r.and_then(|r| r.get("ephemeral-storage")), 1.0),
                    pods: 0,
                }
            })
            .collect()
    };
    let mut total = Resources::default();
    for r in sum_of("containers") {
        total.add(&r);
    }
    for r in sum_of("initContainers") {
        total.cpu = total.cpu.max(r.cpu);
        total.memory = total.memory.max(r.memory);
        total.ephemeral = total.ephemeral.max(r.ephemeral);
    }
    total.pods = 1;
    total
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// A node's state as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub taints: Vec<Taint>,
    pub ready: bool,
    pub unschedulable: bool,
    /// The pods counted here: requests, owner uid, host ports, labels.
    pub pods: HashMap<String, PodOnNode>,
}

#[derive(Debug, Clone, Default)]
pub struct PodOnNode {
    pub requests: Resources,
    pub owner: Option<String>,
    pub host_ports: Vec<(String, i64)>,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
}

impl NodeInfo {
    pub fn from_node(node: &Value) -> Self {
        let alloc = node.pointer("/status/allocatable");
        let labels = crate::api::selector::labels_of(node);
        let taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| Taint {
                key: t["key"].as_str().unwrap_or_default().to_owned(),
                value: t["value"].as_str().unwrap_or_default().to_owned(),
                effect: t["effect"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        let ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .is_some_and(|c| c["status"] == "True");
        Self {
            name: node
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            labels,
            allocatable: Resources {
                cpu: quantity(alloc.and_then(|a| a.get("cpu")), 1000.0),
                memory: quantity(alloc.and_then(|a| a.get("memory")), 1.0),
                ephemeral: quantity(alloc.and_then(|a| a.get("ephemeral-storage")), 1.0),
                pods: quantity(alloc.and_then(|a| a.get("pods")), 1.0),
            },
            requested: Resources::default(),
            taints,
            ready,
            unschedulable: node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)),
            pods: HashMap::new(),
        }
    }

    /// Keep counted pods when the Node object changes.
    pub fn update_from(&mut self, node: &Value) {
        let pods = std::mem::take(&mut self.pods);
        let requested = self.requested;
        *self = Self::from_node(node);
        self.pods = pods;
        self.requested = requested;
    }

    pub fn add_pod(&mut self, key: &str, pod: PodOnNode) {
        if let Some(old) = self.pods.insert(key.to_owned(), pod.clone()) {
            self.requested.sub(&old.requests);
        }
        self.requested.add(&pod.requests);
    }

    pub fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            self.requested.sub(&old.requests);
        }
    }
}

impl PodOnNode {
    pub fn of(pod: &Value) -> Self {
        Self {
            requests: pod_requests(pod),
            owner: crate::api::meta::controller_of(pod)
                .and_then(|o| o["uid"].as_str())
                .map(str::to_owned),
            host_ports: host_ports(pod),
            labels: crate::api::selector::labels_of(pod),
            namespace: pod
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

fn host_ports(pod: &Value) -> Vec<(String, i64)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            let hp = p["hostPort"].as_i64().filter(|h| *h > 0)?;
            Some((p["protocol"].as_str().unwrap_or("TCP").to_owned(), hp))
        })
        .collect()
}

/// What the filters and scores need from a pod, extracted once per
/// scheduling decision instead of once per node.
pub struct PodView<'a> {
    pub pod: &'a Value,
    pub req: Resources,
    tolerations: &'a [Value],
    node_selector: Option<&'a serde_json::Map<String, Value>>,
    required_terms: Option<&'a Vec<Value>>,
    preferred: &'a [Value],
    host_ports: Vec<(String, i64)>,
    anti_affinity: Vec<(crate::api::selector::LabelSelector, Vec<String>)>,
    owner: Option<&'a str>,
}

impl<'a> PodView<'a> {
    pub fn of(pod: &'a Value) -> Self {
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let anti_affinity = pod
            .pointer(
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            )
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t["topologyKey"].as_str() == Some("kubernetes.io/hostname"))
            .filter_map(|t| {
                let sel =
                    crate::api::selector::LabelSelector::from_label_selector(&t["labelSelector"])
                        .ok()?;
                let namespaces = t["namespaces"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_else(|| vec![ns.to_owned()]);
                Some((sel, namespaces))
            })
            .collect();
        Self {
            pod,
            req: pod_requests(pod),
            tolerations: pod.pointer("/spec/tolerations").and_then(Value::as_array).map_or(&[], Vec::as_slice),
            node_selector: pod.pointer("/spec/nodeSelector").and_then(Value::as_object),
            required_terms: pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms").and_then(Value::as_array),
            preferred: pod
                .pointer("/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice),
            host_ports: host_ports(pod),
            anti_affinity,
            owner: crate::api::meta::controller_of(pod).and_then(|o| o["uid"].as_str()),
        }
    }
}

fn tolerates(tolerations: &[Value], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key = t["key"].as_str().unwrap_or_default();
        let op = t["operator"].as_str().unwrap_or("Equal");
        let effect = t["effect"].as_str().unwrap_or_default();
        (key.is_empty() && op == "Exists" || key == taint.key)
            && (op == "Exists" || t["value"].as_str().unwrap_or_default() == taint.value)
            && (effect.is_empty() || effect == taint.effect)
    })
}

fn node_selector_term_matches(term: &Value, node: &NodeInfo) -> bool {
    let exprs_ok = term["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let actual = node.labels.get(key);
            match e["operator"].as_str().unwrap_or_default() {
                "In" => actual.is_some_and(|v| values.contains(&v.as_str())),
                "NotIn" => actual.is_none_or(|v| !values.contains(&v.as_str())),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                "Gt" => actual
                    .and_then(|v| v.parse::<i64>().ok())
                    .zip(values.first().and_then(|v| v.parse::<i64>().ok()))
                    .is_some_and(|(a, b)| a > b),
                "Lt" => actual
                    .and_then(|v| v.parse::<i64>().ok())
                    .zip(values.first().and_then(|v| v.parse::<i64>().ok()))
                    .is_some_and(|(a, b)| a < b),
                _ => false,
            }
        });
    let fields_ok = term["matchFields"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match (e["key"].as_str(), e["operator"].as_str()) {
                (Some("metadata.name"), Some("In")) => values.contains(&node.name.as_str()),
                (Some("metadata.name"), Some("NotIn")) => !values.contains(&node.name.as_str()),
                _ => false,
            }
        });
    exprs_ok && fields_ok
}

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

/// Whether the pod may go to the node at all, whatever runs there: not
/// cordoned, taints tolerated, node selector and required node affinity
/// matched. (What the DaemonSet controller asks of a node.)
pub fn placement(pod: &PodView<'_>, node: &NodeInfo) -> Result<(), String> {
    let tolerations = pod.tolerations;
    if node.unschedulable
        && !tolerates(
            tolerations,
            &Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            },
        )
    {
        return Err("node(s) were unschedulable".into());
    }
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerates(tolerations, taint)
        {
            return Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key, taint.value
            ));
        }
    }
    if let Some(sel) = pod.node_selector
        && !sel
            .iter()
            .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
    {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    if let Some(terms) = pod.required_terms
        && !terms.iter().any(|t| node_selector_term_matches(t, node))
    {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    Ok(())
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
    use proptest::prelude::*;
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
