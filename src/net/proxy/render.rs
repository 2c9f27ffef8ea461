//! Rendering: Services, EndpointSlices and hostPorts in, the desired
//! [`Ruleset`] out (the table's chains, sets and verdict-map elements),
//! kept by owner so a sync re-renders only what changed. Pure.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, NgMode,
    Numgen, Payload, PayloadBase, PayloadField, PayloadRaw, Prefix, Verdict,
};
use nftables::stmt::{JumpTarget, Mangle, Match, NAT, NATFlag, Operator, SetOp, Statement};
use nftables::types::{NfChainType, NfHook};

use super::{HostPort, MASQUERADE_MARK, Protocol, ProxyConfig};

/// sessionAffinity ClientIP timeout when the Service gives none (3 h, the API default).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The longest chain or set name nf_tables accepts (NFT_NAME_MAXLEN - 1).
pub(super) const MAX_NAME: usize = 255;

/// A verdict map (or, without `verdict`, a plain set) of the table: its
/// name and key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapDef {
    pub(super) name: &'static str,
    pub(super) key: &'static [&'static str],
    pub(super) verdict: bool,
}

const ADDR_KEY: &[&str] = &["ipv4_addr", "inet_proto", "inet_service"];

const PORT_KEY: &[&str] = &["inet_proto", "inet_service"];

const SERVICE_IPS: MapDef = MapDef {
    name: "service-ips",
    key: ADDR_KEY,
    verdict: true,
};

pub(super) const SERVICE_NODEPORTS: MapDef = MapDef {
    name: "service-nodeports",
    key: PORT_KEY,
    verdict: true,
};

const NO_EP_SERVICES: MapDef = MapDef {
    name: "no-endpoint-services",
    key: ADDR_KEY,
    verdict: true,
};

const NO_EP_NODEPORTS: MapDef = MapDef {
    name: "no-endpoint-nodeports",
    key: PORT_KEY,
    verdict: true,
};

const HOSTPORT_IPS: MapDef = MapDef {
    name: "hostport-ips",
    key: ADDR_KEY,
    verdict: true,
};

const HOSTPORT_ANY: MapDef = MapDef {
    name: "hostport-any",
    key: PORT_KEY,
    verdict: true,
};

/// `address . address` of every endpoint (and hostPort pod): a packet
/// leaving with the same source and destination is a pod that reached
/// itself through a Service, and is masqueraded so its answer comes back
/// the way it went. One set element per endpoint instead of a rule in
/// every endpoint chain: elements are not re-validated by the kernel, and
/// the rule would be (each one doubled what a commit validates).
const HAIRPIN: MapDef = MapDef {
    name: "hairpin",
    key: &["ipv4_addr", "ipv4_addr"],
    verdict: false,
};

pub(super) const MAPS: [MapDef; 7] = [
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    NO_EP_SERVICES,
    NO_EP_NODEPORTS,
    HOSTPORT_IPS,
    HOSTPORT_ANY,
    HAIRPIN,
];

pub(super) const REJECT_CHAIN: &str = "reject-chain";

pub(super) const DROP_CHAIN: &str = "drop-chain";

pub(super) const MARK_CHAIN: &str = "mark-for-masquerade";

pub(super) const DNS_CHAIN: &str = "cluster-dns";

/// A map key: `addr . proto . port`, `proto . port` or `addr . addr`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapKey {
    /// For `service-ips`, `no-endpoint-services`, `hostport-ips`.
    Addr(Ipv4Addr, Protocol, u16),
    /// For `service-nodeports`, `no-endpoint-nodeports`, `hostport-any`.
    Port(Protocol, u16),
    /// For `hairpin`: an address twice.
    Pair(Ipv4Addr),
}

impl fmt::Display for MapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a, p, n) => write!(f, "{a} . {} . {n}", p.as_str()),
            Self::Port(p, n) => write!(f, "{} . {n}", p.as_str()),
            Self::Pair(a) => write!(f, "{a} . {a}"),
        }
    }
}

/// Hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHook {
    pub(super) kind: NfChainType,
    pub(super) hook: NfHook,
    pub(super) prio: i32,
}

/// A chain's content. The rules are shared with the per-Service render
/// cache, so merging a cached Service into the desired state and comparing
/// it with what was applied costs a pointer, not a deep copy or compare.
#[derive(Clone, Debug)]
pub struct ChainDef {
    pub(super) base: Option<BaseHook>,
    pub(super) rules: Arc<Vec<Vec<Statement<'static>>>>,
}

impl PartialEq for ChainDef {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
            && (Arc::ptr_eq(&self.rules, &other.rules) || self.rules == other.rules)
    }
}

/// Everything table `ip orch` should hold: chains with their rules, verdict
/// map elements (key → target chain) and affinity sets (name → timeout).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ruleset {
    pub(super) chains: BTreeMap<String, ChainDef>,
    pub(super) maps: BTreeMap<MapDef, BTreeMap<MapKey, String>>,
    pub(super) sets: BTreeMap<String, u32>,
}

impl Ruleset {
    /// Names of all chains, for tests and debugging.
    pub fn chain_names(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    /// The target chain of `key` in map `map` (e.g. `"service-ips"`).
    #[must_use]
    pub fn target(&self, map: &str, key: &MapKey) -> Option<&str> {
        self.maps
            .iter()
            .find(|(m, _)| m.name == map)
            .and_then(|(_, e)| e.get(key))
            .map(String::as_str)
    }

    /// The rules of chain `name`, rendered as nft JSON, for tests.
    #[must_use]
    pub fn rules_json(&self, name: &str) -> Option<String> {
        self.chains
            .get(name)
            .and_then(|c| serde_json::to_string(c.rules.as_slice()).ok())
    }

    pub(super) fn chain(&mut self, name: impl Into<String>, rules: Vec<Vec<Statement<'static>>>) {
        let rules = Arc::new(rules);
        self.chains
            .insert(name.into(), ChainDef { base: None, rules });
    }

    fn base(
        &mut self,
        name: &str,
        kind: NfChainType,
        hook: NfHook,
        prio: i32,
        rules: Vec<Vec<Statement<'static>>>,
    ) {
        let base = Some(BaseHook { kind, hook, prio });
        let rules = Arc::new(rules);
        self.chains
            .insert(name.to_owned(), ChainDef { base, rules });
    }
}

/// Who rendered a piece of the table. When two owners claim the same map
/// key the greater wins: the node (cluster DNS, hostPorts) over every
/// Service, and among Services the last in namespace/name order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Owner {
    Service(String, String),
    Node,
}

/// One owner's share of the table: its chains and affinity sets (whose
/// names are its own) and the map elements it asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Part {
    pub(super) chains: BTreeMap<String, ChainDef>,
    pub(super) sets: BTreeMap<String, u32>,
    /// Map key → target chain; `None` keeps the key out of its map (the
    /// cluster DNS address out of `no-endpoint-services`).
    claims: BTreeMap<(MapDef, MapKey), Option<String>>,
}

impl Part {
    pub(super) fn chain(&mut self, name: impl Into<String>, rules: Vec<Vec<Statement<'static>>>) {
        let rules = Arc::new(rules);
        self.chains
            .insert(name.into(), ChainDef { base: None, rules });
    }

    fn element(&mut self, map: MapDef, key: MapKey, target: impl Into<String>) {
        self.claims.insert((map, key), Some(target.into()));
    }
}

// nft expression helpers -------------------------------------------------------

pub(super) fn s<'a>(v: impl Into<Cow<'a, str>>) -> Expression<'a> {
    Expression::String(v.into())
}

pub(super) fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn th_dport() -> Expression<'static> {
    // `th dport`: the destination port of whatever transport header follows.
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
        base: PayloadBase::TH,
        offset: 16,
        len: 16,
    })))
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn prefix(addr: Ipv4Addr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(addr.to_string())),
        len: u32::from(len),
    }))
}

pub(super) fn m(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `ct KEY FLAG`: the connection's `state` or `status` has the bit set.
fn ct_flag(key: &'static str, flag: &'static str) -> Statement<'static> {
    m(
        Expression::Named(NamedExpression::CT(nftables::expr::CT {
            key: key.into(),
            family: None,
            dir: None,
        })),
        Operator::IN,
        s(flag),
    )
}

pub(super) fn jump(target: impl Into<Cow<'static, str>>) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

pub(super) fn goto(target: impl Into<Cow<'static, str>>) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: target.into(),
    })
}

pub(super) fn goto_verdict<'a>(target: impl Into<Cow<'a, str>>) -> Expression<'a> {
    Expression::Verdict(Verdict::Goto(JumpTarget {
        target: target.into(),
    }))
}

fn fib_daddr_local() -> Statement<'static> {
    m(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        Operator::EQ,
        s("local"),
    )
}

fn not_loopback() -> Statement<'static> {
    m(
        field("ip", "daddr"),
        Operator::NEQ,
        prefix(Ipv4Addr::new(127, 0, 0, 0), 8),
    )
}

pub(super) fn vmap(key: Vec<Expression<'static>>, map: &str) -> Statement<'static> {
    Statement::VerdictMap(nftables::stmt::VerdictMap {
        key: Expression::Named(NamedExpression::Concat(key)),
        data: s(format!("@{map}")),
    })
}

fn addr_key() -> Vec<Expression<'static>> {
    vec![field("ip", "daddr"), meta(MetaKey::L4proto), th_dport()]
}

fn port_key() -> Vec<Expression<'static>> {
    vec![meta(MetaKey::L4proto), th_dport()]
}

pub(super) fn dnat(proto: Protocol, to: Ipv4Addr, port: u16) -> Vec<Statement<'static>> {
    vec![
        m(meta(MetaKey::L4proto), Operator::EQ, s(proto.as_str())),
        Statement::DNAT(Some(NAT {
            addr: Some(s(to.to_string())),
            family: None,
            port: Some(Expression::Number(u32::from(port))),
            flags: None,
        })),
    ]
}

pub(super) fn masquerade(fully_random: bool) -> Statement<'static> {
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags: fully_random.then(|| HashSet::from([NATFlag::FullyRandom])),
    }))
}

pub(super) fn set_mark(
    op: fn(Expression<'static>, Expression<'static>) -> BinaryOperation<'static>,
) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(op(
            meta(MetaKey::Mark),
            Expression::Number(MASQUERADE_MARK),
        ))),
    })
}

/// `<prefix>-<8 hex of sha256(readable)>-<readable>`, cut to what nf_tables
/// accepts. The hash keeps names unique when the readable part is cut.
pub(super) fn chain_name(prefix: &str, readable: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, readable.as_bytes());
    let mut name = format!("{prefix}-");
    for b in &digest.as_ref()[..4] {
        name.push_str(&format!("{b:02x}"));
    }
    name.push('-');
    name.push_str(readable);
    if name.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// One ready endpoint of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ep {
    ip: Ipv4Addr,
    pub(super) port: u16,
    local: bool,
}

/// The rule that sends a packet by `protocol . port` through `map` when it
/// is for one of this node's own addresses (not loopback).
fn by_local_port(map: &str) -> Vec<Statement<'static>> {
    vec![fib_daddr_local(), not_loopback(), vmap(port_key(), map)]
}

/// The rules that send a packet by `protocol . port` through `map` when it
/// is for one of the node's addresses (`node_ips`, IPv4, not loopback), or
/// for any local address but loopback when it has none of those.
fn by_node_port(cfg: &ProxyConfig, map: &str) -> Vec<Vec<Statement<'static>>> {
    let ips: BTreeSet<Ipv4Addr> = cfg
        .node_ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(*v4),
            _ => None,
        })
        .collect();
    if ips.is_empty() {
        return vec![by_local_port(map)];
    }
    ips.into_iter()
        .map(|ip| {
            vec![
                m(field("ip", "daddr"), Operator::EQ, s(ip.to_string())),
                vmap(port_key(), map),
            ]
        })
        .collect()
}

/// A chain that sends a packet by `address . protocol . port` through
/// `by_address`, then by port through `by_port` (`port_rules`).
fn dispatch_chain(
    rs: &mut Ruleset,
    name: &str,
    by_address: &str,
    port_rules: Vec<Vec<Statement<'static>>>,
) {
    let mut rules = vec![vec![vmap(addr_key(), by_address)]];
    rules.extend(port_rules);
    rs.chain(name, rules);
}

/// The static skeleton: base chains and the chains the maps hang off.
fn skeleton(cfg: &ProxyConfig, rs: &mut Ruleset) {
    use NfChainType::{Filter, NAT as Nat};
    let (cidr, len) = cfg.cluster_cidr;
    // Priorities: dstnat = -100, srcnat = 100; the endpoint checks run just
    // before DNAT (dstnat - 10), like kube-proxy's filter chains.
    //
    // The NodePort map is looked up from the base chain, not from
    // `services` after the ClusterIP map: every commit that adds a jump
    // makes the kernel re-validate every chain reachable from each base
    // chain, and it validates a chain once per hook only when no later
    // path reaches it deeper. NodePort → `ext-` → `svc-` at the depth of
    // `services` → `svc-` keeps every Service's chains to one walk per hook
    // instead of two (a third less time per update at 1,000 Services).
    for (name, hook) in [
        ("nat-prerouting", NfHook::Prerouting),
        ("nat-output", NfHook::Output),
    ] {
        rs.base(
            name,
            Nat,
            hook,
            -100,
            [
                vec![vec![jump("services")]],
                by_node_port(cfg, SERVICE_NODEPORTS.name),
                vec![vec![jump("hostports")]],
            ]
            .concat(),
        );
    }
    rs.base(
        "nat-postrouting",
        Nat,
        NfHook::Postrouting,
        100,
        vec![
            // Only connections a Service rule sent somewhere (DNATed): plain
            // traffic between the same addresses, the API server's own
            // loopback connections among it, is left alone.
            vec![
                ct_flag("status", "dnat"),
                m(
                    Expression::Named(NamedExpression::Concat(vec![
                        field("ip", "saddr"),
                        field("ip", "daddr"),
                    ])),
                    Operator::EQ,
                    s(format!("@{}", HAIRPIN.name)),
                ),
                jump(MARK_CHAIN),
            ],
            vec![jump("masquerading")],
            // Pods reaching outside the cluster leave with the node's address.
            vec![
                m(field("ip", "saddr"), Operator::EQ, prefix(cidr, len)),
                m(field("ip", "daddr"), Operator::NEQ, prefix(cidr, len)),
                masquerade(false),
            ],
        ],
    );
    for (name, hook) in [
        ("filter-input", NfHook::Input),
        ("filter-forward", NfHook::Forward),
        ("filter-output", NfHook::Output),
    ] {
        rs.base(
            name,
            Filter,
            hook,
            -110,
            vec![vec![
                ct_flag("state", "new"),
                jump("service-endpoints-check"),
            ]],
        );
    }
    dispatch_chain(
        rs,
        "service-endpoints-check",
        NO_EP_SERVICES.name,
        by_node_port(cfg, NO_EP_NODEPORTS.name),
    );
    rs.chain("services", vec![vec![vmap(addr_key(), SERVICE_IPS.name)]]);
    // hostPorts without a hostIP are on every address, as the CNI portmap
    // plugin publishes them.
    dispatch_chain(
        rs,
        "hostports",
        HOSTPORT_IPS.name,
        vec![by_local_port(HOSTPORT_ANY.name)],
    );
    rs.chain(
        MARK_CHAIN,
        vec![vec![set_mark(|a, b| BinaryOperation::OR(vec![a, b]))]],
    );
    rs.chain(
        "masquerading",
        vec![
            vec![
                m(
                    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                        meta(MetaKey::Mark),
                        Expression::Number(MASQUERADE_MARK),
                    ))),
                    Operator::EQ,
                    Expression::Number(0),
                ),
                Statement::Return(None),
            ],
            vec![set_mark(BinaryOperation::XOR)],
            vec![masquerade(true)],
        ],
    );
    rs.chain(REJECT_CHAIN, vec![vec![Statement::Reject(None)]]);
    rs.chain(DROP_CHAIN, vec![vec![Statement::Drop(None)]]);
    for map in MAPS {
        rs.maps.entry(map).or_default();
    }
}

/// Turn the cluster's Services and EndpointSlices and this node's hostPorts
/// into the table's desired content. Pure; deterministic.
#[must_use]
pub fn render_ruleset(
    cfg: &ProxyConfig,
    services: &[Service],
    slices: &[EndpointSlice],
    host_ports: &[HostPort],
) -> Ruleset {
    let mut rendered = Rendered::default();
    rendered.update(cfg, services, slices, host_ports);
    rendered.ruleset(cfg)
}

/// One owner's part before and after a re-rendering (`None`: absent).
#[derive(Debug)]
pub(super) struct Change {
    pub(super) old: Option<Arc<Part>>,
    pub(super) new: Option<Arc<Part>>,
}

/// What one [`Rendered::update`] changed.
#[derive(Debug, Default)]
pub(super) struct Delta {
    /// Parts that differ, in owner order.
    pub(super) changes: Vec<Change>,
    /// Map elements whose target moved: (map, key, before, after).
    pub(super) moves: Vec<(MapDef, MapKey, Option<String>, Option<String>)>,
    /// How many Services were rendered anew.
    pub(super) rendered: usize,
}

/// The table's content, kept by owner so that a sync renders and compares
/// only what changed: each Service's part with a digest of the inputs it
/// was rendered from, the node's part, and every owner's claims on each
/// map key. The skeleton is not kept: it only depends on the config.
#[derive(Debug, Default)]
pub(super) struct Rendered {
    parts: HashMap<Owner, (u64, Arc<Part>)>,
    claims: HashMap<(MapDef, MapKey), BTreeMap<Owner, Option<String>>>,
}

impl Rendered {
    /// Render the Services whose object or EndpointSlices changed (by uid
    /// and resourceVersion) and the node's part, drop the parts of Services
    /// that are gone, and say what that changed. A Service given twice
    /// counts once (the last).
    pub(super) fn update<'a>(
        &mut self,
        cfg: &ProxyConfig,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        host_ports: &[HostPort],
    ) -> Delta {
        let by_service = slices_by_service(slices);
        let mut wanted: BTreeMap<(&str, &str), &Service> = BTreeMap::new();
        for svc in services {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            wanted.insert((ns, name), svc);
        }
        let mut delta = Delta::default();
        let mut changed = Vec::new();
        for (&(ns, name), svc) in &wanted {
            let svc_slices = by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let owner = Owner::Service(ns.to_owned(), name.to_owned());
            let digest = input_digest(svc, svc_slices);
            if self.parts.get(&owner).is_some_and(|(d, _)| *d == digest) {
                continue;
            }
            delta.rendered += 1;
            let new = Arc::new(render_service(cfg, svc, svc_slices));
            let old = self.parts.insert(owner.clone(), (digest, new.clone()));
            changed.push((owner, old.map(|(_, p)| p), Some(new)));
        }
        let mut gone: Vec<Owner> = self
            .parts
            .keys()
            .filter(|o| match o {
                Owner::Service(ns, name) => !wanted.contains_key(&(ns.as_str(), name.as_str())),
                Owner::Node => false,
            })
            .cloned()
            .collect();
        gone.sort();
        for owner in gone {
            let old = self.parts.remove(&owner).map(|(_, p)| p);
            changed.push((owner, old, None));
        }
        let node = Arc::new(render_node(cfg, host_ports));
        let old = self.parts.insert(Owner::Node, (0, node.clone()));
        changed.push((Owner::Node, old.map(|(_, p)| p), Some(node)));

        // Move the claims; remember each touched key's winner before.
        let mut touched: BTreeMap<(MapDef, MapKey), Option<String>> = BTreeMap::new();
        for (owner, old, new) in changed {
            if old.as_deref() == new.as_deref() {
                continue;
            }
            for part in [&old, &new].into_iter().flatten() {
                for key in part.claims.keys() {
                    if !touched.contains_key(key) {
                        touched.insert(key.clone(), self.winner(key));
                    }
                }
            }
            for key in old.iter().flat_map(|p| p.claims.keys()) {
                if let Some(claims) = self.claims.get_mut(key) {
                    claims.remove(&owner);
                    if claims.is_empty() {
                        self.claims.remove(key);
                    }
                }
            }
            for (key, target) in new.iter().flat_map(|p| &p.claims) {
                self.claims
                    .entry(key.clone())
                    .or_default()
                    .insert(owner.clone(), target.clone());
            }
            delta.changes.push(Change { old, new });
        }
        for ((map, key), before) in touched {
            let after = self.winner(&(map, key.clone()));
            if before != after {
                delta.moves.push((map, key, before, after));
            }
        }
        delta
    }

    /// The element `key` should have: the greatest owner's claim.
    fn winner(&self, key: &(MapDef, MapKey)) -> Option<String> {
        self.claims
            .get(key)
            .and_then(|c| c.values().next_back())
            .cloned()
            .flatten()
    }

    /// The whole table: the skeleton, every part, the winning claims.
    pub(super) fn ruleset(&self, cfg: &ProxyConfig) -> Ruleset {
        let mut rs = Ruleset::default();
        skeleton(cfg, &mut rs);
        for (_, part) in self.parts.values() {
            rs.chains
                .extend(part.chains.iter().map(|(n, c)| (n.clone(), c.clone())));
            rs.sets
                .extend(part.sets.iter().map(|(n, t)| (n.clone(), *t)));
        }
        for (map, key) in self.claims.keys() {
            if let Some(target) = self.winner(&(*map, key.clone())) {
                rs.maps.entry(*map).or_default().insert(key.clone(), target);
            }
        }
        rs
    }
}

/// The IPv4 EndpointSlices of each Service, by (namespace, service name).
fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let labels = slice.metadata.labels.as_ref();
        let Some(svc) = labels.and_then(|l| l.get("kubernetes.io/service-name")) else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }
    by_service
}

/// A digest of everything [`render_service`] reads. Objects from the
/// apiserver carry a uid and resourceVersion, which change with every write,
/// so those are enough; objects without (tests, hand-made ones) are hashed
/// whole.
fn input_digest(svc: &Service, slices: &[&EndpointSlice]) -> u64 {
    fn meta_key(
        m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Option<(&str, &str)> {
        Some((m.uid.as_deref()?, m.resource_version.as_deref()?))
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let versioned =
        meta_key(&svc.metadata).is_some() && slices.iter().all(|s| meta_key(&s.metadata).is_some());
    if versioned {
        meta_key(&svc.metadata).hash(&mut h);
        for s in slices {
            meta_key(&s.metadata).hash(&mut h);
        }
    } else {
        // Serialising k8s-openapi types is deterministic (maps are BTreeMaps).
        serde_json::to_vec(svc).unwrap_or_default().hash(&mut h);
        for s in slices {
            serde_json::to_vec(s).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}

/// What one Service contributes to the table: its chains, map elements and
/// affinity sets. Pure.
fn render_service(cfg: &ProxyConfig, svc: &Service, svc_slices: &[&EndpointSlice]) -> Part {
    let (cidr, cidr_len) = cfg.cluster_cidr;
    let mut rs = Part::default();
    let Some(spec) = &svc.spec else { return rs };
    if spec.type_.as_deref() == Some("ExternalName") {
        return rs;
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let cluster_ips: BTreeSet<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if cluster_ips.is_empty() {
        // Headless (None) or not allocated yet (or IPv6-only for now).
        return rs;
    }
    let lb_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref());
    let external_ips: BTreeSet<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .chain(lb_ips)
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });

    for port in spec.ports.iter().flatten() {
        let Some(proto) = Protocol::from_api(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            continue;
        };
        let port_name = port.name.as_deref().unwrap_or_default();
        let eps = ready_endpoints(svc_slices, port_name, proto, &cfg.node_name);
        let label = if port_name.is_empty() {
            svc_port.to_string()
        } else {
            port_name.to_owned()
        };
        let readable = format!("{ns}/{name}/{}/{label}", proto.as_str());

        let local: Vec<Ep> = eps.iter().copied().filter(|e| e.local).collect();
        let cluster_eps = if itp_local { &local } else { &eps };
        let external_eps = if etp_local { &local } else { &eps };

        let svc_chain = chain_name("svc", &readable);
        for ip in &cluster_ips {
            let key = MapKey::Addr(*ip, proto, svc_port);
            if eps.is_empty() {
                rs.element(NO_EP_SERVICES, key, REJECT_CHAIN);
            } else if cluster_eps.is_empty() {
                rs.element(NO_EP_SERVICES, key, DROP_CHAIN);
            } else {
                rs.element(SERVICE_IPS, key, svc_chain.clone());
            }
        }
        if !cluster_eps.is_empty() {
            // Clients outside the pod network (the node itself, other
            // hosts routed here) are masqueraded so replies come back here.
            let mut rules = vec![vec![
                m(field("ip", "saddr"), Operator::NEQ, prefix(cidr, cidr_len)),
                jump(MARK_CHAIN),
            ]];
            rules.extend(dispatch(&mut rs, &readable, proto, cluster_eps, affinity));
            rs.chain(svc_chain.clone(), rules);
        }

        let node_port = port
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        if node_port.is_none() && external_ips.is_empty() {
            continue;
        }
        let (ip_map, port_map, target) = if eps.is_empty() {
            (NO_EP_SERVICES, NO_EP_NODEPORTS, REJECT_CHAIN.to_owned())
        } else {
            let ext_chain = chain_name("ext", &readable);
            let rules = if etp_local {
                // Local: keep the client's address, and only local pods.
                if external_eps.is_empty() {
                    vec![vec![Statement::Drop(None)]]
                } else {
                    dispatch(&mut rs, &readable, proto, external_eps, affinity)
                }
            } else if !itp_local {
                // The same endpoints as the ClusterIP: reuse its pick rather
                // than repeat it (its own masquerade rule is then a no-op).
                // Two rules: nft rejects statements after a verdict (`jump`).
                vec![vec![jump(MARK_CHAIN)], vec![goto(svc_chain.clone())]]
            } else {
                let mut r = vec![vec![jump(MARK_CHAIN)]];
                r.extend(dispatch(&mut rs, &readable, proto, external_eps, affinity));
                r
            };
            rs.chain(ext_chain.clone(), rules);
            (SERVICE_IPS, SERVICE_NODEPORTS, ext_chain)
        };
        for ip in &external_ips {
            rs.element(ip_map, MapKey::Addr(*ip, proto, svc_port), target.clone());
        }
        if let Some(np) = node_port {
            rs.element(port_map, MapKey::Port(proto, np), target.clone());
        }
    }
    rs
}

/// The node's own part, rendered on every sync (it is small): cluster DNS
/// (which wins over a Service holding its address) and hostPorts.
fn render_node(cfg: &ProxyConfig, host_ports: &[HostPort]) -> Part {
    let mut rs = Part::default();
    if let Some((IpAddr::V4(dns_ip), SocketAddr::V4(listener))) = cfg.dns {
        let mut rules = Vec::new();
        for proto in [Protocol::Udp, Protocol::Tcp] {
            rules.push(dnat(proto, *listener.ip(), listener.port()));
            let key = MapKey::Addr(dns_ip, proto, 53);
            // The node-local DNS wins over a Service holding the same IP
            // (the node is the greatest owner).
            rs.claims.insert((NO_EP_SERVICES, key.clone()), None);
            rs.element(SERVICE_IPS, key, DNS_CHAIN);
        }
        rs.chain(DNS_CHAIN, rules);
    }

    for hp in host_ports {
        let IpAddr::V4(pod_ip) = hp.pod_ip else {
            continue;
        };
        let host_ip = match hp.host_ip {
            None => None,
            Some(IpAddr::V4(ip)) if ip.is_unspecified() => None,
            Some(IpAddr::V4(ip)) => Some(ip),
            Some(IpAddr::V6(_)) => continue,
        };
        let readable = format!(
            "{}/{}/{}",
            hp.protocol.as_str(),
            host_ip.map_or_else(|| "any".to_owned(), |ip| ip.to_string()),
            hp.host_port
        );
        let chain = chain_name("hostport", &readable);
        let key = match host_ip {
            Some(ip) => MapKey::Addr(ip, hp.protocol, hp.host_port),
            None => MapKey::Port(hp.protocol, hp.host_port),
        };
        rs.element(
            if host_ip.is_some() {
                HOSTPORT_IPS
            } else {
                HOSTPORT_ANY
            },
            key,
            chain.clone(),
        );
        rs.element(HAIRPIN, MapKey::Pair(pod_ip), String::new());
        rs.chain(chain, vec![dnat(hp.protocol, pod_ip, hp.container_port)]);
    }
    rs
}

/// The ready IPv4 endpoints of one service port, sorted and deduplicated. The
/// target port is the one of the slice port named like the service port.
fn ready_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Protocol,
    node: &str,
) -> Vec<Ep> {
    let mut out = BTreeMap::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && Protocol::from_api(p.protocol.as_deref()) == Some(proto)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            // A missing `ready` means unknown, which consumers treat as ready.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let local = ep.node_name.as_deref() == Some(node);
            out.insert((ip, target), local);
        }
    }
    out.into_iter()
        .map(|((ip, port), local)| Ep { ip, port, local })
        .collect()
}

/// Rules choosing one of `eps` (affinity first, then a random pick), and the
/// endpoint chains (and affinity sets) they go to.
///
/// The random pick is a cascade, as kube-proxy's iptables mode does it: rule
/// `i` of `n` takes `numgen random mod (n - i) == 0`, which makes every
/// endpoint equally likely, and the last one is unconditional. It is not
/// kube-proxy nftables' single `numgen random mod n vmap { 0 : goto …, … }`
/// because each such rule holds an anonymous map, and the kernel (6.18 here)
/// binds every new anonymous set by walking the whole transaction
/// (`__nft_set_trans_bind`) and names it by scanning every set of the table
/// (`__map%d`): quadratic, ~1.2 s of kernel time for the 2,000 maps of
/// 1,000 NodePort Services, against ~0.4 s for the whole table without them.
/// The cascade only runs for a connection's first packet (nat chains).
fn dispatch(
    rs: &mut Part,
    readable: &str,
    proto: Protocol,
    eps: &[Ep],
    affinity: Option<u32>,
) -> Vec<Vec<Statement<'static>>> {
    let mut rules = Vec::new();
    let mut picks = Vec::new();
    let n = u32::try_from(eps.len()).expect("fewer than 2^32 endpoints");
    for (i, ep) in eps.iter().enumerate() {
        let ep_readable = format!("{readable}__{}/{}", ep.ip, ep.port);
        let ep_chain = chain_name("ep", &ep_readable);
        let mut ep_rules = Vec::new();
        // Hairpin: a pod reaching itself through its Service.
        rs.element(HAIRPIN, MapKey::Pair(ep.ip), String::new());
        if let Some(timeout) = affinity {
            // The timeout is part of the name: a set's timeout cannot change.
            let set = chain_name("affinity", &format!("{ep_readable}/{timeout}"));
            rules.push(vec![
                m(field("ip", "saddr"), Operator::EQ, s(format!("@{set}"))),
                goto(ep_chain.clone()),
            ]);
            ep_rules.push(vec![Statement::Set(nftables::stmt::Set {
                op: SetOp::Update,
                elem: field("ip", "saddr"),
                set: format!("@{set}").into(),
            })]);
            rs.sets.insert(set, timeout);
        }
        ep_rules.push(dnat(proto, ep.ip, ep.port));
        let left = n - u32::try_from(i).expect("fewer than 2^32 endpoints");
        picks.push(if left > 1 {
            vec![
                m(
                    Expression::Named(NamedExpression::Numgen(Numgen {
                        mode: NgMode::Random,
                        ng_mod: left,
                        offset: None,
                    })),
                    Operator::EQ,
                    Expression::Number(0),
                ),
                goto(ep_chain.clone()),
            ]
        } else {
            vec![goto(ep_chain.clone())]
        });
        rs.chains.entry(ep_chain).or_insert(ChainDef {
            base: None,
            rules: Arc::new(ep_rules),
        });
    }
    rules.extend(picks);
    rules
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------
