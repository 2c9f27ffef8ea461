//! Pure tests of rendering and planning, then kernel tests that each run in
//! their own throw-away network namespaces (they need root and `nft`).

use super::apply::*;
use super::plan::*;
use super::render::*;
use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nftables::stmt::Statement;

use crate::net::testns::{NetNs, have_nft};
use serde_json::json;

fn cfg() -> ProxyConfig {
    ProxyConfig {
        node_name: "node-1".into(),
        node_ips: vec!["192.168.1.10".parse().expect("ip")],
        cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
        dns: None,
    }
}

/// A ClusterIP Service; `extra` is merged into its spec.
fn svc(name: &str, ip: &str, ports: serde_json::Value, extra: serde_json::Value) -> Service {
    let mut spec = json!({"clusterIP": ip, "ports": ports, "selector": {"app": name}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": spec,
    }))
    .expect("valid Service")
}

/// An IPv4 EndpointSlice of Service `svc`; endpoints are (ip, ready, node).
fn slice(svc: &str, ports: serde_json::Value, eps: &[(&str, bool, &str)]) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, ready, node)| json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("{svc}-abc"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("valid EndpointSlice")
}

fn http() -> serde_json::Value {
    json!([{"name": "http", "port": 80, "protocol": "TCP"}])
}
fn http_target() -> serde_json::Value {
    json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
}

fn key(ip: &str, port: u16) -> MapKey {
    MapKey::Addr(ip.parse().expect("ip"), Protocol::Tcp, port)
}

fn chains_with<'a>(rs: &'a Ruleset, prefix: &'a str) -> Vec<&'a str> {
    rs.chain_names().filter(|n| n.starts_with(prefix)).collect()
}

#[test]
fn only_ready_endpoints_get_chains() {
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", http(), json!({}))],
        &[slice(
            "web",
            http_target(),
            &[
                ("10.42.0.2", true, "node-1"),
                ("10.42.0.3", false, "node-1"),
                ("10.42.1.4", true, "node-2"),
            ],
        )],
        &[],
    );
    let eps = chains_with(&rs, "ep-");
    assert_eq!(eps.len(), 2, "one chain per ready endpoint: {eps:?}");
    assert!(
        eps.iter().all(|n| !n.contains("10.42.0.3")),
        "not-ready endpoint has no chain"
    );
    let svc_chain = rs
        .target("service-ips", &key("10.43.0.100", 80))
        .expect("ClusterIP is mapped");
    assert!(
        svc_chain.starts_with("svc-") && svc_chain.ends_with("-default/web/tcp/http"),
        "{svc_chain}"
    );
    let rules = rs.rules_json(svc_chain).expect("service chain");
    assert!(
        rules.contains(r#""mod":2"#),
        "a random pick among the 2 ready endpoints: {rules}"
    );
    for ep in eps {
        assert!(rules.contains(ep), "{ep} is a goto target: {rules}");
    }
}

#[test]
fn target_port_comes_from_the_slice_port_of_the_same_name() {
    let ports = json!([{"name": "http", "port": 80}, {"name": "metrics", "port": 9000}]);
    let slice_ports = json!([{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]);
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", ports, json!({}))],
        &[slice("web", slice_ports, &[("10.42.0.2", true, "node-1")])],
        &[],
    );
    let http_ep = chains_with(&rs, "ep-")
        .into_iter()
        .find(|n| n.contains("/http__"))
        .expect("http endpoint");
    assert!(http_ep.ends_with("__10.42.0.2/8080"), "{http_ep}");
    let rules = rs.rules_json(http_ep).expect("rules");
    assert!(
        rules.contains(r#""port":8080"#) && !rules.contains("9090"),
        "{rules}"
    );
    assert!(
        rs.target("service-ips", &key("10.43.0.100", 9000))
            .is_some()
    );
}

#[test]
fn external_name_and_headless_services_are_absent() {
    let external: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]},
    }))
    .expect("valid");
    let headless = svc("db", "None", http(), json!({}));
    let rs = render_ruleset(
        &cfg(),
        &[external, headless],
        &[slice("db", http_target(), &[("10.42.0.2", true, "node-1")])],
        &[],
    );
    assert!(chains_with(&rs, "svc-").is_empty() && chains_with(&rs, "ep-").is_empty());
    assert!(
        rs.maps.values().all(BTreeMap::is_empty),
        "no map elements: {:?}",
        rs.maps
    );
}

#[test]
fn services_without_endpoints_are_rejected() {
    let np = json!([{"name": "http", "port": 80, "nodePort": 30080}]);
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", np, json!({"type": "NodePort"}))],
        &[],
        &[],
    );
    assert_eq!(
        rs.target("no-endpoint-services", &key("10.43.0.100", 80)),
        Some(REJECT_CHAIN)
    );
    assert_eq!(
        rs.target("no-endpoint-nodeports", &MapKey::Port(Protocol::Tcp, 30080)),
        Some(REJECT_CHAIN)
    );
    assert_eq!(rs.target("service-ips", &key("10.43.0.100", 80)), None);
}

#[test]
fn external_traffic_policy_local_uses_local_endpoints_without_masquerade() {
    let np = json!([{"name": "http", "port": 80, "nodePort": 30080}]);
    let spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.7"]});
    let eps = [("10.42.0.2", true, "node-1"), ("10.42.1.4", true, "node-2")];
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", np.clone(), spec.clone())],
        &[slice("web", http_target(), &eps)],
        &[],
    );
    let ext = rs
        .target("service-nodeports", &MapKey::Port(Protocol::Tcp, 30080))
        .expect("nodeport mapped");
    assert!(ext.starts_with("ext-"), "{ext}");
    assert_eq!(
        rs.target("service-ips", &key("192.0.2.7", 80)),
        Some(ext),
        "externalIP to the same chain"
    );
    let rules = rs.rules_json(ext).expect("ext chain");
    assert!(
        !rules.contains(MARK_CHAIN),
        "Local keeps the client address: {rules}"
    );
    assert!(
        !rules.contains("numgen") && rules.contains("10.42.0.2") && !rules.contains("10.42.1.4"),
        "one local endpoint: a plain goto to it: {rules}"
    );
    // The ClusterIP still balances over both.
    let svc_rules = rs
        .rules_json(
            rs.target("service-ips", &key("10.43.0.100", 80))
                .expect("svc"),
        )
        .expect("rules");
    assert!(svc_rules.contains(r#""mod":2"#), "{svc_rules}");

    // No local endpoint: external traffic is dropped, not sent elsewhere.
    let remote = [("10.42.1.4", true, "node-2")];
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", np, spec)],
        &[slice("web", http_target(), &remote)],
        &[],
    );
    let ext = rs
        .target("service-nodeports", &MapKey::Port(Protocol::Tcp, 30080))
        .expect("mapped");
    assert_eq!(rs.rules_json(ext).expect("rules"), r#"[[{"drop":null}]]"#);
}

#[test]
fn external_traffic_policy_cluster_is_masqueraded() {
    let np = json!([{"name": "http", "port": 80, "nodePort": 30080}]);
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", np, json!({"type": "NodePort"}))],
        &[slice(
            "web",
            http_target(),
            &[("10.42.1.4", true, "node-2")],
        )],
        &[],
    );
    let ext = rs
        .target("service-nodeports", &MapKey::Port(Protocol::Tcp, 30080))
        .expect("mapped");
    let rules = rs.rules_json(ext).expect("rules");
    let svc_chain = rs
        .target("service-ips", &key("10.43.0.100", 80))
        .expect("ClusterIP mapped");
    assert_eq!(
        rules,
        format!(
            r#"[[{{"jump":{{"target":"{MARK_CHAIN}"}}}}],[{{"goto":{{"target":"{svc_chain}"}}}}]]"#
        ),
        "marked, then the ClusterIP's pick over the same endpoints"
    );
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops() {
    let rs = render_ruleset(
        &cfg(),
        &[svc(
            "web",
            "10.43.0.100",
            http(),
            json!({"internalTrafficPolicy": "Local"}),
        )],
        &[slice(
            "web",
            http_target(),
            &[("10.42.1.4", true, "node-2")],
        )],
        &[],
    );
    assert_eq!(
        rs.target("no-endpoint-services", &key("10.43.0.100", 80)),
        Some(DROP_CHAIN)
    );
    assert_eq!(rs.target("service-ips", &key("10.43.0.100", 80)), None);
}

#[test]
fn client_ip_affinity_adds_a_timed_set_per_endpoint() {
    let spec = json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}});
    let eps = [("10.42.0.2", true, "node-1"), ("10.42.0.3", true, "node-1")];
    let rs = render_ruleset(
        &cfg(),
        &[svc("web", "10.43.0.100", http(), spec)],
        &[slice("web", http_target(), &eps)],
        &[],
    );
    assert_eq!(rs.sets.len(), 2);
    assert!(rs.sets.values().all(|t| *t == 60));
    let svc_rules = rs
        .rules_json(
            rs.target("service-ips", &key("10.43.0.100", 80))
                .expect("svc"),
        )
        .expect("rules");
    for set in rs.sets.keys() {
        assert!(
            svc_rules.contains(&format!("@{set}")),
            "service chain checks {set}: {svc_rules}"
        );
    }
    for ep in chains_with(&rs, "ep-") {
        assert!(
            rs.rules_json(ep)
                .expect("rules")
                .contains(r#""op":"update""#),
            "{ep} refreshes its set"
        );
    }
}

#[test]
fn cluster_dns_and_host_ports_are_dnated() {
    let mut c = cfg();
    c.dns = Some((
        "10.43.0.10".parse().expect("ip"),
        "10.42.0.1:53".parse().expect("addr"),
    ));
    let hp = HostPort {
        protocol: Protocol::Tcp,
        host_ip: None,
        host_port: 8443,
        pod_ip: "10.42.0.9".parse().expect("ip"),
        container_port: 443,
    };
    let rs = render_ruleset(&c, &[], &[], &[hp]);
    assert_eq!(
        rs.target(
            "service-ips",
            &MapKey::Addr(Ipv4Addr::new(10, 43, 0, 10), Protocol::Udp, 53)
        ),
        Some(DNS_CHAIN)
    );
    assert_eq!(
        rs.target("service-ips", &key("10.43.0.10", 53)),
        Some(DNS_CHAIN)
    );
    let hp_chain = rs
        .target("hostport-any", &MapKey::Port(Protocol::Tcp, 8443))
        .expect("hostport mapped");
    let rules = rs.rules_json(hp_chain).expect("rules");
    assert!(
        rules.contains("10.42.0.9") && rules.contains(r#""port":443"#),
        "{rules}"
    );
}

#[test]
fn ipv6_addresses_are_skipped() {
    let mut s = svc("web", "fd00::10", http(), json!({}));
    if let Some(spec) = s.spec.as_mut() {
        spec.cluster_ips = Some(vec!["fd00::10".into(), "10.43.0.100".into()]);
    }
    let hp = HostPort {
        protocol: Protocol::Udp,
        host_ip: Some("fd00::1".parse().expect("ip")),
        host_port: 53,
        pod_ip: "fd00::2".parse().expect("ip"),
        container_port: 53,
    };
    let rs = render_ruleset(
        &cfg(),
        &[s],
        &[slice("web", http_target(), &[("fd01::2", true, "node-1")])],
        &[hp],
    );
    assert_eq!(
        rs.target("no-endpoint-services", &key("10.43.0.100", 80)),
        Some(REJECT_CHAIN)
    );
    assert!(chains_with(&rs, "hostport-").is_empty());
}

#[test]
fn chain_names_stay_within_the_kernel_limit() {
    let long = "x".repeat(300);
    let name = chain_name("ep", &long);
    assert_eq!(name.len(), MAX_NAME);
    assert_ne!(
        name,
        chain_name("ep", &format!("{long}y")),
        "the hash tells cut names apart"
    );
    assert!(
        chain_name("svc", "a/b/tcp/http").starts_with("svc-")
            && chain_name("svc", "a/b/tcp/http").ends_with("-a/b/tcp/http")
    );
}

#[test]
fn rendering_is_deterministic() {
    let services = [
        svc("a", "10.43.0.1", http(), json!({})),
        svc("b", "10.43.0.2", http(), json!({})),
    ];
    let slices = [
        slice(
            "a",
            http_target(),
            &[("10.42.0.5", true, "node-1"), ("10.42.0.4", true, "node-2")],
        ),
        slice("b", http_target(), &[("10.42.0.6", true, "node-1")]),
    ];
    let one = render_ruleset(&cfg(), &services, &slices, &[]);
    let mut reversed = slices.clone();
    reversed.reverse();
    assert_eq!(one, render_ruleset(&cfg(), &services, &reversed, &[]));
    assert_eq!(
        plan_full(&one),
        plan_full(&render_ruleset(&cfg(), &services, &slices, &[]))
    );
}

#[test]
fn an_unchanged_state_plans_no_commands() {
    let services = [svc("a", "10.43.0.1", http(), json!({}))];
    let slices = [slice("a", http_target(), &[("10.42.0.5", true, "node-1")])];
    let rs = render_ruleset(&cfg(), &services, &slices, &[]);
    let cmds = plan_update(
        &rs,
        &rs.clone(),
        &mut Stale::default(),
        Instant::now(),
        STALE_CHAIN_DELAY,
    );
    assert!(cmds.is_empty(), "{cmds:?}");
}

#[test]
fn an_endpoint_change_touches_only_that_service() {
    let services = [
        svc("a", "10.43.0.1", http(), json!({})),
        svc("b", "10.43.0.2", http(), json!({})),
    ];
    let before = [
        slice(
            "a",
            http_target(),
            &[("10.42.0.4", true, "node-1"), ("10.42.0.5", true, "node-1")],
        ),
        slice("b", http_target(), &[("10.42.0.6", true, "node-1")]),
    ];
    let after = [
        slice(
            "a",
            http_target(),
            &[("10.42.0.4", true, "node-1"), ("10.42.0.7", true, "node-1")],
        ),
        before[1].clone(),
    ];
    let old = render_ruleset(&cfg(), &services, &before, &[]);
    let new = render_ruleset(&cfg(), &services, &after, &[]);
    let mut stale = Stale::default();
    let t0 = Instant::now();
    let cmds: Vec<String> = plan_update(&old, &new, &mut stale, t0, STALE_CHAIN_DELAY)
        .iter()
        .map(ToString::to_string)
        .collect();
    let svc_a = chain_name("svc", "default/a/tcp/http");
    let ep_new = chain_name("ep", "default/a/tcp/http__10.42.0.7/8080");
    let ep_old = chain_name("ep", "default/a/tcp/http__10.42.0.5/8080");
    assert_eq!(
        cmds,
        vec![
            format!("add chain {ep_new}"),
            format!("flush chain {svc_a}"),
            format!("add rule {ep_new}"),
            format!("add rule {svc_a}"),
            format!("add rule {svc_a}"),
            format!("add rule {svc_a}"),
            "delete element hairpin { 10.42.0.5 . 10.42.0.5 }".to_owned(),
            "add element hairpin { 10.42.0.7 . 10.42.0.7 }".to_owned(),
            format!("flush chain {ep_old}"),
        ],
        "only service a's chains change; its ClusterIP element still points at the same chain"
    );
    assert!(stale.chains.contains_key(&ep_old));

    // A later sync, once the delay has passed, deletes the flushed chain.
    let later = t0 + STALE_CHAIN_DELAY;
    let cmds: Vec<String> = plan_update(&new, &new, &mut stale, later, STALE_CHAIN_DELAY)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cmds, vec![format!("delete chain {ep_old}")]);
    assert!(stale.chains.is_empty());
}

/// Re-render into `cache`: the whole table and how many Services were rendered.
fn render(
    cache: &mut Rendered,
    services: &[Service],
    slices: &[EndpointSlice],
    host_ports: &[HostPort],
) -> (Ruleset, usize) {
    let delta = cache.update(&cfg(), services, slices, host_ports);
    (cache.ruleset(&cfg()), delta.rendered)
}

#[test]
fn an_unchanged_service_is_not_rendered_again() {
    let services = [
        svc("a", "10.43.0.1", http(), json!({})),
        svc("b", "10.43.0.2", http(), json!({})),
    ];
    let mut slices = vec![
        slice("a", http_target(), &[("10.42.0.4", true, "node-1")]),
        slice("b", http_target(), &[("10.42.0.6", true, "node-1")]),
    ];
    let mut cache = Rendered::default();
    let (first, rendered) = render(&mut cache, &services, &slices, &[]);
    assert_eq!(rendered, 2, "an empty cache renders every Service");
    assert_eq!(first, render_ruleset(&cfg(), &services, &slices, &[]));

    let (again, rendered) = render(&mut cache, &services, &slices, &[]);
    assert_eq!(rendered, 0, "nothing changed, nothing is rendered");
    assert_eq!(again, first);

    slices[0] = slice("a", http_target(), &[("10.42.0.5", true, "node-1")]);
    let (changed, rendered) = render(&mut cache, &services, &slices, &[]);
    assert_eq!(rendered, 1, "only Service a's slice changed");
    assert_eq!(changed, render_ruleset(&cfg(), &services, &slices, &[]));

    // A removed Service leaves the cache; coming back, it is rendered again.
    let (only_b, rendered) = render(&mut cache, &services[1..], &slices, &[]);
    assert_eq!(rendered, 0);
    assert_eq!(only_b, render_ruleset(&cfg(), &services[1..], &slices, &[]));
    let (_, rendered) = render(&mut cache, &services, &slices, &[]);
    assert_eq!(rendered, 1);
}

#[test]
fn objects_with_a_resource_version_are_compared_by_it() {
    let versioned = |mut o: serde_json::Value, rv: &str| {
        o["metadata"]["uid"] = json!("u-1");
        o["metadata"]["resourceVersion"] = json!(rv);
        o
    };
    let service: Service = serde_json::from_value(versioned(
        serde_json::to_value(svc("a", "10.43.0.1", http(), json!({}))).expect("json"),
        "1",
    ))
    .expect("Service");
    let ep = |ip: &str, rv: &str| -> EndpointSlice {
        let s = slice("a", http_target(), &[(ip, true, "node-1")]);
        serde_json::from_value(versioned(serde_json::to_value(s).expect("json"), rv))
            .expect("EndpointSlice")
    };
    let services = [service];
    let mut cache = Rendered::default();
    render(&mut cache, &services, &[ep("10.42.0.4", "2")], &[]);
    let (_, rendered) = render(&mut cache, &services, &[ep("10.42.0.4", "2")], &[]);
    assert_eq!(rendered, 0, "same uid and resourceVersion");
    let (rs, rendered) = render(&mut cache, &services, &[ep("10.42.0.5", "3")], &[]);
    assert_eq!(rendered, 1, "the slice's resourceVersion moved");
    assert!(
        chains_with(&rs, "ep-")
            .iter()
            .all(|c| c.contains("10.42.0.5"))
    );
}

#[test]
fn losing_all_endpoints_moves_the_cluster_ip_to_the_reject_map() {
    let services = [svc("a", "10.43.0.1", http(), json!({}))];
    let old = render_ruleset(
        &cfg(),
        &services,
        &[slice("a", http_target(), &[("10.42.0.4", true, "n")])],
        &[],
    );
    let new = render_ruleset(
        &cfg(),
        &services,
        &[slice("a", http_target(), &[("10.42.0.4", false, "n")])],
        &[],
    );
    let cmds: Vec<String> = plan_update(
        &old,
        &new,
        &mut Stale::default(),
        Instant::now(),
        STALE_CHAIN_DELAY,
    )
    .iter()
    .map(ToString::to_string)
    .collect();
    let svc_a = chain_name("svc", "default/a/tcp/http");
    assert!(
        cmds.contains(&"delete element service-ips { 10.43.0.1 . tcp . 80 }".to_owned()),
        "{cmds:?}"
    );
    assert!(
        cmds.contains(
            &"add element no-endpoint-services { 10.43.0.1 . tcp . 80 : goto reject-chain }"
                .to_owned()
        ),
        "{cmds:?}"
    );
    assert!(cmds.contains(&format!("flush chain {svc_a}")), "{cmds:?}");
}

/// What the kernel holds after a series of transactions, applied the way
/// nf_tables does, failing where nft would refuse a command.
#[derive(Debug, Default)]
struct Model {
    chains: BTreeMap<String, Vec<Vec<Statement<'static>>>>,
    maps: BTreeMap<&'static str, BTreeMap<MapKey, String>>,
    sets: BTreeSet<String>,
}

impl Model {
    fn apply(&mut self, cmds: &[Cmd]) {
        for cmd in cmds {
            match cmd {
                Cmd::AddTable => {}
                Cmd::DeleteTable => *self = Self::default(),
                Cmd::AddMap(m) => {
                    self.maps.entry(m.name).or_default();
                }
                Cmd::AddSet(n, _) => {
                    self.sets.insert(n.clone());
                }
                Cmd::DeleteSet(n) => assert!(self.sets.remove(n), "delete of a missing set {n}"),
                Cmd::AddChain(n, _) => {
                    self.chains.entry(n.clone()).or_default();
                }
                Cmd::FlushChain(n) => self
                    .chains
                    .get_mut(n)
                    .unwrap_or_else(|| panic!("flush of a missing chain {n}"))
                    .clear(),
                Cmd::DeleteChain(n) => {
                    let rules = self.chains.remove(n);
                    assert!(rules.is_some(), "delete of a missing chain {n}");
                    assert!(
                        rules.is_some_and(|r| r.is_empty()),
                        "delete of a chain with rules {n}"
                    );
                }
                Cmd::AddRule(n, r) => self
                    .chains
                    .get_mut(n)
                    .unwrap_or_else(|| panic!("rule for a missing chain {n}"))
                    .push(r.clone()),
                Cmd::AddElements(m, elems) => {
                    for (k, v) in elems {
                        assert!(
                            !m.verdict || self.chains.contains_key(v),
                            "element {k} goes to a missing chain {v}"
                        );
                        let map = self.maps.get_mut(m.name).expect("map exists");
                        assert!(
                            map.insert(k.clone(), v.clone()).is_none(),
                            "element {k} exists already"
                        );
                    }
                }
                Cmd::DeleteElements(m, keys) => {
                    for k in keys {
                        let map = self.maps.get_mut(m.name).expect("map exists");
                        assert!(map.remove(k).is_some(), "delete of a missing element {k}");
                    }
                }
            }
        }
        // Every jump, goto and set a rule names exists.
        for rules in self.chains.values() {
            let text = serde_json::to_string(rules).expect("rules serialise");
            for target in text.split(r#""target":""#).skip(1) {
                let name = target.split('"').next().unwrap_or_default();
                assert!(
                    self.chains.contains_key(name),
                    "a rule goes to a missing chain {name}"
                );
            }
            for set in text.split(r#""@"#).skip(1) {
                let name = set.split('"').next().unwrap_or_default();
                assert!(
                    self.sets.contains(name) || self.maps.contains_key(name),
                    "a rule uses a missing set {name}"
                );
            }
        }
    }

    /// Does it hold `rs` (plus empty chains and unused sets waiting to be deleted)?
    fn assert_holds(&self, rs: &Ruleset) {
        for (name, chain) in &rs.chains {
            assert_eq!(
                self.chains.get(name),
                Some(chain.rules.as_ref()),
                "chain {name}"
            );
        }
        for (name, rules) in &self.chains {
            assert!(
                rs.chains.contains_key(name) || rules.is_empty(),
                "chain {name} is neither wanted nor empty"
            );
        }
        let wanted: BTreeMap<&str, &BTreeMap<MapKey, String>> = rs
            .maps
            .iter()
            .map(|(m, e)| (m.name, e))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        let held: BTreeMap<&str, &BTreeMap<MapKey, String>> = self
            .maps
            .iter()
            .map(|(m, e)| (*m, e))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        assert_eq!(held, wanted, "map elements");
        for name in rs.sets.keys() {
            assert!(self.sets.contains(name), "set {name} missing");
        }
    }
}

/// Service `i` of a small cluster, as a test case shapes it: a type, maybe
/// ClientIP affinity, maybe an external IP (shared by services 1 and 2,
/// or the cluster DNS address, so claims clash), and ready/not-ready
/// endpoints out of a few addresses.
#[derive(Clone, Debug)]
struct Shape {
    present: bool,
    node_port: bool,
    affinity: bool,
    external: Option<&'static str>,
    endpoints: Vec<(u8, bool)>,
}

fn objects(shapes: &[Shape]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for (i, sh) in shapes.iter().enumerate().filter(|(_, s)| s.present) {
        let name = format!("s{i}");
        // Service 3 holds the cluster DNS address and port.
        let (ip, port) = if i == 3 {
            ("10.43.0.10".to_owned(), 53)
        } else {
            (format!("10.43.1.{i}"), 80)
        };
        let mut extra = json!({});
        let mut ports = json!([{"name": "http", "port": port, "protocol": "TCP"}]);
        if sh.node_port {
            extra["type"] = json!("NodePort");
            ports[0]["nodePort"] = json!(30000 + i);
        }
        if sh.affinity {
            extra["sessionAffinity"] = json!("ClientIP");
        }
        if let Some(ip) = sh.external {
            extra["externalIPs"] = json!([ip]);
        }
        services.push(svc(&name, &ip, ports, extra));
        let eps: Vec<(String, bool)> = sh
            .endpoints
            .iter()
            .map(|(e, ready)| (format!("10.42.0.{}", 10 * i + usize::from(*e)), *ready))
            .collect();
        let eps: Vec<(&str, bool, &str)> = eps
            .iter()
            .map(|(ip, r)| (ip.as_str(), *r, "node-1"))
            .collect();
        slices.push(slice(&name, http_target(), &eps));
    }
    (services, slices)
}

fn shape() -> impl proptest::strategy::Strategy<Value = Shape> {
    use proptest::prelude::*;
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["192.168.1.50", "10.43.0.10"])),
        prop::collection::vec((0u8..4, any::<bool>()), 0..4),
    )
        .prop_map(
            |(present, node_port, affinity, external, endpoints)| Shape {
                present,
                node_port,
                affinity,
                external,
                endpoints,
            },
        )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever sequence of changes the cluster goes through, the updates
    /// the proxy plans from what changed leave the kernel holding exactly
    /// what a full render of the current state asks for.
    #[test]
    fn incremental_updates_reach_what_a_full_render_wants(
        steps in proptest::collection::vec(proptest::collection::vec(shape(), 5), 1..6),
        host_port in proptest::prelude::any::<bool>(),
    ) {
        let mut c = cfg();
        c.dns = Some(("10.43.0.10".parse().expect("ip"), "10.42.0.1:53".parse().expect("addr")));
        let mut proxy = Proxy::new(c.clone());
        let mut model = Model::default();
        let t0 = Instant::now();
        for (n, shapes) in steps.iter().enumerate() {
            let (services, slices) = objects(shapes);
            let ports = if host_port && n % 2 == 1 {
                vec![HostPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    pod_ip: "10.42.0.99".parse().expect("ip"),
                    container_port: 80,
                }]
            } else {
                Vec::new()
            };
            // Half a stale delay per step: stale chains wait one step, then go.
            let now = t0 + STALE_CHAIN_DELAY / 2 * u32::try_from(n).expect("few steps");
            let plan = proxy.plan(&services, &slices, &ports, now);
            proptest::prop_assert_eq!(plan.full, n == 0);
            model.apply(&plan.cmds);
            proxy.applied(plan);
            model.assert_holds(&render_ruleset(&c, &services, &slices, &ports));
        }
    }
}

#[test]
fn a_map_key_two_services_claim_goes_to_the_last_by_name_whatever_the_order() {
    let shared = json!({"externalIPs": ["192.168.1.50"]});
    let services = [
        svc("b", "10.43.0.2", http(), shared.clone()),
        svc("a", "10.43.0.1", http(), shared),
    ];
    let slices = [
        slice("a", http_target(), &[("10.42.0.4", true, "node-1")]),
        slice("b", http_target(), &[("10.42.0.5", true, "node-1")]),
    ];
    let mut reversed = services.clone();
    reversed.reverse();
    for order in [&services, &reversed] {
        let rs = render_ruleset(&cfg(), order, &slices, &[]);
        assert_eq!(
            rs.target("service-ips", &key("192.168.1.50", 80)),
            Some(chain_name("ext", "default/b/tcp/http").as_str()),
            "default/b wins over default/a"
        );
    }
    // When b goes, a's claim takes the key over.
    let mut proxy = Proxy::new(cfg());
    let plan = proxy.plan(&services, &slices, &[], Instant::now());
    proxy.applied(plan);
    let plan = proxy.plan(&services[1..], &slices, &[], Instant::now());
    let cmds: Vec<String> = plan.cmds.iter().map(ToString::to_string).collect();
    let ext_a = chain_name("ext", "default/a/tcp/http");
    assert!(
        cmds.contains(&format!(
            "add element service-ips {{ 192.168.1.50 . tcp . 80 : goto {ext_a} }}"
        )),
        "{cmds:?}"
    );
}

// ---------------------------------------------------------------------------
// Kernel tests: each in its own network namespace.
// ---------------------------------------------------------------------------

/// A fresh namespace, or `None` (with a message) when nft is not installed.
fn test_ns(tag: &str) -> Option<NetNs> {
    if !have_nft() {
        eprintln!("skipping: nft is not installed (apt-get install nftables)");
        return None;
    }
    Some(
        NetNs::create(tag)
            .unwrap_or_else(|e| panic!("cannot create a test netns (needs root): {e}")),
    )
}

fn list_table(ns: &NetNs) -> String {
    ns.sh(&["nft", "-j", "list", "table", "ip", "orch"])
        .expect("nft list table ip orch")
}

#[test]
fn kernel_full_sync_then_no_op_then_endpoint_update() {
    let Some(ns) = test_ns("sync") else { return };
    // `api` is a NodePort with two endpoints: the random-pick cascade and
    // the NodePort chain reusing the ClusterIP's pick go through the kernel.
    let services = [
        svc(
            "web",
            "10.43.0.100",
            http(),
            json!({"sessionAffinity": "ClientIP"}),
        ),
        svc(
            "api",
            "10.43.0.101",
            json!([{"name": "http", "port": 80, "nodePort": 30081}]),
            json!({"type": "NodePort"}),
        ),
    ];
    let api = slice(
        "api",
        http_target(),
        &[("10.42.0.8", true, "node-1"), ("10.42.0.9", true, "node-2")],
    );
    let before = [
        slice("web", http_target(), &[("10.42.0.2", true, "node-1")]),
        api.clone(),
    ];
    let after = [
        slice("web", http_target(), &[("10.42.0.3", true, "node-1")]),
        api,
    ];
    let mut c = cfg();
    c.dns = Some((
        "10.43.0.10".parse().expect("ip"),
        "10.42.0.1:53".parse().expect("addr"),
    ));
    let mut proxy = Proxy::new(c);
    proxy.stale_delay = Duration::ZERO;

    let stats = ns
        .run(|| proxy.sync(&services, &before, &[]))
        .expect("full sync");
    assert!(stats.full && stats.commands > 0);
    let listed = list_table(&ns);
    let svc_chain = chain_name("svc", "default/web/tcp/http");
    let ep_old = chain_name("ep", "default/web/tcp/http__10.42.0.2/8080");
    for name in [
        "service-ips",
        "service-nodeports",
        "no-endpoint-services",
        "masquerading",
        svc_chain.as_str(),
        ep_old.as_str(),
    ] {
        assert!(
            listed.contains(&format!(r#""name": "{name}""#)),
            "{name} missing from the table: {listed}"
        );
    }
    // NodePorts on the node's address only; hostPorts on every local one.
    let text = ns
        .sh(&["nft", "list", "chain", "ip", "orch", "nat-prerouting"])
        .expect("list the prerouting chain");
    assert!(
        text.contains("ip daddr 192.168.1.10 meta l4proto . th dport vmap @service-nodeports"),
        "{text}"
    );
    assert!(!text.contains("fib daddr type local"), "{text}");
    let text = ns
        .sh(&["nft", "list", "chain", "ip", "orch", "hostports"])
        .expect("list the hostports chain");
    assert!(text.contains("fib daddr type local"), "{text}");
    let api_svc = chain_name("svc", "default/api/tcp/http");
    let api_ext = chain_name("ext", "default/api/tcp/http");
    let text = ns
        .sh(&["nft", "list", "chain", "ip", "orch", &api_ext])
        .expect("list the api NodePort chain");
    assert!(
        text.contains(&format!("goto {api_svc}")),
        "NodePort chain goes to the ClusterIP's pick: {text}"
    );
    let text = ns
        .sh(&["nft", "list", "chain", "ip", "orch", &api_svc])
        .expect("list the api service chain");
    assert!(
        text.contains("numgen random mod 2 0 goto"),
        "a cascade over the two endpoints: {text}"
    );
    assert_eq!(
        text.matches("goto ep-").count(),
        2,
        "each endpoint once: {text}"
    );

    let stats = ns
        .run(|| proxy.sync(&services, &before, &[]))
        .expect("no-op sync");
    assert!(!stats.full);
    assert_eq!(stats.commands, 0, "nothing changed, nothing sent");
    assert_eq!(stats.rendered, 0, "no Service is rendered again");

    let stats = ns
        .run(|| proxy.sync(&services, &after, &[]))
        .expect("update");
    assert!(!stats.full && stats.commands > 0);
    let listed = list_table(&ns);
    assert!(listed.contains("10.42.0.3"), "new endpoint programmed");

    // Delay is zero here: the next sync deletes the flushed chain and set.
    let stats = ns
        .run(|| proxy.sync(&services, &after, &[]))
        .expect("stale removal");
    assert_eq!(
        stats.commands, 2,
        "delete the stale chain and its affinity set"
    );
    let listed = list_table(&ns);
    assert!(!listed.contains(&ep_old), "stale endpoint chain deleted");
    assert!(!listed.contains("10.42.0.2"), "old endpoint gone");
}

/// What `nft -j list table ip orch` shows, by object and without handles:
/// each chain, each chain's rules in order, each set and map with its
/// elements sorted. Two tables built differently compare equal when they
/// hold the same.
fn table_contents(ns: &NetNs) -> BTreeMap<String, serde_json::Value> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("handle");
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut listed: serde_json::Value =
        serde_json::from_str(&list_table(ns)).expect("nft prints JSON");
    strip(&mut listed);
    let mut out = BTreeMap::new();
    for item in listed["nftables"].as_array().expect("a list").iter() {
        let Some((kind, obj)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let mut obj = obj.clone();
        match kind.as_str() {
            "chain" | "set" | "map" => {
                if let Some(elems) = obj.get_mut("elem").and_then(|e| e.as_array_mut()) {
                    elems.sort_by_key(ToString::to_string);
                }
                out.insert(format!("{kind} {}", obj["name"]), obj);
            }
            "rule" => {
                let rules = out
                    .entry(format!("rules of {}", obj["chain"]))
                    .or_insert_with(|| json!([]));
                rules
                    .as_array_mut()
                    .expect("a list")
                    .push(obj["expr"].clone());
            }
            _ => {}
        }
    }
    out
}

#[test]
fn kernel_loads_and_updates_over_netlink_leave_what_nft_loads() {
    let shape = |node_port, affinity, external, endpoints: &[(u8, bool)]| Shape {
        present: true,
        node_port,
        affinity,
        external,
        endpoints: endpoints.to_vec(),
    };
    let gone = Shape {
        present: false,
        node_port: false,
        affinity: false,
        external: None,
        endpoints: Vec::new(),
    };
    let before = [
        shape(true, true, None, &[(0, true), (1, true)]),
        shape(false, false, Some("192.168.1.50"), &[(0, true)]),
        shape(false, false, None, &[]),
        shape(false, false, None, &[(0, true)]),
        gone.clone(),
    ];
    let after = [
        shape(true, false, None, &[(1, true), (2, true)]),
        gone,
        shape(true, false, None, &[(0, true)]),
        shape(false, false, None, &[(0, true)]),
        shape(true, true, Some("192.168.1.50"), &[(0, true), (3, false)]),
    ];
    let host_ports = [HostPort {
        protocol: Protocol::Udp,
        host_ip: Some("192.168.1.10".parse().expect("ip")),
        host_port: 5353,
        pod_ip: "10.42.0.99".parse().expect("ip"),
        container_port: 53,
    }];
    // A byte-aligned cluster CIDR compares two bytes, a /17 masks first.
    for prefix in [16, 17] {
        let Some(updated) = test_ns(&format!("nl{prefix}")) else {
            return;
        };
        let loaded = NetNs::create(&format!("nft{prefix}")).expect("a second test netns");
        let mut c = cfg();
        c.cluster_cidr = (Ipv4Addr::new(10, 42, 0, 0), prefix);
        c.dns = Some((
            "10.43.0.10".parse().expect("ip"),
            "10.42.0.1:53".parse().expect("addr"),
        ));
        let (services, slices) = objects(&before);
        let mut proxy = Proxy::new(c.clone());
        proxy.stale_delay = Duration::ZERO;
        let stats = updated
            .run(|| proxy.sync(&services, &slices, &[]))
            .expect("full sync over netlink");
        assert!(stats.full && stats.netlink, "{stats:?}");
        let (services, slices) = objects(&after);
        let stats = updated
            .run(|| proxy.sync(&services, &slices, &host_ports))
            .expect("update over netlink");
        assert!(
            !stats.full && stats.netlink && stats.commands > 0,
            "{stats:?}"
        );
        // Stale chains and sets go in the next one, also over netlink.
        let stats = updated
            .run(|| proxy.sync(&services, &slices, &host_ports))
            .expect("stale deletion over netlink");
        assert!(stats.netlink && stats.commands > 0, "{stats:?}");

        // The same state loaded by nft from the JSON the nftables crate writes.
        let cmds = plan_full(&render_ruleset(&c, &services, &slices, &host_ports));
        loaded
            .run(|| run_nft("full resync", &cmds))
            .expect("nft loads the new state");
        let (got, want) = (table_contents(&updated), table_contents(&loaded));
        for (k, v) in &want {
            assert_eq!(got.get(k), Some(v), "/{prefix}: {k}");
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "/{prefix}: the same objects"
        );
    }
}

#[test]
fn kernel_failed_update_names_the_refused_command_and_forces_full_resync() {
    let Some(ns) = test_ns("fail") else { return };
    let services = [svc("web", "10.43.0.100", http(), json!({}))];
    let before = [slice(
        "web",
        http_target(),
        &[("10.42.0.2", true, "node-1")],
    )];
    let after = [slice(
        "web",
        http_target(),
        &[("10.42.0.3", true, "node-1")],
    )];
    let mut proxy = Proxy::new(cfg());
    ns.run(|| proxy.sync(&services, &before, &[]))
        .expect("full sync");
    // Someone removes our table behind our back: the incremental update fails.
    ns.sh(&["nft", "delete", "table", "ip", "orch"])
        .expect("delete table");
    let err = ns
        .run(|| proxy.sync(&services, &after, &[]))
        .expect_err("update of a missing table");
    let msg = err.to_string();
    assert!(
        msg.starts_with("nf_tables refused the update of ")
            && msg.contains(" commands at command 0 (add chain ep-"),
        "{msg}"
    );
    assert!(
        msg.contains("No such file or directory"),
        "carries the kernel's error: {msg}"
    );
    let stats = ns
        .run(|| proxy.sync(&services, &after, &[]))
        .expect("full resync");
    assert!(stats.full, "a failed sync makes the next one a full resync");
    assert!(list_table(&ns).contains("10.42.0.3"));
}

#[test]
fn kernel_nft_refusals_carry_its_message() {
    let Some(ns) = test_ns("nftfail") else { return };
    let cmds = [
        Cmd::AddTable,
        Cmd::AddRule("no-such-chain".into(), vec![Statement::Drop(None)]),
    ];
    let err = ns
        .run(|| run_nft("update", &cmds))
        .expect_err("a rule for a missing chain");
    let msg = err.to_string();
    assert!(
        msg.starts_with("nft rejected the update transaction of 2 commands: "),
        "{msg}"
    );
    assert!(
        msg.contains("Could not process rule: No such file or directory"),
        "nft's stderr: {msg}"
    );
}

#[test]
fn kernel_cleanup_removes_only_orch_tables() {
    let Some(ns) = test_ns("cleanup") else { return };
    ns.sh(&["nft", "add", "table", "ip", "other"])
        .expect("foreign table");
    ns.sh(&["nft", "add", "table", "inet", "orch"])
        .expect("inet orch table");
    let mut proxy = Proxy::new(cfg());
    ns.run(|| proxy.sync(&[], &[], &[])).expect("full sync");
    ns.run(cleanup).expect("cleanup");
    ns.run(cleanup).expect("cleanup is idempotent");
    let tables = ns.sh(&["nft", "list", "tables"]).expect("list tables");
    assert_eq!(
        tables.trim(),
        "table ip other",
        "only the foreign table is left"
    );
}

#[test]
fn kernel_traffic_reaches_the_endpoint_and_is_rejected_without_one() {
    use std::io::Read;
    use std::net::{SocketAddrV4, TcpListener, TcpStream};

    let Some(node) = test_ns("node") else { return };
    let pod = NetNs::create("pod").expect("pod netns");
    let sh = |ns: &NetNs, cmd: &str| {
        ns.sh(&cmd.split(' ').collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    };
    sh(
        &node,
        &format!(
            "ip link add pxt-node type veth peer name pxt-pod netns {}",
            pod.name()
        ),
    );
    sh(&node, "ip addr add 10.42.0.1/24 dev pxt-node");
    sh(&node, "ip link set pxt-node up");
    sh(&node, "ip route add 10.43.0.0/16 dev pxt-node");
    sh(&pod, "ip addr add 10.42.0.2/24 dev pxt-pod");
    sh(&pod, "ip link set pxt-pod up");
    sh(&pod, "ip route add default via 10.42.0.1");

    let listener = pod
        .run(|| TcpListener::bind("10.42.0.2:8080"))
        .expect("listen in the pod");
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        std::io::Write::write_all(&mut conn, format!("hello {}", peer.ip()).as_bytes())
            .expect("write");
    });

    let services = [svc("web", "10.43.0.100", http(), json!({}))];
    let ready = [slice(
        "web",
        http_target(),
        &[("10.42.0.2", true, "node-1")],
    )];
    let not_ready = [slice(
        "web",
        http_target(),
        &[("10.42.0.2", false, "node-1")],
    )];
    let target = std::net::SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 43, 0, 100), 80));
    let mut proxy = Proxy::new(cfg());

    node.run(|| proxy.sync(&services, &ready, &[]))
        .expect("sync");
    let reply = node.run(|| {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .expect("connect to the ClusterIP");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read");
        buf
    });
    assert_eq!(
        reply, "hello 10.42.0.1",
        "the pod answered through the ClusterIP"
    );
    server.join().expect("server thread");

    node.run(|| proxy.sync(&services, &not_ready, &[]))
        .expect("sync");
    let err = node
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .expect_err("no endpoint: connect must fail");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "rejected, not timed out: {err}"
    );
}
