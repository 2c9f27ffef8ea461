//! Where a pod may run: a node's state (allocatable and requested
//! resources, taints, labels, the pods counted on it), what a pod asks of
//! a node (requests, tolerations, node selector and affinity, host ports,
//! anti-affinity), and the placement check — taints tolerated, selector
//! and required node affinity matched — that the scheduler filters with
//! and the DaemonSet controller asks of each node (as upstream's
//! component-helpers share them). Pure functions over values.

use std::collections::{BTreeMap, HashMap};

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

use crate::api::quantity::parse_quantity;

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
    pub tolerations: &'a [Value],
    pub node_selector: Option<&'a serde_json::Map<String, Value>>,
    pub required_terms: Option<&'a Vec<Value>>,
    pub preferred: &'a [Value],
    pub host_ports: Vec<(String, i64)>,
    pub anti_affinity: Vec<(crate::api::selector::LabelSelector, Vec<String>)>,
    pub owner: Option<&'a str>,
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

/// Whether one of `tolerations` tolerates `taint`.
pub fn tolerates(tolerations: &[Value], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key = t["key"].as_str().unwrap_or_default();
        let op = t["operator"].as_str().unwrap_or("Equal");
        let effect = t["effect"].as_str().unwrap_or_default();
        (key.is_empty() && op == "Exists" || key == taint.key)
            && (op == "Exists" || t["value"].as_str().unwrap_or_default() == taint.value)
            && (effect.is_empty() || effect == taint.effect)
    })
}

/// Whether the node matches one node selector term (its
/// `matchExpressions` and `matchFields`, all of them).
pub fn node_selector_term_matches(term: &Value, node: &NodeInfo) -> bool {
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
