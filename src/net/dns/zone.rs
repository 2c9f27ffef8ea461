//! The cluster zone: an immutable index of records built from Services
//! and EndpointSlices, as the Kubernetes DNS specification names them, and
//! the lookup that answers one question from it. Pure: values in, records
//! out; no sockets.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, warn};

/// TTL of every record we serve, and of negative answers: 5 s like CoreDNS's
/// kubernetes plugin, short enough that a changed Service is seen quickly.
pub const TTL: u32 = 5;

/// Longest CNAME chain followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

/// Schema version announced at `dns-version.<zone>` (spec section 2.2).
pub(super) const SCHEMA_VERSION: &str = "1.0.1";

/// Label carrying the owning Service's name on an EndpointSlice.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Legacy annotation that publishes not-ready endpoints (spec: _ready_).
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// An immutable index of the cluster zone, built from the Service and
/// EndpointSlice cache: owner name → record data, and IP → PTR targets.
///
/// Every name between a record's owner and the zone apex exists (an "empty
/// non-terminal"), so `default.svc.<zone>` answers NODATA, not NXDOMAIN.
#[derive(Debug, Clone)]
pub struct Records {
    zone: Name,
    pub(super) soa: Record,
    /// Owner name (case-insensitive `Name` hash/eq) → its record data.
    names: HashMap<Name, Vec<RData>>,
    reverse: HashMap<IpAddr, Vec<Name>>,
}

/// What the index says about one question.
#[derive(Debug, PartialEq)]
pub(super) enum Lookup {
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

    pub(super) fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
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
pub(super) fn dashed(ip: IpAddr) -> String {
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
