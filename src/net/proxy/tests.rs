//! Pure tests of rendering and planning, then kernel tests that each run in
//! their own throw-away network namespaces (they need root and `nft`).

use super::*;
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
            format!("add rule {ep_new}"),
            format!("add rule {svc_a}"),
            format!("add rule {svc_a}"),
            format!("add rule {svc_a}"),
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
    let mut cache = RenderCache::default();
    let (first, rendered) = cache.render(&cfg(), &services, &slices, &[]);
    assert_eq!(rendered, 2, "an empty cache renders every Service");
    assert_eq!(first, render_ruleset(&cfg(), &services, &slices, &[]));

    let (again, rendered) = cache.render(&cfg(), &services, &slices, &[]);
    assert_eq!(rendered, 0, "nothing changed, nothing is rendered");
    assert_eq!(again, first);

    slices[0] = slice("a", http_target(), &[("10.42.0.5", true, "node-1")]);
    let (changed, rendered) = cache.render(&cfg(), &services, &slices, &[]);
    assert_eq!(rendered, 1, "only Service a's slice changed");
    assert_eq!(changed, render_ruleset(&cfg(), &services, &slices, &[]));

    // A removed Service leaves the cache; coming back, it is rendered again.
    let (only_b, rendered) = cache.render(&cfg(), &services[1..], &slices, &[]);
    assert_eq!(rendered, 0);
    assert_eq!(only_b, render_ruleset(&cfg(), &services[1..], &slices, &[]));
    let (_, rendered) = cache.render(&cfg(), &services, &slices, &[]);
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
    let mut cache = RenderCache::default();
    cache.render(&cfg(), &services, &[ep("10.42.0.4", "2")], &[]);
    let (_, rendered) = cache.render(&cfg(), &services, &[ep("10.42.0.4", "2")], &[]);
    assert_eq!(rendered, 0, "same uid and resourceVersion");
    let (rs, rendered) = cache.render(&cfg(), &services, &[ep("10.42.0.5", "3")], &[]);
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

#[test]
fn kernel_failed_sync_reports_nft_error_and_forces_full_resync() {
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
        msg.starts_with("nft rejected the update transaction of"),
        "{msg}"
    );
    assert!(
        msg.contains("No such file or directory"),
        "carries nft's stderr: {msg}"
    );
    let stats = ns
        .run(|| proxy.sync(&services, &after, &[]))
        .expect("full resync");
    assert!(stats.full, "a failed sync makes the next one a full resync");
    assert!(list_table(&ns).contains("10.42.0.3"));
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
