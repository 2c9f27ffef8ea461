//! Tests of cluster DNS: the zone's records and lookups, answers over UDP
//! and TCP, and forwarding to upstreams.

use super::forwarder::*;
use super::zone::*;
use super::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, NS, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("test service is valid")
}

fn slice(value: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(value).expect("test endpointslice is valid")
}

fn cluster_ip_service() -> Service {
    service(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "clusterIP": "10.43.0.20",
            "clusterIPs": ["10.43.0.20", "fd00:43::20"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 9000}
            ]
        }
    }))
}

fn headless_service(name: &str, publish_not_ready: bool) -> Service {
    service(json!({
        "metadata": {"name": name, "namespace": "db"},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": publish_not_ready,
            "ports": [{"name": "pg", "port": 5432}]
        }
    }))
}

fn headless_slice(service: &str) -> EndpointSlice {
    slice(json!({
        "metadata": {"name": format!("{service}-abc"), "namespace": "db",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "pg-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.1.6"], "hostname": "pg-1"},
            {"addresses": ["10.42.2.7"], "conditions": {"ready": true}},
            {"addresses": ["10.42.3.8"], "hostname": "pg-3", "conditions": {"ready": false}}
        ]
    }))
}

fn external_service() -> Service {
    service(json!({
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "www.example.com"}
    }))
}

fn cluster_dns() -> Arc<Dns> {
    let dns = Dns::new("cluster.local", Vec::new());
    dns.update(
        &[
            cluster_ip_service(),
            headless_service("pg", false),
            headless_service("pg-all", true),
            headless_service("empty", false),
            external_service(),
        ],
        &[headless_slice("pg"), headless_slice("pg-all")],
    );
    dns
}

fn query_bytes(name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = 0x1234;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("test name"),
        qtype,
    ));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        msg.set_edns(edns);
    }
    msg.to_vec().expect("test query encodes")
}

async fn ask_with(dns: &Dns, name: &str, qtype: RecordType, over_tcp: bool) -> Message {
    let reply = dns.answer(&query_bytes(name, qtype, None), over_tcp).await;
    Message::from_vec(&reply).expect("reply parses")
}

async fn ask(dns: &Dns, name: &str, qtype: RecordType) -> Message {
    ask_with(dns, name, qtype, false).await
}

fn answer_ips(msg: &Message) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().expect("test ip")).collect();
    v.sort();
    v
}

fn names_of(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(PTR(n)) | RData::CNAME(CNAME(n)) => Some(n.to_ascii()),
            RData::SRV(srv) => Some(format!("{} {}", srv.port, srv.target.to_ascii())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn assert_negative(msg: &Message, rcode: ResponseCode) {
    assert_eq!(msg.metadata.response_code, rcode);
    assert!(
        msg.metadata.authoritative,
        "negative answers are authoritative"
    );
    assert!(msg.answers.is_empty(), "no answers: {msg}");
    assert!(
        matches!(msg.authorities.as_slice(), [r] if matches!(r.data, RData::SOA(_))
            && r.name.to_ascii() == "cluster.local."),
        "the zone's SOA is in the authority section: {msg}"
    );
}

#[tokio::test]
async fn cluster_ip_service_answers_a_and_aaaa_authoritatively() {
    let dns = cluster_dns();
    let a = ask(&dns, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative && a.metadata.recursion_available);
    assert!(a.metadata.recursion_desired, "RD is copied from the query");
    assert_eq!(a.metadata.id, 0x1234);
    assert_eq!(a.queries.len(), 1, "the question is echoed");
    assert_eq!(answer_ips(&a), ips(&["10.43.0.20"]));
    assert!(a.answers.iter().all(|r| r.ttl == TTL));
    let aaaa = ask(&dns, "web.default.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(answer_ips(&aaaa), ips(&["fd00:43::20"]));
}

#[tokio::test]
async fn names_are_case_insensitive_and_the_question_is_echoed() {
    let dns = cluster_dns();
    let msg = ask(&dns, "WeB.DEFAULT.Svc.Cluster.LOCAL.", RecordType::A).await;
    assert_eq!(answer_ips(&msg), ips(&["10.43.0.20"]));
    assert_eq!(
        msg.queries[0].name().to_ascii(),
        "WeB.DEFAULT.Svc.Cluster.LOCAL."
    );
}

#[tokio::test]
async fn headless_service_answers_ready_endpoints_only() {
    let dns = cluster_dns();
    let msg = ask(&dns, "pg.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    // ready: true and ready unset count; ready: false does not.
    assert_eq!(
        answer_ips(&msg),
        ips(&["10.42.0.5", "10.42.1.6", "10.42.2.7"])
    );
    let all = ask(&dns, "pg-all.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        answer_ips(&all),
        ips(&["10.42.0.5", "10.42.1.6", "10.42.2.7", "10.42.3.8"]),
        "publishNotReadyAddresses publishes not-ready endpoints too"
    );
    let none = ask(&dns, "empty.db.svc.cluster.local.", RecordType::A).await;
    assert_negative(&none, ResponseCode::NXDomain);
}

#[tokio::test]
async fn statefulset_hostnames_and_ip_names_resolve_under_the_service() {
    let dns = cluster_dns();
    let pet = ask(&dns, "pg-0.pg.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer_ips(&pet), ips(&["10.42.0.5"]));
    let dashed = ask(&dns, "10-42-2-7.pg.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer_ips(&dashed), ips(&["10.42.2.7"]));
    let not_ready = ask(&dns, "pg-3.pg.db.svc.cluster.local.", RecordType::A).await;
    assert_negative(&not_ready, ResponseCode::NXDomain);
}

#[tokio::test]
async fn srv_records_for_named_ports_carry_targets_in_additional() {
    let dns = cluster_dns();
    let http = ask(
        &dns,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        names_of(&http.answers),
        ["80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        http.additionals.len(),
        2,
        "A and AAAA of the target in additional: {http}"
    );
    let udp = ask(
        &dns,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        names_of(&udp.answers),
        ["53 web.default.svc.cluster.local."]
    );
    let wrong_proto = ask(
        &dns,
        "_http._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_negative(&wrong_proto, ResponseCode::NXDomain);

    let headless = ask(&dns, "_pg._tcp.pg.db.svc.cluster.local.", RecordType::SRV).await;
    assert_eq!(
        names_of(&headless.answers),
        [
            "5432 10-42-2-7.pg.db.svc.cluster.local.",
            "5432 pg-0.pg.db.svc.cluster.local.",
            "5432 pg-1.pg.db.svc.cluster.local.",
        ]
    );
    let mut extra: Vec<String> = headless
        .additionals
        .iter()
        .map(|r| r.name.to_ascii())
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "10-42-2-7.pg.db.svc.cluster.local.",
            "pg-0.pg.db.svc.cluster.local.",
            "pg-1.pg.db.svc.cluster.local.",
        ]
    );
}

#[tokio::test]
async fn ptr_records_name_services_and_headless_endpoints() {
    let dns = cluster_dns();
    let svc = ask(&dns, "20.0.43.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(svc.metadata.response_code, ResponseCode::NoError);
    assert!(svc.metadata.authoritative);
    assert_eq!(names_of(&svc.answers), ["web.default.svc.cluster.local."]);
    let v6 = ask(
        &dns,
        "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(names_of(&v6.answers), ["web.default.svc.cluster.local."]);
    let pet = ask(&dns, "5.0.42.10.IN-ADDR.ARPA.", RecordType::PTR).await;
    assert_eq!(
        names_of(&pet.answers),
        [
            "pg-0.pg-all.db.svc.cluster.local.",
            "pg-0.pg.db.svc.cluster.local."
        ]
    );
    let pod = ask(&dns, "7.2.42.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(
        names_of(&pod.answers),
        [
            "10-42-2-7.pg-all.db.svc.cluster.local.",
            "10-42-2-7.pg.db.svc.cluster.local."
        ]
    );
    // Unknown reverse names are forwarded: with no upstream that is SERVFAIL.
    let unknown = ask(&dns, "9.9.9.9.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    assert!(!unknown.metadata.authoritative);
}

#[tokio::test]
async fn external_name_answers_a_cname() {
    let dns = cluster_dns();
    let msg = ask(&dns, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.metadata.authoritative);
    assert_eq!(names_of(&msg.answers), ["www.example.com."]);
    let cname = ask(&dns, "ext.default.svc.cluster.local.", RecordType::CNAME).await;
    assert_eq!(names_of(&cname.answers), ["www.example.com."]);
}

#[tokio::test]
async fn pod_records_answer_the_dashed_address_in_any_namespace() {
    let dns = cluster_dns();
    let msg = ask(&dns, "10-42-0-9.anything.pod.cluster.local.", RecordType::A).await;
    assert_eq!(answer_ips(&msg), ips(&["10.42.0.9"]));
    assert!(msg.metadata.authoritative);
    let v6 = ask(&dns, "fd00--9.other.pod.cluster.local.", RecordType::AAAA).await;
    assert_eq!(answer_ips(&v6), ips(&["fd00::9"]));
    let nodata = ask(
        &dns,
        "10-42-0-9.anything.pod.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_negative(&nodata, ResponseCode::NoError);
    let bad = ask(
        &dns,
        "10-42-0-999.anything.pod.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_negative(&bad, ResponseCode::NXDomain);
}

#[tokio::test]
async fn missing_names_are_nxdomain_and_missing_types_nodata_with_soa() {
    let dns = cluster_dns();
    for name in [
        "example.com.default.svc.cluster.local.",
        "nope.default.svc.cluster.local.",
        "web.nowhere.svc.cluster.local.",
        "x.cluster.local.",
    ] {
        let msg = ask(&dns, name, RecordType::A).await;
        assert_negative(&msg, ResponseCode::NXDomain);
    }
    for (name, qtype) in [
        ("web.default.svc.cluster.local.", RecordType::MX),
        ("default.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
    ] {
        let msg = ask(&dns, name, qtype).await;
        assert_negative(&msg, ResponseCode::NoError);
    }
}

#[tokio::test]
async fn zone_apex_answers_soa_ns_and_the_schema_version() {
    let dns = cluster_dns();
    let soa = ask(&dns, "cluster.local.", RecordType::SOA).await;
    assert!(matches!(soa.answers.as_slice(), [r] if matches!(r.data, RData::SOA(_))));
    let ns = ask(&dns, "cluster.local.", RecordType::NS).await;
    assert!(matches!(ns.answers.as_slice(),
        [r] if matches!(&r.data, RData::NS(NS(n)) if n.to_ascii() == "ns.dns.cluster.local.")));
    let version = ask(&dns, "dns-version.cluster.local.", RecordType::TXT).await;
    assert!(matches!(version.answers.as_slice(),
        [r] if matches!(&r.data, RData::TXT(t) if t.to_string().contains(SCHEMA_VERSION))));
}

fn big_headless() -> (Service, EndpointSlice) {
    let endpoints: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"addresses": [format!("10.42.{}.{}", i / 200, i % 200 + 1)]}))
        .collect();
    (
        headless_service("big", false),
        slice(json!({
            "metadata": {"name": "big-1", "namespace": "db",
                         "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4",
            "endpoints": endpoints
        })),
    )
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_fit_over_tcp() {
    let dns = Dns::new("cluster.local", Vec::new());
    let (svc, slc) = big_headless();
    dns.update(&[svc], &[slc]);
    let name = "big.db.svc.cluster.local.";
    let udp = dns
        .answer(&query_bytes(name, RecordType::A, None), false)
        .await;
    assert!(udp.len() <= 512, "plain UDP answers fit 512 bytes");
    let udp = Message::from_vec(&udp).expect("parses");
    assert!(
        udp.metadata.truncation,
        "TC set so the client retries over TCP"
    );
    assert!(udp.answers.is_empty());
    assert_eq!(udp.queries.len(), 1);

    let edns = dns
        .answer(&query_bytes(name, RecordType::A, Some(4096)), false)
        .await;
    let edns_msg = Message::from_vec(&edns).expect("parses");
    assert!(
        !edns_msg.metadata.truncation,
        "the client's EDNS size is honoured"
    );
    assert_eq!(edns_msg.answers.len(), 100);
    assert!(edns_msg.edns.is_some(), "EDNS queries get an OPT back");

    let tcp = ask_with(&dns, name, RecordType::A, true).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
}

#[tokio::test]
async fn malformed_packets_are_dropped_or_answered_formerr() {
    let dns = cluster_dns();
    assert!(
        dns.answer(b"\x12\x34", false).await.is_empty(),
        "no header: dropped"
    );
    let mut response = query_bytes("web.default.svc.cluster.local.", RecordType::A, None);
    response[2] |= 0x80;
    assert!(
        dns.answer(&response, false).await.is_empty(),
        "responses are never answered"
    );
    let mut garbage = query_bytes("web.default.svc.cluster.local.", RecordType::A, None);
    garbage.truncate(20);
    let reply = Message::from_vec(&dns.answer(&garbage, false).await).expect("parses");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.id, 0x1234);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("a.cluster.local.").expect("name"),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").expect("name"),
        RecordType::A,
    ));
    let reply = Message::from_vec(&dns.answer(&two.to_vec().expect("encodes"), false).await)
        .expect("parses");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn malformed_input_never_panics() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dns = cluster_dns();
    let base = query_bytes(
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        Some(1232),
    );
    rt.block_on(async {
        for cut in 0..base.len() {
            let _ = dns.answer(&base[..cut], false).await;
        }
        for i in 12..base.len() {
            let mut flipped = base.clone();
            flipped[i] ^= 0xff;
            let _ = dns.answer(&flipped, true).await;
        }
    });
}

#[tokio::test]
async fn update_swaps_the_index() {
    let dns = Dns::new("cluster.local", Vec::new());
    let name = "web.default.svc.cluster.local.";
    assert_negative(
        &ask(&dns, name, RecordType::A).await,
        ResponseCode::NXDomain,
    );
    dns.update(&[cluster_ip_service()], &[]);
    assert_eq!(
        answer_ips(&ask(&dns, name, RecordType::A).await),
        ips(&["10.43.0.20"])
    );
    dns.update(&[], &[]);
    assert_negative(
        &ask(&dns, name, RecordType::A).await,
        ResponseCode::NXDomain,
    );
}

#[test]
fn own_addresses_are_never_upstreams() {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
    let own = [addr("10.43.0.10:53")];
    assert!(is_own(&own, addr("10.43.0.10:53")));
    assert!(!is_own(&own, addr("127.0.0.53:53")));
    let wildcard = [addr("0.0.0.0:53")];
    assert!(
        is_own(&wildcard, addr("127.0.0.1:53")),
        "loopback reaches a wildcard bind"
    );
    assert!(!is_own(&wildcard, addr("192.0.2.1:53")));
    assert!(!is_own(&wildcard, addr("127.0.0.1:5353")));
}

#[tokio::test]
async fn invalid_hostnames_fall_back_to_the_address_name() {
    let dns = Dns::new("cluster.local", Vec::new());
    let bad = slice(json!({
        "metadata": {"name": "pg-x", "namespace": "db",
                     "labels": {"kubernetes.io/service-name": "pg"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.42.0.5"], "hostname": "a.b"}]
    }));
    dns.update(&[headless_service("pg", false)], &[bad]);
    let msg = ask(&dns, "10-42-0-5.pg.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer_ips(&msg), ips(&["10.42.0.5"]));
    let svc = ask(&dns, "pg.db.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer_ips(&svc), ips(&["10.42.0.5"]));
}

#[test]
fn a_loopback_only_resolv_conf_gives_way_to_systemd_resolveds_list() {
    let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n".to_owned();
    let real = "nameserver 192.168.1.1\nnameserver fd00::1\n".to_owned();
    assert_eq!(pick_resolv_conf(&[stub.clone(), real.clone()]), 1);
    assert_eq!(pick_resolv_conf(&[real.clone(), stub.clone()]), 0);
    // Neither usable: /etc/resolv.conf stays (the agent's own
    // forwarding still works through the stub).
    assert_eq!(pick_resolv_conf(&[stub.clone(), String::new()]), 0);
    assert_eq!(pick_resolv_conf(&[String::new(), String::new()]), 0);
    assert!(!has_pod_reachable_nameserver(
        "nameserver ::1\nnameserver 0.0.0.0\n"
    ));
    assert!(has_pod_reachable_nameserver(
        "nameserver 127.0.0.1\nnameserver 10.0.0.2\n"
    ));
}

#[test]
fn resolv_conf_nameservers_become_port_53_upstreams() {
    let text = "# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n\
                nameserver   192.0.2.1\noptions ndots:5\nnameserver bogus\n";
    assert_eq!(
        Dns::upstreams_from_resolv_conf(text),
        vec![
            "192.0.2.1:53".parse::<SocketAddr>().expect("addr"),
            "[fe80::1]:53".parse().expect("addr")
        ]
    );
}

#[test]
fn custom_domains_are_normalised() {
    let records = Records::build("Corp.Example.", &[cluster_ip_service()], &[]);
    assert_eq!(records.zone().to_ascii(), "corp.example.");
    assert!(matches!(
        records.lookup(&Name::from_ascii("web.default.svc.corp.example.").expect("name"), RecordType::A),
        Lookup::Zone { rcode: ResponseCode::NoError, ref answers, .. } if answers.len() == 1
    ));
    assert_eq!(
        records.lookup(
            &Name::from_ascii("web.default.svc.cluster.local.").expect("name"),
            RecordType::A
        ),
        Lookup::Forward
    );
}

/// A tiny upstream on 127.0.0.1 (UDP and TCP on one port) answering every
/// A question with 192.0.2.53; stops when dropped.
struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn stub_reply(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut reply = Message::response(msg.metadata.id, OpCode::Query);
    reply.metadata.recursion_available = true;
    for q in &msg.queries {
        reply.add_query(q.clone());
        reply.add_answer(Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
        ));
    }
    reply.to_vec().ok()
}

impl Upstream {
    fn start() -> Upstream {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind stub udp");
        let addr = udp.local_addr().expect("addr");
        let tcp = std::net::TcpListener::bind(addr).expect("bind stub tcp on the same port");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (queries.clone(), stop.clone());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = udp.recv_from(&mut buf) {
                    q.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = stub_reply(&buf[..len]) {
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            }
        });
        let (q, s) = (queries.clone(), stop.clone());
        let tcp_thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let mut len = [0u8; 2];
                if conn.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if conn.read_exact(&mut query).is_err() {
                    continue;
                }
                q.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = stub_reply(&query) {
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    let _ = conn.write_all(&framed);
                }
            }
        });
        Upstream {
            addr,
            queries,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A bound UDP socket that never answers: an upstream that is down.
fn dead_upstream() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dead upstream");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

#[tokio::test]
async fn out_of_zone_names_are_relayed_to_the_upstream() {
    let upstream = Upstream::start();
    let (_dead, dead) = dead_upstream();
    let dns = Dns::new("cluster.local", vec![dead, upstream.addr]);
    let start = Instant::now();
    let msg = ask(&dns, "www.example.com.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(msg.metadata.id, 0x1234, "the client's ID is restored");
    assert!(!msg.metadata.authoritative);
    assert_eq!(
        answer_ips(&msg),
        ips(&["192.0.2.53"]),
        "the second upstream answered"
    );
    assert!(
        start.elapsed() >= UPSTREAM_TIMEOUT,
        "the dead one was tried first"
    );

    let dns = Dns::new("cluster.local", vec![upstream.addr]);
    let tcp = ask_with(&dns, "www.example.com.", RecordType::A, true).await;
    assert_eq!(
        answer_ips(&tcp),
        ips(&["192.0.2.53"]),
        "TCP queries are relayed over TCP"
    );

    // ExternalName: the CNAME plus the target's upstream answers.
    dns.update(&[external_service()], &[]);
    let ext = ask(&dns, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(names_of(&ext.answers), ["www.example.com."]);
    assert_eq!(answer_ips(&ext), ips(&["192.0.2.53"]));
    assert!(upstream.queries.load(Ordering::Relaxed) >= 3);

    let before = upstream.queries.load(Ordering::Relaxed);
    let _ = ask(&dns, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(
        upstream.queries.load(Ordering::Relaxed),
        before,
        "zone names are never forwarded"
    );
}

#[tokio::test]
async fn dead_upstreams_yield_servfail_within_a_few_seconds() {
    let (_dead, dead) = dead_upstream();
    let dns = Dns::new("cluster.local", vec![dead]);
    let start = Instant::now();
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        ask(&dns, "www.example.com.", RecordType::A),
    )
    .await
    .expect("SERVFAIL comes before the test's own timeout");
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(msg.queries.len(), 1);
    assert!(start.elapsed() < Duration::from_secs(5));
}

async fn tcp_ask(stream: &mut TcpStream, name: &str, qtype: RecordType) -> Message {
    let query = query_bytes(name, qtype, None);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await.expect("tcp write");
    let len = stream.read_u16().await.expect("tcp length");
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.expect("tcp body");
    Message::from_vec(&reply).expect("reply parses")
}

#[tokio::test]
async fn serve_answers_over_udp_and_tcp_and_never_forwards_to_itself() {
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr)
        .await
        .expect("bind tcp on the same port");
    // Our own address as upstream must not make a loop.
    let dns = Dns::new("cluster.local", vec![addr]);
    dns.update(&[cluster_ip_service()], &[]);
    let server = tokio::spawn(dns.clone().serve(udp, tcp));

    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    client.connect(addr).await.expect("connect");
    client
        .send(&query_bytes(
            "web.default.svc.cluster.local.",
            RecordType::A,
            None,
        ))
        .await
        .expect("send");
    let mut buf = [0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .expect("udp answer in time")
        .expect("recv");
    let msg = Message::from_vec(&buf[..len]).expect("parses");
    assert_eq!(answer_ips(&msg), ips(&["10.43.0.20"]));

    let mut stream = TcpStream::connect(addr).await.expect("connect tcp");
    let first = tcp_ask(
        &mut stream,
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(answer_ips(&first), ips(&["fd00:43::20"]));
    let second = tcp_ask(
        &mut stream,
        "nope.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        second.metadata.response_code,
        ResponseCode::NXDomain,
        "several queries per connection"
    );

    let outside = tokio::time::timeout(
        Duration::from_secs(5),
        tcp_ask(&mut stream, "www.example.com.", RecordType::A),
    )
    .await
    .expect("no forwarding loop");
    assert_eq!(outside.metadata.response_code, ResponseCode::ServFail);

    let latencies = query_latency(addr, "web.default.svc.cluster.local", 200).await;
    assert_eq!(latencies.len(), 200, "every query answered");
    let mut sorted = latencies.clone();
    sorted.sort();
    eprintln!(
        "local UDP query latency: p50 {:?} p99 {:?} max {:?}",
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 99 / 100],
        sorted[sorted.len() - 1]
    );

    // A query stuck on a dead upstream does not hold up the next one.
    let (_dead, dead) = dead_upstream();
    let slow = Dns::new("cluster.local", vec![dead]);
    slow.update(&[cluster_ip_service()], &[]);
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let slow_addr = udp.local_addr().expect("addr");
    let tcp = TcpListener::bind(slow_addr).await.expect("bind tcp");
    let slow_server = tokio::spawn(slow.serve(udp, tcp));
    client.connect(slow_addr).await.expect("connect");
    let mut outside = query_bytes("www.example.com.", RecordType::A, None);
    outside[..2].copy_from_slice(&[0xaa, 0xaa]);
    client.send(&outside).await.expect("send");
    client
        .send(&query_bytes(
            "web.default.svc.cluster.local.",
            RecordType::A,
            None,
        ))
        .await
        .expect("send");
    let mut order = Vec::new();
    for _ in 0..2 {
        let len = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("both answered in time")
            .expect("recv");
        let msg = Message::from_vec(&buf[..len]).expect("parses");
        order.push((msg.metadata.id, msg.metadata.response_code));
    }
    assert_eq!(
        order,
        [
            (0x1234, ResponseCode::NoError),
            (0xaaaa, ResponseCode::ServFail)
        ],
        "the zone answer overtakes the forwarded query"
    );
    slow_server.abort();

    // Garbage on TCP closes the connection.
    stream.write_all(&[0, 3, 1, 2, 3]).await.expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "connection closed after a malformed frame"
    );
    server.abort();
}
