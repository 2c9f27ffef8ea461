//! Which labels a node may set on its own Node: upstream's kubelet
//! well-known labels (`k8s.io/kubelet/pkg/apis/well_known_labels.go`) and
//! NodeRestriction's rule built on them. A node may not set labels under
//! `node-restriction.kubernetes.io/` (they exist so that an admin can
//! steer workloads by labels no node can give itself), nor any other
//! `kubernetes.io` or `k8s.io` label except the few a kubelet sets about
//! itself. Labels outside those namespaces are the node's to set.
//!
//! The NodeRestriction admission plugin
//! ([`crate::server::admission::node_restriction`]) enforces this on
//! every write a node makes to its Node; `--node-label` is checked
//! against it before an agent starts, as the kubelet checks
//! `--node-labels`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Labels a node may set on itself though they are `kubernetes.io` ones
/// (upstream's `kubeletLabels`).
pub const KUBELET_LABELS: &[&str] = &[
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Label namespaces (and their subdomains) a node may set on itself
/// (upstream's `kubeletLabelNamespaces`).
pub const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// The namespace no node may set labels in, so that an admin's labels
/// there can be trusted to isolate workloads.
pub const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";

/// The prefix of a label key (`example.com` in `example.com/x`), empty
/// when it has none.
fn namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// Is `ns` the domain `domain` or one of its subdomains?
fn within(ns: &str, domain: &str) -> bool {
    ns == domain
        || ns
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.'))
}

/// Is `key` in the `kubernetes.io` or `k8s.io` namespaces (or their
/// subdomains)?
pub fn is_kubernetes_label(key: &str) -> bool {
    let ns = namespace(key);
    within(ns, "kubernetes.io") || within(ns, "k8s.io")
}

/// May a kubelet set `key` on its own Node though it is a Kubernetes
/// label (upstream's `IsKubeletLabel`)?
pub fn is_kubelet_label(key: &str) -> bool {
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|allowed| within(namespace(key), allowed))
}

/// May a node not add, change or remove `key` on its own Node?
pub fn is_forbidden_self_label(key: &str) -> bool {
    within(namespace(key), NODE_RESTRICTION_NAMESPACE)
        || (is_kubernetes_label(key) && !is_kubelet_label(key))
}

/// The label keys a node may not touch among those that differ between
/// `now` and `before` (added, changed or removed), sorted: what
/// NodeRestriction refuses when a node writes its Node (`before` is
/// empty on create).
pub fn forbidden_changes(now: &Map<String, Value>, before: &Map<String, Value>) -> Vec<String> {
    let changed = |a: &Map<String, Value>, b: &Map<String, Value>| {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    let keys: BTreeSet<String> = changed(now, before)
        .into_iter()
        .chain(changed(before, now))
        .filter(|k| is_forbidden_self_label(k))
        .collect();
    keys.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_sets_only_its_own_kind_of_kubernetes_labels() {
        #[rustfmt::skip]
        let cases = [
            // The kubelet's own, by name.
            ("kubernetes.io/hostname", false),
            ("kubernetes.io/os", false),
            ("kubernetes.io/arch", false),
            ("beta.kubernetes.io/os", false),
            ("beta.kubernetes.io/arch", false),
            ("beta.kubernetes.io/instance-type", false),
            ("node.kubernetes.io/instance-type", false),
            ("topology.kubernetes.io/zone", false),
            ("topology.kubernetes.io/region", false),
            ("failure-domain.beta.kubernetes.io/zone", false),
            ("failure-domain.beta.kubernetes.io/region", false),
            // The kubelet's own, by namespace (and its subdomains).
            ("kubelet.kubernetes.io/anything", false),
            ("node.kubernetes.io/exclude-from-external-load-balancers", false),
            ("foo.node.kubernetes.io/bar", false),
            ("a.b.kubelet.kubernetes.io/c", false),
            // Not Kubernetes' at all: the node's to set.
            ("mine", false),
            ("example.com/rack", false),
            ("node.orch.io/simulated", false),
            ("notkubernetes.io/x", false),
            ("kubernetes.io.example.com/x", false),
            // Kept from nodes.
            ("node-restriction.kubernetes.io/foo", true),
            ("team.node-restriction.kubernetes.io/foo", true),
            ("node-role.kubernetes.io/control-plane", true),
            ("kubernetes.io/role", true),
            ("beta.kubernetes.io/fluentd-ds-ready", true),
            ("topology.kubernetes.io/rack", true),
            ("k8s.io/anything", true),
            ("sub.k8s.io/anything", true),
            ("example.kubernetes.io/x", true),
        ];
        for (key, forbidden) in cases {
            assert_eq!(is_forbidden_self_label(key), forbidden, "{key}");
        }
    }

    #[test]
    fn only_added_changed_or_removed_forbidden_labels_count() {
        let map = |v: Value| v.as_object().cloned().unwrap();
        let before = map(json!({"node-restriction.kubernetes.io/pool": "a",
                               "kubernetes.io/hostname": "n", "mine": "x"}));
        // The same labels: nothing changed, even the admin's restricted one.
        assert!(forbidden_changes(&before, &before).is_empty());
        // Allowed ones may change freely.
        let now = map(json!({"node-restriction.kubernetes.io/pool": "a",
                            "kubernetes.io/hostname": "m", "mine": "y", "new": "z"}));
        assert!(forbidden_changes(&now, &before).is_empty());
        // Changed, removed and added forbidden ones are all named, sorted.
        let now = map(json!({"node-restriction.kubernetes.io/pool": "b",
                            "node-role.kubernetes.io/worker": "", "k8s.io/x": "1"}));
        assert_eq!(
            forbidden_changes(&now, &before),
            [
                "k8s.io/x",
                "node-restriction.kubernetes.io/pool",
                "node-role.kubernetes.io/worker"
            ]
        );
        let now = map(json!({"mine": "x"}));
        assert_eq!(
            forbidden_changes(&now, &before),
            ["node-restriction.kubernetes.io/pool"]
        );
        // On create every label is new.
        assert_eq!(
            forbidden_changes(&before, &Map::new()),
            ["node-restriction.kubernetes.io/pool"]
        );
    }
}
