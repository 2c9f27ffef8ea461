//! Cluster DNS, served in-process by every node agent (no CoreDNS).
//!
//! The agent feeds its Service and EndpointSlice cache to [`Dns::update`],
//! which builds an immutable [`Records`] index and swaps it in atomically;
//! queries are answered from that index alone, never with an API call.
//! Names follow the Kubernetes DNS specification
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>):
//! service A/AAAA, SRV for named ports, headless endpoints and their
//! hostnames, ExternalName CNAMEs, PTRs and the deprecated pod records.
//! Everything outside the cluster zone (and reverse names we do not know) is
//! relayed to the node's upstream resolvers.
//!
//! Deliberately not here: caching of upstream answers, DNSSEC, zone
//! transfers, dynamic update. The resolution logic ([`Records::build`] and the
//! lookup) is pure; sockets live in [`Dns::answer`]'s forwarding and in
//! [`Dns::serve`].
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// TTL of every record we serve, and of negative answers: 5 s like CoreDNS's
/// kubernetes plugin, short enough that a changed Service is seen quickly.
pub const TTL: u32 = 5;
/// How long one upstream gets to answer before the next one is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries answered at once; beyond this UDP queries are dropped (the client
/// retries) so a flood cannot grow memory without bound.
const MAX_IN_FLIGHT: usize = 4096;
/// Queries answered at once on one TCP connection (pipelining back-pressure).
const MAX_IN_FLIGHT_PER_CONN: usize = 64;
/// Open TCP connections; more are closed at once (idle ones go after
/// [`TCP_IDLE_TIMEOUT`]), so idle clients cannot pin unbounded tasks.
const MAX_TCP_CONNECTIONS: usize = 256;
/// The UDP payload size we advertise in EDNS (the DNS flag day 2020 value).
const OUR_UDP_PAYLOAD: u16 = 1232;
/// Classic DNS limit for UDP clients that send no EDNS.
const PLAIN_UDP_PAYLOAD: usize = 512;
/// Longest CNAME chain followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;
/// Schema version announced at `dns-version.<zone>` (spec section 2.2).
const SCHEMA_VERSION: &str = "1.0.1";
/// Label carrying the owning Service's name on an EndpointSlice.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Legacy annotation that publishes not-ready endpoints (spec: _ready_).
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// Why forwarding a query to one upstream failed. Logged at debug level; the
/// client sees SERVFAIL once every upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream {addr}: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr} did not answer within {UPSTREAM_TIMEOUT:?}")]
    UpstreamTimeout { addr: SocketAddr },
    #[error("upstream {addr} answered with a message that does not match the query")]
    UpstreamMismatch { addr: SocketAddr },
}

/// An immutable index of the cluster zone, built from the Service and
/// EndpointSlice cache: owner name → record data, and IP → PTR targets.
///
/// Every name between a record's owner and the zone apex exists (an "empty
/// non-terminal"), so `default.svc.<zone>` answers NODATA, not NXDOMAIN.
#[derive(Debug, Clone)]
pub struct Records {
    zone: Name,
    soa: Record,
    /// Owner name (case-insensitive `Name` hash/eq) → its record data.
    names: HashMap<Name, Vec<RData>>,
    reverse: HashMap<IpAddr, Vec<Name>>,
}

/// What the index says about one question.
#[derive(Debug, PartialEq)]
enum Lookup {
    /// Inside a name space we own: the response is authoritative.
    Zone {
        rcode: ResponseCode,
        answers: Vec<Record>,
        additionals: Vec<Record>,
        /// Negative answer (NXDOMAIN / NODATA): add the SOA to authority.
        negative: bool,
        /// A CNAME left the zone: the target is resolved upstream.
        chase: Option<Name>,
    },
    /// Not ours: relay to the upstream resolvers.
    Forward,
}

impl Records {
    /// Builds the index for zone `domain` (e.g. `cluster.local`) from the
    /// current Services and EndpointSlices. Objects with names that are not
    /// valid DNS labels are skipped (and logged at debug level).
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Records {
        let zone = zone_name(domain);
        let mname = child(&zone, "ns.dns");
        let soa = Record::from_rdata(
            zone.clone(),
            TTL,
            RData::SOA(SOA::new(
                mname.clone(),
                child(&zone, "hostmaster"),
                serial_now(),
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        let mut b = Builder {
            zone: zone.clone(),
            names: HashMap::new(),
            reverse: HashMap::new(),
            seen: HashSet::new(),
        };
        b.add(zone.clone(), soa.data.clone());
        b.add(zone.clone(), RData::NS(NS(mname.clone())));
        b.add(
            child(&zone, "dns-version"),
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        );
        b.names.entry(child(&zone, "pod")).or_default();

        let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let meta = &slice.metadata;
            let Some(svc) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                continue;
            };
            let ns = meta.namespace.as_deref().unwrap_or("default");
            slices_by_service
                .entry((ns, svc.as_str()))
                .or_default()
                .push(slice);
        }

        for service in services {
            let Some(name) = service.metadata.name.as_deref() else {
                continue;
            };
            let ns = service.metadata.namespace.as_deref().unwrap_or("default");
            let Some(fqdn) = try_child(&zone, &format!("{name}.{ns}.svc")) else {
                debug!(service = %format!("{ns}/{name}"), "service name is not a valid DNS name, no records");
                continue;
            };
            let Some(spec) = service.spec.as_ref() else {
                continue;
            };
            let slices = slices_by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if spec.type_.as_deref() == Some("ExternalName") {
                b.add_external_name(&fqdn, spec.external_name.as_deref());
            } else if is_headless(service) {
                b.add_headless(&fqdn, service, slices);
            } else {
                b.add_cluster_ip(&fqdn, service);
            }
            // CoreDNS answers ns.dns.<zone> with the cluster DNS service.
            if ns == "kube-system" && name == "kube-dns" {
                for ip in cluster_ips(service) {
                    b.add(mname.clone(), ip_rdata(ip));
                }
            }
        }
        b.add_empty_non_terminals();
        Records {
            zone,
            soa,
            names: b.names,
            reverse: b.reverse,
        }
    }

    /// The zone apex, e.g. `cluster.local.`.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        if self.zone.zone_of(qname) {
            return self.lookup_zone(qname, qtype);
        }
        match reverse_ip(qname) {
            Some(ip) if self.reverse.contains_key(&ip) => {
                let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    self.reverse[&ip]
                        .iter()
                        .map(|t| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(t.clone()))))
                        .collect()
                } else {
                    Vec::new()
                };
                Lookup::Zone {
                    rcode: ResponseCode::NoError,
                    answers,
                    additionals: Vec::new(),
                    negative: false,
                    chase: None,
                }
            }
            _ => Lookup::Forward,
        }
    }

    fn lookup_zone(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut owner = qname.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(data) = self.data_at(&owner) else {
                // A dangling in-zone CNAME still answers with the chain so far.
                let rcode = if answers.is_empty() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                return self.negative(rcode, answers);
            };
            let matching: Vec<&RData> = data
                .iter()
                .filter(|d| qtype == RecordType::ANY || d.record_type() == qtype)
                .collect();
            if !matching.is_empty() {
                for d in matching {
                    if let RData::SRV(srv) = d {
                        for extra in self.data_at(&srv.target).unwrap_or_default() {
                            if matches!(extra, RData::A(_) | RData::AAAA(_)) {
                                additionals.push(Record::from_rdata(
                                    srv.target.clone(),
                                    TTL,
                                    extra,
                                ));
                            }
                        }
                    }
                    answers.push(Record::from_rdata(owner.clone(), TTL, d.clone()));
                }
                return Lookup::Zone {
                    rcode: ResponseCode::NoError,
                    answers,
                    additionals,
                    negative: false,
                    chase: None,
                };
            }
            let Some(target) = data.iter().find_map(|d| match d {
                RData::CNAME(CNAME(t)) => Some(t.clone()),
                _ => None,
            }) else {
                return self.negative(ResponseCode::NoError, answers);
            };
            answers.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            if !self.zone.zone_of(&target) {
                return Lookup::Zone {
                    rcode: ResponseCode::NoError,
                    answers,
                    additionals,
                    negative: false,
                    chase: Some(target),
                };
            }
            owner = target;
        }
        self.negative(ResponseCode::NoError, answers)
    }

    fn negative(&self, rcode: ResponseCode, answers: Vec<Record>) -> Lookup {
        Lookup::Zone {
            rcode,
            answers,
            additionals: Vec::new(),
            negative: true,
            chase: None,
        }
    }

    /// Record data at `name`, or None when the name does not exist. Pod
    /// names (`<a-b-c-d>.<ns>.pod.<zone>`) are computed, not stored.
    fn data_at(&self, name: &Name) -> Option<Vec<RData>> {
        if let Some(data) = self.names.get(name) {
            return Some(data.clone());
        }
        let depth = name.num_labels().checked_sub(self.zone.num_labels())?;
        let labels: Vec<&[u8]> = name.iter().collect();
        let pod_label = labels.get(usize::from(depth).checked_sub(1)?)?;
        if !pod_label.eq_ignore_ascii_case(b"pod") {
            return None;
        }
        match depth {
            // <ns>.pod.<zone>: any namespace exists.
            2 => Some(Vec::new()),
            3 => {
                let ip = pod_ip(std::str::from_utf8(labels[0]).ok()?)?;
                Some(vec![ip_rdata(ip)])
            }
            _ => None,
        }
    }
}

/// Collects names while building [`Records`], without duplicates.
struct Builder {
    zone: Name,
    names: HashMap<Name, Vec<RData>>,
    reverse: HashMap<IpAddr, Vec<Name>>,
    seen: HashSet<(Name, RData)>,
}

impl Builder {
    fn add(&mut self, name: Name, data: RData) {
        if self.seen.insert((name.clone(), data.clone())) {
            self.names.entry(name).or_default().push(data);
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, target: Name) {
        let targets = self.reverse.entry(ip).or_default();
        if !targets.contains(&target) {
            targets.push(target);
        }
    }

    fn add_external_name(&mut self, fqdn: &Name, external: Option<&str>) {
        let target = external
            .map(|e| e.trim_end_matches('.'))
            .filter(|e| !e.is_empty())
            .and_then(|e| Name::from_ascii(format!("{e}.")).ok());
        match target {
            Some(t) => self.add(fqdn.clone(), RData::CNAME(CNAME(t))),
            None => debug!(%fqdn, "ExternalName service without a valid externalName"),
        }
    }

    fn add_cluster_ip(&mut self, fqdn: &Name, service: &Service) {
        // A service whose IP is not allocated yet still exists (NODATA).
        self.names.entry(fqdn.clone()).or_default();
        for ip in cluster_ips(service) {
            self.add(fqdn.clone(), ip_rdata(ip));
            self.add_ptr(ip, fqdn.clone());
        }
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for port in ports {
            let (Some(name), Ok(number)) = (port.name.as_deref(), u16::try_from(port.port)) else {
                continue;
            };
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            if let Some(owner) = srv_owner(fqdn, name, proto) {
                self.add(owner, RData::SRV(SRV::new(0, 100, number, fqdn.clone())));
            }
        }
    }

    /// Headless: one A/AAAA per published endpoint address under the service
    /// name and under `<hostname or ip-dashed>.<service>`, SRV per endpoint
    /// and named port. SRV ports come from the EndpointSlice (the target
    /// ports a client must dial, as CoreDNS does); they carry the service
    /// port's name. No published endpoint: the name does not exist (spec
    /// 2.4.1 asks for NXDOMAIN).
    fn add_headless(&mut self, fqdn: &Name, service: &Service, slices: &[&EndpointSlice]) {
        let spec = service.spec.as_ref();
        let publish_all = spec.and_then(|s| s.publish_not_ready_addresses) == Some(true)
            || service
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TOLERATE_UNREADY))
                .is_some_and(|v| v == "true");
        for slice in slices {
            let ports: Vec<(Name, u16)> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let number = u16::try_from(p.port?).ok()?;
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    Some((srv_owner(fqdn, p.name.as_deref()?, proto)?, number))
                })
                .collect();
            for endpoint in &slice.endpoints {
                // EndpointSlice API: a nil `ready` means unknown and is
                // interpreted as ready.
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if !ready && !publish_all {
                    continue;
                }
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    // A hostname that is not one valid label (the API server
                    // validates it, but the cache is input) falls back to the
                    // address form rather than hiding the endpoint.
                    let Some(host) = endpoint
                        .hostname
                        .as_deref()
                        .filter(|h| !h.contains('.'))
                        .and_then(|h| try_child(fqdn, h))
                        .or_else(|| try_child(fqdn, &dashed(ip)))
                    else {
                        continue;
                    };
                    self.add(fqdn.clone(), ip_rdata(ip));
                    self.add(host.clone(), ip_rdata(ip));
                    self.add_ptr(ip, host.clone());
                    for (owner, number) in &ports {
                        self.add(
                            owner.clone(),
                            RData::SRV(SRV::new(0, 100, *number, host.clone())),
                        );
                    }
                }
            }
        }
    }

    fn add_empty_non_terminals(&mut self) {
        let owners: Vec<Name> = self.names.keys().cloned().collect();
        for owner in owners {
            let mut name = owner.base_name();
            while self.zone.zone_of(&name) && name != self.zone {
                self.names.entry(name.clone()).or_default();
                name = name.base_name();
            }
        }
    }
}

fn is_headless(service: &Service) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .is_some_and(|ips| ips.iter().any(|ip| ip == "None"))
}

/// spec.clusterIPs (all families), falling back to spec.clusterIP.
fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let mut seen = HashSet::new();
    ips.retain(|ip| seen.insert(*ip));
    ips
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// `10.42.0.7` → `10-42-0-7`; `fd00::1` → `fd00--1` (the form CoreDNS uses).
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The IP named by a pod record label: `a-b-c-d`, or an IPv6 address with
/// `-` for `:`.
fn pod_ip(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// `_<port>._<proto>.<service fqdn>`, protocol lowercased.
fn srv_owner(fqdn: &Name, port: &str, proto: &str) -> Option<Name> {
    try_child(fqdn, &format!("_{port}._{}", proto.to_ascii_lowercase()))
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa.` or the 32-nibble
/// `ip6.arpa.` form) stands for; None for partial or other names.
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [d, c, b, a, in_addr, arpa] if in_addr == "in-addr" && arpa == "arpa" => {
            let octet = |s: &String| {
                // Reject "01" and "+1", which `u8::from_str` would accept.
                (!s.starts_with('0') || s == "0")
                    .then(|| s.parse::<u8>().ok())
                    .flatten()
                    .filter(|_| s.bytes().all(|c| c.is_ascii_digit()))
            };
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && ip6 == "ip6" && arpa == "arpa" => {
            let mut value: u128 = 0;
            for nibble in nibbles.iter().rev() {
                let mut chars = nibble.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    return None;
                };
                value = (value << 4) | u128::from(c.to_digit(16)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

/// `cluster.local`, `cluster.local.`, `Cluster.Local` → `cluster.local.`.
fn zone_name(domain: &str) -> Name {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let domain = if domain.is_empty() {
        "cluster.local".to_string()
    } else {
        domain
    };
    Name::from_ascii(format!("{domain}.")).unwrap_or_else(|e| {
        warn!(%domain, %e, "cluster domain is not a valid DNS name, serving cluster.local");
        Name::from_ascii("cluster.local.").expect("cluster.local. is a valid name")
    })
}

fn try_child(parent: &Name, labels: &str) -> Option<Name> {
    Name::from_ascii(labels)
        .ok()
        .filter(|n| !n.is_fqdn() && !n.is_root())
        .and_then(|n| n.append_domain(parent).ok())
}

/// Fixed, known-valid labels under the zone.
fn child(zone: &Name, labels: &str) -> Name {
    try_child(zone, labels).expect("fixed labels under a valid zone form a valid name")
}

fn serial_now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // RFC 1982 serial arithmetic wraps; the low 32 bits are what counts.
    (secs & u64::from(u32::MAX)) as u32
}

/// The cluster DNS server of one node: the zone, the upstream resolvers and
/// the current [`Records`].
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use orch::net::dns::Dns;
/// let upstreams = Dns::upstreams_from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf")?);
/// let dns = Dns::new("cluster.local", upstreams);
/// let udp = tokio::net::UdpSocket::bind("127.0.0.1:5353").await?;
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:5353").await?;
/// tokio::spawn(dns.clone().serve(udp, tcp));
/// dns.update(&[], &[]);
/// # Ok(()) }
/// ```
pub struct Dns {
    domain: String,
    upstreams: Vec<SocketAddr>,
    records: RwLock<Arc<Records>>,
    /// Addresses we serve on: never forwarded to (no loop through ourselves).
    own_addrs: RwLock<Vec<SocketAddr>>,
}

impl Dns {
    /// A server for zone `domain` with no Services yet, forwarding other
    /// names to `upstreams` in order.
    pub fn new(domain: &str, upstreams: Vec<SocketAddr>) -> Arc<Dns> {
        Arc::new(Dns {
            domain: domain.to_string(),
            upstreams,
            records: RwLock::new(Arc::new(Records::build(domain, &[], &[]))),
            own_addrs: RwLock::new(Vec::new()),
        })
    }

    /// Upstreams from a resolv.conf text (nameserver lines, port 53); used
    /// with the node's /etc/resolv.conf. IPv6 zone suffixes (`%eth0`) are
    /// dropped; unparsable lines are ignored.
    pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                continue;
            }
            let Some(addr) = words.next() else { continue };
            let addr = addr.split('%').next().unwrap_or(addr);
            if let Ok(ip) = addr.parse::<IpAddr>() {
                let sa = SocketAddr::new(ip, 53);
                if !out.contains(&sa) {
                    out.push(sa);
                }
            }
        }
        out
    }

    /// Rebuilds the index from the agent's Service/EndpointSlice cache and
    /// swaps it in; queries in flight keep the index they started with.
    pub fn update<'a>(
        &self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) {
        let records = Arc::new(Records::build(&self.domain, services, slices));
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = records;
    }

    fn records(&self) -> Arc<Records> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answer one query message (wire bytes) — for tests and benches.
    /// Returns the response bytes; empty means "drop it" (not a query, or too
    /// short to carry a header), which over TCP closes the connection.
    pub async fn answer(&self, query: &[u8], over_tcp: bool) -> Vec<u8> {
        if !is_query_header(query) {
            return Vec::new();
        }
        let Ok(request) = Message::from_vec(query) else {
            return header_only_error(query, ResponseCode::FormErr);
        };
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(OUR_UDP_PAYLOAD);
            response.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return encode(&response, PLAIN_UDP_PAYLOAD);
        }
        let [question] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return encode(&response, PLAIN_UDP_PAYLOAD);
        };
        response.add_query(question.clone());
        let limit = if over_tcp {
            usize::from(u16::MAX)
        } else {
            usize::from(request.max_payload())
        };

        let records = self.records();
        let lookup = records.lookup(question.name(), question.query_type());
        let Lookup::Zone {
            rcode,
            answers,
            additionals,
            negative,
            chase,
        } = lookup
        else {
            return match self.forward(query, question, over_tcp).await {
                Some(bytes) => bytes,
                None => {
                    response.metadata.response_code = ResponseCode::ServFail;
                    encode(&response, limit)
                }
            };
        };
        if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) {
            response.metadata.response_code = ResponseCode::Refused;
            return encode(&response, limit);
        }
        if matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR) {
            response.metadata.response_code = ResponseCode::Refused;
            return encode(&response, limit);
        }
        response.metadata.authoritative = true;
        response.metadata.response_code = rcode;
        response.add_answers(answers);
        response.add_additionals(additionals);
        if negative {
            response.add_authority(records.soa.clone());
        }
        if let Some(target) = chase {
            response.add_answers(self.resolve_upstream(target, question, over_tcp).await);
        }
        encode(&response, limit)
    }

    /// The answers upstream gives for `target` (an ExternalName's CNAME
    /// target); empty when it cannot be resolved, so the client still gets
    /// the CNAME and can resolve it itself.
    async fn resolve_upstream(
        &self,
        target: Name,
        question: &Query,
        over_tcp: bool,
    ) -> Vec<Record> {
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        let sub = Query::query(target, question.query_type());
        msg.add_query(sub.clone());
        let Ok(bytes) = msg.to_vec() else {
            return Vec::new();
        };
        let Some(reply) = self.forward(&bytes, &sub, over_tcp).await else {
            return Vec::new();
        };
        Message::from_vec(&reply)
            .map(|m| m.answers)
            .unwrap_or_default()
    }

    /// Relays the query bytes to each upstream in turn (fresh ID each time,
    /// restored in the reply). A truncated UDP reply is passed on as is: the
    /// client retries over TCP, and TCP queries are relayed over TCP.
    async fn forward(&self, query: &[u8], question: &Query, over_tcp: bool) -> Option<Vec<u8>> {
        let own = self
            .own_addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let original_id = [query[0], query[1]];
        for &upstream in self.upstreams.iter().filter(|u| !is_own(&own, **u)) {
            let id = Message::query().metadata.id;
            let mut relayed = query.to_vec();
            relayed[..2].copy_from_slice(&id.to_be_bytes());
            let result = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                if over_tcp {
                    exchange_tcp(upstream, &relayed).await
                } else {
                    exchange_udp(upstream, &relayed, id, question).await
                }
            })
            .await
            .unwrap_or(Err(Error::UpstreamTimeout { addr: upstream }))
            .and_then(|reply| check_reply(upstream, reply, id, question));
            match result {
                Ok(mut reply) => {
                    reply[..2].copy_from_slice(&original_id);
                    return Some(reply);
                }
                Err(err) => {
                    debug!(%err, name = %question.name(), "forwarding failed, trying the next upstream")
                }
            }
        }
        warn!(name = %question.name(), "no upstream answered, SERVFAIL");
        None
    }

    /// Serve on a bound UDP socket and TCP listener until the task is
    /// dropped/aborted. Every query runs in its own task (owned by this
    /// future, so aborting `serve` stops them too); a slow upstream never
    /// holds up other queries.
    pub async fn serve(self: Arc<Self>, udp: UdpSocket, tcp: TcpListener) {
        {
            let mut own = self.own_addrs.write().unwrap_or_else(|e| e.into_inner());
            own.extend(udp.local_addr().ok());
            own.extend(tcp.local_addr().ok());
        }
        let udp = Arc::new(udp);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; 65535];
        loop {
            tokio::select! {
                received = udp.recv_from(&mut buf) => {
                    let (len, peer) = match received {
                        Ok(r) => r,
                        Err(err) => {
                            // ICMP errors from earlier sends surface here on
                            // Linux; they concern one peer, not the socket.
                            debug!(%err, "udp receive failed");
                            // Never spin if the error repeats.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        debug!(%peer, "too many queries in flight, dropping one");
                        continue;
                    };
                    let query = buf[..len].to_vec();
                    let (dns, udp) = (self.clone(), udp.clone());
                    tasks.spawn(async move {
                        let reply = dns.answer(&query, false).await;
                        if !reply.is_empty()
                            && let Err(err) = udp.send_to(&reply, peer).await
                        {
                            debug!(%err, %peer, "udp reply failed");
                        }
                        drop(permit);
                    });
                }
                accepted = tcp.accept() => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let Ok(conn_permit) = connections.clone().try_acquire_owned() else {
                                debug!(%peer, "too many dns tcp connections, closing a new one");
                                continue;
                            };
                            let dns = self.clone();
                            let in_flight = in_flight.clone();
                            tasks.spawn(async move {
                                if let Err(err) = serve_tcp(dns, stream, in_flight).await {
                                    debug!(%err, %peer, "dns tcp connection ended");
                                }
                                drop(conn_permit);
                            });
                        }
                        Err(err) => {
                            warn!(%err, "dns tcp accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
}

/// One TCP connection: 2-byte length framing, several (pipelined) queries,
/// answered concurrently and written back as each completes (RFC 7766).
async fn serve_tcp(
    dns: Arc<Dns>,
    stream: TcpStream,
    in_flight: Arc<Semaphore>,
) -> std::io::Result<()> {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut queries = JoinSet::new();
    loop {
        while queries.len() >= MAX_IN_FLIGHT_PER_CONN {
            queries.join_next().await;
        }
        while queries.try_join_next().is_some() {}
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, reader.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(_)) | Err(_) => break,
        };
        let mut query = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, reader.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        if !is_query_header(&query) {
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (dns, writer) = (dns.clone(), writer.clone());
        queries.spawn(async move {
            let reply = dns.answer(&query, true).await;
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            let mut w = writer.lock().await;
            if let Err(err) = w.write_all(&framed).await {
                debug!(%err, "dns tcp reply failed");
            }
            drop(permit);
        });
    }
    while queries.join_next().await.is_some() {}
    writer.lock().await.shutdown().await
}

/// Where systemd-resolved keeps the real upstream servers when
/// `/etc/resolv.conf` points at its 127.0.0.53 stub.
const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The node's resolv.conf, as k3s picks it: `/etc/resolv.conf`, unless
/// every nameserver in it is a loopback address (systemd-resolved's stub,
/// a local dnsmasq) — pods cannot reach those from their own network
/// namespace — and systemd-resolved's file names real ones.
pub fn node_resolv_conf() -> std::path::PathBuf {
    let candidates = ["/etc/resolv.conf", SYSTEMD_RESOLV_CONF];
    let texts: Vec<String> = candidates
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    let chosen = pick_resolv_conf(&texts);
    if chosen == 0 && !has_pod_reachable_nameserver(&texts[0]) {
        warn!(
            "/etc/resolv.conf names no nameserver pods can reach (only loopback ones, or none): pods with dnsPolicy Default will not resolve names; give one with --resolv-conf"
        );
    }
    candidates[chosen].into()
}

/// Which of the resolv.conf texts to use: the first with a nameserver
/// pods can reach, else the first.
fn pick_resolv_conf(texts: &[String]) -> usize {
    texts
        .iter()
        .position(|t| has_pod_reachable_nameserver(t))
        .unwrap_or(0)
}

fn has_pod_reachable_nameserver(text: &str) -> bool {
    Dns::upstreams_from_resolv_conf(text)
        .iter()
        .any(|u| !u.ip().is_loopback() && !u.ip().is_unspecified())
}

/// Is `upstream` one of the addresses we serve on? Served on the unspecified
/// address, every loopback address on our port is us (nothing else could
/// have bound that port).
fn is_own(own: &[SocketAddr], upstream: SocketAddr) -> bool {
    own.iter().any(|o| {
        *o == upstream
            || (o.ip().is_unspecified()
                && o.port() == upstream.port()
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()))
    })
}

/// Long enough for a header and not a response: anything else is dropped
/// (answering responses could bounce packets between two servers forever).
fn is_query_header(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes[2] & 0x80 == 0
}

/// A bare header answering `query` with `rcode` (for queries whose body we
/// cannot parse): same ID, opcode and RD, QR and RA set, no sections.
fn header_only_error(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&query[..2]);
    out[2] = 0x80 | (query[2] & 0x79); // QR, opcode, RD (AA and TC cleared)
    out[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8; // RA, rcode
    out
}

/// Encodes `response`; if it exceeds `limit`, drops the additional section,
/// then all records with TC set so the client retries over TCP.
fn encode(response: &Message, limit: usize) -> Vec<u8> {
    let full = response.to_vec().unwrap_or_default();
    if !full.is_empty() && full.len() <= limit {
        return full;
    }
    let mut smaller = response.clone();
    smaller.additionals.clear();
    if let Ok(bytes) = smaller.to_vec()
        && bytes.len() <= limit
    {
        return bytes;
    }
    let mut truncated = response.clone();
    truncated.answers.clear();
    truncated.authorities.clear();
    truncated.additionals.clear();
    truncated.metadata.truncation = true;
    truncated.to_vec().unwrap_or_default()
}

/// A local address of the same family and scope as `upstream`: loopback for
/// a loopback upstream (so tests stay on 127.0.0.1), unspecified otherwise.
fn local_for(upstream: SocketAddr) -> SocketAddr {
    let ip = match upstream.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Upstream {
        addr: upstream,
        source,
    };
    let socket = UdpSocket::bind(local_for(upstream)).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    // Stray datagrams (late replies to someone else) are skipped; the
    // caller's timeout bounds the wait.
    loop {
        let len = socket.recv(&mut buf).await.map_err(io)?;
        if let Ok(reply) = check_reply(upstream, buf[..len].to_vec(), id, question) {
            return Ok(reply);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Upstream {
        addr: upstream,
        source,
    };
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(query.len()).map_err(|_| Error::UpstreamMismatch { addr: upstream })?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.map_err(io)?;
    Ok(reply)
}

/// A reply is accepted only if it is a response with our ID to our question
/// (so a spoofed or stale datagram cannot answer someone else's query).
fn check_reply(
    upstream: SocketAddr,
    reply: Vec<u8>,
    id: u16,
    question: &Query,
) -> Result<Vec<u8>, Error> {
    let mismatch = Error::UpstreamMismatch { addr: upstream };
    let Ok(msg) = Message::from_vec(&reply) else {
        return Err(mismatch);
    };
    let same_question = msg.queries.first().is_some_and(|q| {
        q.name() == question.name()
            && q.query_type() == question.query_type()
            && q.query_class() == question.query_class()
    });
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response || !same_question
    {
        return Err(mismatch);
    }
    Ok(reply)
}

/// Sends `count` A queries for `name` to `server` over UDP, one after
/// another, and returns each round trip. For the benchmark, run from inside
/// a pod's network namespace. A query without an answer within
/// [`UPSTREAM_TIMEOUT`] (or a socket error) is logged and left out, so the
/// result can be shorter than `count`.
pub async fn query_latency(server: SocketAddr, name: &str, count: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(count);
    let Ok(qname) = Name::from_ascii(if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }) else {
        warn!(%name, "query_latency: not a valid DNS name");
        return out;
    };
    let socket = match UdpSocket::bind(local_for(server)).await {
        Ok(s) => s,
        Err(err) => {
            warn!(%err, "query_latency: cannot bind a udp socket");
            return out;
        }
    };
    if let Err(err) = socket.connect(server).await {
        warn!(%err, %server, "query_latency: cannot connect");
        return out;
    }
    let question = Query::query(qname, RecordType::A);
    let mut buf = vec![0u8; 65535];
    for i in 0..count {
        let id = (i % 65536) as u16;
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(question.clone());
        let Ok(bytes) = msg.to_vec() else {
            return out;
        };
        let start = Instant::now();
        let exchange = async {
            socket.send(&bytes).await?;
            loop {
                let len = socket.recv(&mut buf).await?;
                if check_reply(server, buf[..len].to_vec(), id, &question).is_ok() {
                    return Ok::<_, std::io::Error>(());
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            Ok(Ok(())) => out.push(start.elapsed()),
            Ok(Err(err)) => warn!(%err, "query_latency: query failed"),
            Err(_) => warn!(%server, "query_latency: no answer"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "connection closed after a malformed frame"
        );
        server.abort();
    }
}
