//! The proxy's transactions as one nf_tables netlink batch, sent straight
//! to the kernel.
//!
//! `nft` reads every chain and set of the table before it changes a rule
//! (its cache), and the kernel's chain dump behind that read grows with the
//! square of the chains: at 1,000 Services × 10 endpoints that alone costs
//! more than an endpoint update may take, and parsing a full load's JSON
//! costs `nft` more than the kernel takes to load it. The proxy's rules
//! only use a handful of statements, so they are encoded here the way nft
//! 1.0.6 encodes them (the same expressions, registers and byte orders, so
//! `nft list` prints them alike — a kernel test compares the two) and sent
//! over a `NETLINK_NETFILTER` socket.
//!
//! Anything else is [`Unsupported`], and the proxy hands that transaction
//! to `nft` instead.
//!
//! Constants are those of the kernel's UAPI headers
//! (`linux/netfilter/nf_tables.h`, `nfnetlink.h`, `nf_nat.h`,
//! `linux/netlink.h`, `linux/rtnetlink.h`) and of nft's data types.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nftables::expr::{
    BinaryOperation, Expression, FibFlag, FibResult, MetaKey, NamedExpression, NgMode, Payload,
    PayloadBase, PayloadField, PayloadRaw,
};
use nftables::stmt::{Match, NAT, NATFlag, Operator, SetOp, Statement};
use nftables::types::{NfChainType, NfHook};

use super::plan::Cmd;
use super::render::{BaseHook, MapDef, MapKey};
use super::{Protocol, TABLE};

// netlink
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const MSG_DONTWAIT: i32 = 0x40;
// nfnetlink
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
// nf_tables messages
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
// attributes
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
// values
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_REG32_00: u32 = 8;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_NG_RANDOM: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const ICMP_PORT_UNREACH: u8 = 3;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NF_ACCEPT_POLICY: u32 = 1;
/// `RTN_LOCAL`: what `fib daddr type local` compares with.
const RTN_LOCAL: u32 = 2;
/// The `new` bit of `ct state` (`IP_CT_NEW` as nft's bitmask).
const CT_STATE_NEW: u32 = 1 << 3;
/// The `dnat` bit of `ct status` (`IPS_DST_NAT`).
const CT_STATUS_DNAT: u32 = 1 << 5;
/// nft's data type numbers (read back by `nft list`; a concatenation's type
/// is its members' numbers, 6 bits each).
const TYPE_IPADDR: u32 = 7;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
/// nft's set user data saying the key is big-endian (a `NFTNL_UDATA_SET_KEYBYTEORDER`
/// TLV holding `BYTEORDER_BIG_ENDIAN`), as nft writes it for an `ipv4_addr` set.
const KEY_BIG_ENDIAN: [u8; 6] = [0, 4, 2, 0, 0, 0];

/// Why a transaction cannot be encoded here (it goes to `nft` instead).
#[derive(Debug)]
pub(super) struct Unsupported(pub String);

/// Why [`send`] failed.
#[derive(Debug)]
pub(super) enum SendError {
    /// The socket could not be made or could not take the batch; nothing
    /// reached nf_tables.
    Socket(io::Error),
    /// The kernel refused the batch, at command `index` or at commit
    /// (`None`); nothing of it was applied.
    Refused {
        index: Option<usize>,
        error: io::Error,
    },
}

/// Map elements per message: an attribute nest holds at most 64 KiB.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// An encoded batch and the sequence number of its first message.
pub(super) struct Batch {
    buf: Vec<u8>,
    first_seq: u32,
    /// The command each message after the batch-begin one encodes.
    commands: Vec<usize>,
}

impl Batch {
    /// Its size in bytes.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }
}

/// Netlink messages and attributes, written into one buffer. Header fields
/// are in host byte order, nf_tables' integer attributes in network order.
struct Writer {
    buf: Vec<u8>,
    seq: u32,
}

impl Writer {
    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Self),
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 16]);
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(self);
        let len = u32::try_from(self.buf.len() - start).expect("a message is far below 4 GiB");
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
        self.buf[start + 6..start + 8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.buf[start + 8..start + 12].copy_from_slice(&self.seq.to_ne_bytes());
        self.seq = self.seq.wrapping_add(1);
    }

    fn nft_message(&mut self, msg: u16, flags: u16, body: impl FnOnce(&mut Self)) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            NFPROTO_IPV4,
            0,
            body,
        );
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("attributes here are small");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn string(&mut self, kind: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(kind, &data);
    }

    fn u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        body(self);
        let len = u16::try_from(self.buf.len() - start).expect("nested attributes here are small");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn value(&mut self, kind: u16, data: &[u8]) {
        self.nest(kind, |w| w.attr(NFTA_DATA_VALUE, data));
    }

    fn verdict(&mut self, kind: u16, code: i32, chain: Option<&str>) {
        self.nest(kind, |w| {
            w.nest(NFTA_DATA_VERDICT, |w| {
                w.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(chain) = chain {
                    w.string(NFTA_VERDICT_CHAIN, chain);
                }
            });
        });
    }

    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Self)) {
        self.nest(NFTA_LIST_ELEM, |w| {
            w.string(NFTA_EXPR_NAME, name);
            w.nest(NFTA_EXPR_DATA, body);
        });
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, reg: u32) {
        self.expr("payload", |w| {
            w.u32(NFTA_PAYLOAD_DREG, reg);
            w.u32(NFTA_PAYLOAD_BASE, base);
            w.u32(NFTA_PAYLOAD_OFFSET, offset);
            w.u32(NFTA_PAYLOAD_LEN, len);
        });
    }

    fn meta(&mut self, key: u32, reg: u32) {
        self.expr("meta", |w| {
            w.u32(NFTA_META_DREG, reg);
            w.u32(NFTA_META_KEY, key);
        });
    }

    fn cmp(&mut self, op: u32, data: &[u8]) {
        self.expr("cmp", |w| {
            w.u32(NFTA_CMP_SREG, NFT_REG_1);
            w.u32(NFTA_CMP_OP, op);
            w.value(NFTA_CMP_DATA, data);
        });
    }

    /// `reg = (reg & mask) ^ xor` over `mask.len()` bytes.
    fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8]) {
        let len = u32::try_from(mask.len()).expect("a register's width");
        self.expr("bitwise", |w| {
            w.u32(NFTA_BITWISE_SREG, reg);
            w.u32(NFTA_BITWISE_DREG, reg);
            w.u32(NFTA_BITWISE_LEN, len);
            w.value(NFTA_BITWISE_MASK, mask);
            w.value(NFTA_BITWISE_XOR, xor);
        });
    }

    fn immediate(&mut self, reg: u32, data: &[u8]) {
        self.expr("immediate", |w| {
            w.u32(NFTA_IMMEDIATE_DREG, reg);
            w.value(NFTA_IMMEDIATE_DATA, data);
        });
    }

    fn verdict_expr(&mut self, code: i32, chain: Option<&str>) {
        self.expr("immediate", |w| {
            w.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            w.verdict(NFTA_IMMEDIATE_DATA, code, chain);
        });
    }
}

fn unsupported(what: impl std::fmt::Debug) -> Unsupported {
    Unsupported(format!("{what:?}"))
}

/// What a loaded value is, which says how to write what it is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// An IPv4 address (network order).
    Addr,
    /// A protocol number (one byte).
    Proto,
    /// A port (network order).
    Port,
    /// A host-order u32: mark, numgen, fib type, ct state.
    Host,
}

/// The offset of `ip saddr` / `ip daddr` in the network header.
fn ip_field(e: &Expression<'_>) -> Option<u32> {
    match e {
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
            protocol,
            field,
        }))) if protocol == "ip" => match field.as_ref() {
            "saddr" => Some(12),
            "daddr" => Some(16),
            _ => None,
        },
        _ => None,
    }
}

/// Load `e` into register `reg`, the way nft does; its kind and length.
fn load(w: &mut Writer, e: &Expression<'_>, reg: u32) -> Result<(Kind, u32), Unsupported> {
    if let Some(offset) = ip_field(e) {
        w.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4, reg);
        return Ok((Kind::Addr, 4));
    }
    match e {
        Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
            base: PayloadBase::TH,
            offset: 16,
            len: 16,
        }))) => {
            // `th dport`.
            w.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg);
            Ok((Kind::Port, 2))
        }
        Expression::Named(NamedExpression::Meta(m)) => match m.key {
            MetaKey::L4proto => {
                w.meta(NFT_META_L4PROTO, reg);
                Ok((Kind::Proto, 1))
            }
            MetaKey::Mark => {
                w.meta(NFT_META_MARK, reg);
                Ok((Kind::Host, 4))
            }
            other => Err(unsupported(other)),
        },
        Expression::Named(NamedExpression::Numgen(ng)) if ng.mode == NgMode::Random => {
            w.expr("numgen", |w| {
                w.u32(NFTA_NG_DREG, reg);
                w.u32(NFTA_NG_MODULUS, ng.ng_mod);
                w.u32(NFTA_NG_TYPE, NFT_NG_RANDOM);
                w.u32(NFTA_NG_OFFSET, ng.offset.unwrap_or(0));
            });
            Ok((Kind::Host, 4))
        }
        Expression::Named(NamedExpression::Fib(fib))
            if fib.result == FibResult::Type
                && fib.flags.len() == 1
                && fib.flags.contains(&FibFlag::Daddr) =>
        {
            w.expr("fib", |w| {
                w.u32(NFTA_FIB_DREG, reg);
                w.u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                w.u32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
            });
            Ok((Kind::Host, 4))
        }
        Expression::Named(NamedExpression::CT(ct)) if ct.family.is_none() && ct.dir.is_none() => {
            let key = match ct.key.as_ref() {
                "state" => NFT_CT_STATE,
                "status" => NFT_CT_STATUS,
                _ => return Err(unsupported(e)),
            };
            w.expr("ct", |w| {
                w.u32(NFTA_CT_DREG, reg);
                w.u32(NFTA_CT_KEY, key);
            });
            Ok((Kind::Host, 4))
        }
        Expression::BinaryOperation(op) => match op.as_ref() {
            BinaryOperation::AND(inner, Expression::Number(mask)) => {
                let (kind, len) = load(w, inner, reg)?;
                if kind != Kind::Host {
                    return Err(unsupported(e));
                }
                w.bitwise(reg, &mask.to_ne_bytes(), &[0; 4]);
                Ok((kind, len))
            }
            _ => Err(unsupported(e)),
        },
        other => Err(unsupported(other)),
    }
}

/// The bytes `e` stands for, compared with a value of `kind`.
fn data(kind: Kind, e: &Expression<'_>) -> Result<Vec<u8>, Unsupported> {
    match (kind, e) {
        (Kind::Addr, Expression::String(s)) => s
            .parse::<Ipv4Addr>()
            .map(|a| a.octets().to_vec())
            .map_err(|_| unsupported(s)),
        (Kind::Proto, Expression::String(s)) => match s.as_ref() {
            "tcp" => Ok(vec![6]),
            "udp" => Ok(vec![17]),
            "sctp" => Ok(vec![132]),
            _ => Err(unsupported(s)),
        },
        (Kind::Port, Expression::Number(n)) => u16::try_from(*n)
            .map(|p| p.to_be_bytes().to_vec())
            .map_err(|_| unsupported(n)),
        (Kind::Host, Expression::Number(n)) => Ok(n.to_ne_bytes().to_vec()),
        (Kind::Host, Expression::String(s)) if s == "local" => Ok(RTN_LOCAL.to_ne_bytes().to_vec()),
        _ => Err(unsupported(e)),
    }
}

fn cmp_op(op: Operator) -> Result<u32, Unsupported> {
    match op {
        Operator::EQ => Ok(NFT_CMP_EQ),
        Operator::NEQ => Ok(NFT_CMP_NEQ),
        other => Err(unsupported(other)),
    }
}

/// One match, as nft 1.0.6 compiles it.
fn match_exprs(w: &mut Writer, m: &Match<'_>) -> Result<(), Unsupported> {
    // `ct state new`, `ct status dnat`: a flag test.
    if m.op == Operator::IN {
        let flag = match (&m.left, &m.right) {
            (Expression::Named(NamedExpression::CT(ct)), Expression::String(s)) => {
                match (ct.key.as_ref(), s.as_ref()) {
                    ("state", "new") => CT_STATE_NEW,
                    ("status", "dnat") => CT_STATUS_DNAT,
                    _ => return Err(unsupported(m)),
                }
            }
            _ => return Err(unsupported(m)),
        };
        let (kind, _) = load(w, &m.left, NFT_REG_1)?;
        if kind != Kind::Host {
            return Err(unsupported(m));
        }
        w.bitwise(NFT_REG_1, &flag.to_ne_bytes(), &[0; 4]);
        w.cmp(NFT_CMP_NEQ, &[0; 4]);
        return Ok(());
    }
    let op = cmp_op(m.op)?;
    if let (Expression::Named(NamedExpression::Concat(fields)), Expression::String(set)) =
        (&m.left, &m.right)
        && let Some(set) = set.strip_prefix('@')
    {
        // `a . b @set`: the fields in consecutive registers, then a lookup.
        load_concat(w, fields)?;
        w.expr("lookup", |w| {
            w.string(NFTA_LOOKUP_SET, set);
            w.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
            if op == NFT_CMP_NEQ {
                w.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
        return Ok(());
    }
    if let Some(offset) = ip_field(&m.left) {
        match &m.right {
            Expression::String(set) if set.starts_with('@') => {
                w.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4, NFT_REG_1);
                w.expr("lookup", |w| {
                    w.string(NFTA_LOOKUP_SET, &set[1..]);
                    w.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
                    if op == NFT_CMP_NEQ {
                        w.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                    }
                });
                return Ok(());
            }
            Expression::Named(NamedExpression::Prefix(p)) => {
                let addr = data(Kind::Addr, &p.addr)?;
                let len = usize::try_from(p.len).map_err(|_| unsupported(p.len))?;
                if len > 32 {
                    return Err(unsupported(p.len));
                }
                if len > 0 && len.is_multiple_of(8) {
                    // A whole number of bytes: compare just those.
                    let bytes = u32::try_from(len / 8).expect("at most 4");
                    w.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, bytes, NFT_REG_1);
                    w.cmp(op, &addr[..len / 8]);
                } else {
                    let mask = u32::MAX.checked_shl(32 - p.len).unwrap_or(0).to_be_bytes();
                    let masked: Vec<u8> = addr.iter().zip(mask).map(|(a, m)| a & m).collect();
                    w.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4, NFT_REG_1);
                    w.bitwise(NFT_REG_1, &mask, &[0; 4]);
                    w.cmp(op, &masked);
                }
                return Ok(());
            }
            _ => {}
        }
    }
    let (kind, _) = load(w, &m.left, NFT_REG_1)?;
    let bytes = data(kind, &m.right)?;
    w.cmp(op, &bytes);
    Ok(())
}

/// `meta mark set meta mark | N` and `… ^ N`.
fn set_mark(w: &mut Writer, value: &Expression<'_>) -> Result<(), Unsupported> {
    let is_mark = |e: &Expression<'_>| matches!(e, Expression::Named(NamedExpression::Meta(m)) if m.key == MetaKey::Mark);
    let Expression::BinaryOperation(op) = value else {
        return Err(unsupported(value));
    };
    let (mask, xor) = match op.as_ref() {
        BinaryOperation::OR(v) => match v.as_slice() {
            [m, Expression::Number(n)] if is_mark(m) => (!n, *n),
            _ => return Err(unsupported(value)),
        },
        BinaryOperation::XOR(m, Expression::Number(n)) if is_mark(m) => (u32::MAX, *n),
        _ => return Err(unsupported(value)),
    };
    w.meta(NFT_META_MARK, NFT_REG_1);
    w.bitwise(NFT_REG_1, &mask.to_ne_bytes(), &xor.to_ne_bytes());
    w.expr("meta", |w| {
        w.u32(NFTA_META_KEY, NFT_META_MARK);
        w.u32(NFTA_META_SREG, NFT_REG_1);
    });
    Ok(())
}

fn dnat_exprs(w: &mut Writer, nat: &NAT<'_>) -> Result<(), Unsupported> {
    if nat.family.is_some() || nat.flags.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(unsupported(nat));
    }
    let addr = data(
        Kind::Addr,
        nat.addr.as_ref().ok_or_else(|| unsupported(nat))?,
    )?;
    let port = match &nat.port {
        None => None,
        Some(p) => Some(data(Kind::Port, p)?),
    };
    w.immediate(NFT_REG_1, &addr);
    if let Some(port) = &port {
        w.immediate(NFT_REG_2, port);
    }
    w.expr("nat", |w| {
        w.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        w.u32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4));
        w.u32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
        if port.is_some() {
            w.u32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2);
            w.u32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        }
    });
    Ok(())
}

fn masquerade(w: &mut Writer, nat: Option<&NAT<'_>>) -> Result<(), Unsupported> {
    let mut flags = 0;
    if let Some(nat) = nat {
        if nat.addr.is_some() || nat.port.is_some() || nat.family.is_some() {
            return Err(unsupported(nat));
        }
        for f in nat.flags.iter().flatten() {
            match f {
                NATFlag::FullyRandom => flags |= NF_NAT_RANGE_PROTO_RANDOM_FULLY,
                other => return Err(unsupported(other)),
            }
        }
    }
    w.expr("masq", |w| {
        if flags != 0 {
            w.u32(NFTA_MASQ_FLAGS, flags);
        }
    });
    Ok(())
}

/// Load a concatenation's fields into consecutive 32-bit registers from
/// `NFT_REG_1` on, each taking whole registers, as nft lays out set keys.
fn load_concat(w: &mut Writer, fields: &[Expression<'_>]) -> Result<(), Unsupported> {
    let mut words = 0;
    for field in fields {
        let reg = if words == 0 {
            NFT_REG_1
        } else {
            NFT_REG32_00 + words
        };
        let (_, len) = load(w, field, reg)?;
        words += len.div_ceil(4);
    }
    Ok(())
}

/// `KEY vmap @map`: the key's fields in consecutive 32-bit registers.
fn verdict_map(
    w: &mut Writer,
    key: &Expression<'_>,
    map: &Expression<'_>,
) -> Result<(), Unsupported> {
    let Expression::String(map) = map else {
        return Err(unsupported(map));
    };
    let Some(map) = map.strip_prefix('@') else {
        return Err(unsupported(map));
    };
    let fields = match key {
        Expression::Named(NamedExpression::Concat(fields)) => fields.as_slice(),
        single => std::slice::from_ref(single),
    };
    load_concat(w, fields)?;
    w.expr("lookup", |w| {
        w.string(NFTA_LOOKUP_SET, map);
        w.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
        w.u32(NFTA_LOOKUP_DREG, NFT_REG_VERDICT);
    });
    Ok(())
}

/// A rule's expressions. Supported: matches of `ip saddr`/`ip daddr`
/// (against an address, a prefix or a set), `meta l4proto`, `meta mark &
/// N`, `numgen random mod N`, `fib daddr type local`, `ct state new`;
/// `jump`, `goto`, `accept`, `drop`, `return`, `reject`; verdict maps over
/// concatenations of those; `dnat to ADDR[:PORT]`, `masquerade
/// [fully-random]`; `meta mark set meta mark | N` / `^ N`; `update @set
/// { ip saddr }`.
fn rule(w: &mut Writer, statements: &[Statement<'_>]) -> Result<(), Unsupported> {
    for st in statements {
        match st {
            Statement::Match(m) => match_exprs(w, m)?,
            Statement::Jump(t) => w.verdict_expr(NFT_JUMP, Some(&t.target)),
            Statement::Goto(t) => w.verdict_expr(NFT_GOTO, Some(&t.target)),
            Statement::Accept(None) => w.verdict_expr(NF_ACCEPT, None),
            Statement::Drop(None) => w.verdict_expr(NF_DROP, None),
            Statement::Return(None) => w.verdict_expr(NFT_RETURN, None),
            Statement::Reject(None) => w.expr("reject", |w| {
                w.u32(NFTA_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH);
                w.attr(NFTA_REJECT_ICMP_CODE, &[ICMP_PORT_UNREACH]);
            }),
            Statement::DNAT(Some(nat)) => dnat_exprs(w, nat)?,
            Statement::Masquerade(nat) => masquerade(w, nat.as_ref())?,
            Statement::VerdictMap(v) => verdict_map(w, &v.key, &v.data)?,
            Statement::Mangle(m) if matches!(&m.key, Expression::Named(NamedExpression::Meta(k)) if k.key == MetaKey::Mark) =>
            {
                set_mark(w, &m.value)?;
            }
            Statement::Set(set) if set.op == SetOp::Update && set.set.starts_with('@') => {
                let (kind, _) = load(w, &set.elem, NFT_REG_1)?;
                if kind != Kind::Addr {
                    return Err(unsupported(&set.elem));
                }
                w.expr("dynset", |w| {
                    w.string(NFTA_DYNSET_SET_NAME, &set.set[1..]);
                    w.u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                    w.u32(NFTA_DYNSET_SREG_KEY, NFT_REG_1);
                });
            }
            other => return Err(unsupported(other)),
        }
    }
    Ok(())
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// A verdict-map key as the kernel stores it: each field in 4-byte
/// registers (an address; the protocol number; the port, big-endian).
fn key_bytes(key: &MapKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    let (addr, proto, port) = match key {
        MapKey::Addr(a, p, n) => (Some(*a), *p, *n),
        MapKey::Port(p, n) => (None, *p, *n),
        MapKey::Pair(a) => {
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&a.octets());
            return out;
        }
    };
    if let Some(a) = addr {
        out.extend_from_slice(&a.octets());
    }
    out.extend_from_slice(&[protocol_number(proto), 0, 0, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// A verdict map's key: nft's concatenated type number and its length.
fn map_key_type(map: &MapDef) -> Result<(u32, u32), Unsupported> {
    let mut kind = 0;
    for t in map.key {
        let n = match *t {
            "ipv4_addr" => TYPE_IPADDR,
            "inet_proto" => TYPE_INET_PROTOCOL,
            "inet_service" => TYPE_INET_SERVICE,
            other => return Err(unsupported(other)),
        };
        kind = (kind << 6) | n;
    }
    let len = u32::try_from(map.key.len() * 4).expect("a few fields");
    Ok((kind, len))
}

fn hook_number(hook: NfHook) -> Result<u32, Unsupported> {
    match hook {
        NfHook::Prerouting => Ok(0),
        NfHook::Input => Ok(1),
        NfHook::Forward => Ok(2),
        NfHook::Output => Ok(3),
        NfHook::Postrouting => Ok(4),
        other => Err(unsupported(other)),
    }
}

fn base_chain(w: &mut Writer, base: &BaseHook) -> Result<(), Unsupported> {
    let kind = match base.kind {
        NfChainType::NAT => "nat",
        NfChainType::Filter => "filter",
        other => return Err(unsupported(other)),
    };
    let hook = hook_number(base.hook)?;
    w.string(NFTA_CHAIN_TYPE, kind);
    w.u32(NFTA_CHAIN_POLICY, NF_ACCEPT_POLICY);
    w.nest(NFTA_CHAIN_HOOK, |w| {
        w.u32(NFTA_HOOK_HOOKNUM, hook);
        w.attr(NFTA_HOOK_PRIORITY, &base.prio.to_be_bytes());
    });
    Ok(())
}

/// Encode `cmds` as one batch whose first message has sequence number `seq`.
///
/// # Errors
/// A command or statement this module does not encode.
pub(super) fn encode(cmds: &[Cmd], seq: u32) -> Result<Batch, Unsupported> {
    let mut w = Writer {
        buf: Vec::with_capacity(cmds.len() * 256),
        seq,
    };
    // The kernel wants every new set to carry an ID unique in its batch.
    let mut set_id = 0u32;
    let mut owners = Vec::with_capacity(cmds.len());
    w.message(
        NFNL_MSG_BATCH_BEGIN,
        0,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    for (index, cmd) in cmds.iter().enumerate() {
        let mut failed = None;
        let messages = w.seq;
        match cmd {
            Cmd::AddTable => w.nft_message(NFT_MSG_NEWTABLE, NLM_F_CREATE, |w| {
                w.string(NFTA_TABLE_NAME, TABLE);
                w.u32(NFTA_TABLE_FLAGS, 0);
            }),
            Cmd::DeleteTable => w.nft_message(NFT_MSG_DELTABLE, 0, |w| {
                w.string(NFTA_TABLE_NAME, TABLE);
            }),
            Cmd::AddChain(name, base) => w.nft_message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |w| {
                w.string(NFTA_CHAIN_TABLE, TABLE);
                w.string(NFTA_CHAIN_NAME, name);
                if let Some(base) = base {
                    failed = base_chain(w, base).err();
                }
            }),
            Cmd::FlushChain(name) => w.nft_message(NFT_MSG_DELRULE, 0, |w| {
                w.string(NFTA_RULE_TABLE, TABLE);
                w.string(NFTA_RULE_CHAIN, name);
            }),
            Cmd::DeleteChain(name) => w.nft_message(NFT_MSG_DELCHAIN, 0, |w| {
                w.string(NFTA_CHAIN_TABLE, TABLE);
                w.string(NFTA_CHAIN_NAME, name);
            }),
            Cmd::AddRule(chain, statements) => {
                w.nft_message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |w| {
                    w.string(NFTA_RULE_TABLE, TABLE);
                    w.string(NFTA_RULE_CHAIN, chain);
                    w.nest(NFTA_RULE_EXPRESSIONS, |w| {
                        failed = rule(w, statements).err()
                    });
                });
            }
            Cmd::AddMap(map) => match map_key_type(map) {
                Err(e) => failed = Some(e),
                Ok((key_type, key_len)) => w.nft_message(NFT_MSG_NEWSET, NLM_F_CREATE, |w| {
                    set_id += 1;
                    w.string(NFTA_SET_TABLE, TABLE);
                    w.string(NFTA_SET_NAME, map.name);
                    w.u32(NFTA_SET_FLAGS, if map.verdict { NFT_SET_MAP } else { 0 });
                    w.u32(NFTA_SET_KEY_TYPE, key_type);
                    w.u32(NFTA_SET_KEY_LEN, key_len);
                    if map.verdict {
                        w.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                        w.u32(NFTA_SET_DATA_LEN, 0);
                    }
                    w.u32(NFTA_SET_ID, set_id);
                }),
            },
            Cmd::AddSet(name, timeout) => w.nft_message(NFT_MSG_NEWSET, NLM_F_CREATE, |w| {
                set_id += 1;
                w.string(NFTA_SET_TABLE, TABLE);
                w.string(NFTA_SET_NAME, name);
                // `update @set` from the packet path needs a dynamic set.
                w.u32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
                w.u32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
                w.u32(NFTA_SET_KEY_LEN, 4);
                w.u32(NFTA_SET_ID, set_id);
                w.attr(
                    NFTA_SET_TIMEOUT,
                    &(u64::from(*timeout) * 1000).to_be_bytes(),
                );
                w.attr(NFTA_SET_USERDATA, &KEY_BIG_ENDIAN);
            }),
            Cmd::DeleteSet(name) => w.nft_message(NFT_MSG_DELSET, 0, |w| {
                w.string(NFTA_SET_TABLE, TABLE);
                w.string(NFTA_SET_NAME, name);
            }),
            Cmd::AddElements(map, elems) => {
                for chunk in elems.chunks(ELEMENTS_PER_MESSAGE) {
                    w.nft_message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, |w| {
                        w.string(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                        w.string(NFTA_SET_ELEM_LIST_SET, map.name);
                        w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                            for (key, chain) in chunk {
                                w.nest(NFTA_LIST_ELEM, |w| {
                                    w.value(NFTA_SET_ELEM_KEY, &key_bytes(key));
                                    if map.verdict {
                                        w.verdict(NFTA_SET_ELEM_DATA, NFT_GOTO, Some(chain));
                                    }
                                });
                            }
                        });
                    });
                }
            }
            Cmd::DeleteElements(map, keys) => {
                for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
                    w.nft_message(NFT_MSG_DELSETELEM, 0, |w| {
                        w.string(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                        w.string(NFTA_SET_ELEM_LIST_SET, map.name);
                        w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                            for key in chunk {
                                w.nest(NFTA_LIST_ELEM, |w| {
                                    w.value(NFTA_SET_ELEM_KEY, &key_bytes(key));
                                });
                            }
                        });
                    });
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        owners.extend(std::iter::repeat_n(
            index,
            w.seq.wrapping_sub(messages) as usize,
        ));
    }
    w.message(
        NFNL_MSG_BATCH_END,
        0,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    Ok(Batch {
        buf: w.buf,
        first_seq: seq,
        commands: owners,
    })
}

/// Send `batch` on a netfilter socket of the calling thread's network
/// namespace. The kernel handles a batch inside the `send`: it commits all
/// of it or none, and queues an error for each message it refused (nothing
/// on success, as no message asks for an acknowledgement — nft works the
/// same way), so whatever is queued right after the send is the whole
/// answer.
///
/// # Errors
/// The socket failed or could not take the batch, or the kernel refused it.
pub(super) fn send(batch: &Batch) -> Result<(), SendError> {
    let socket_err = SendError::Socket;
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(socket_err)?;
    socket.bind_auto().map_err(socket_err)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(socket_err)?;
    // One batch is one message to the kernel: the send buffer must hold
    // all of it (a full load is megabytes; root may raise the limit).
    let need = batch.buf.len() + 64 * 1024;
    if need > 200 * 1024 {
        rustix::net::sockopt::set_socket_send_buffer_size_force(socket.as_fd(), need)
            .map_err(|e| socket_err(e.into()))?;
    }
    let sent = socket.send(&batch.buf, 0).map_err(socket_err)?;
    if sent != batch.buf.len() {
        return Err(socket_err(io::Error::other(
            "the batch was sent only in part",
        )));
    }
    let mut first: Option<SendError> = None;
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = match socket.recv(&mut &mut rx[..], MSG_DONTWAIT) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // Errors were lost (ENOBUFS): the batch failed, where is unknown.
            Err(error) => {
                return Err(first.unwrap_or(SendError::Refused { index: None, error }));
            }
        };
        let mut at = 0;
        while at + 16 <= n {
            let word =
                |o: usize| u32::from_ne_bytes(rx[at + o..at + o + 4].try_into().expect("4 bytes"));
            let len = word(0) as usize;
            let kind = u16::from_ne_bytes([rx[at + 4], rx[at + 5]]);
            if len < 16 || at + len > n {
                break;
            }
            if kind == NLMSG_ERROR && len >= 16 + 4 + 16 && first.is_none() {
                let code = i32::from_ne_bytes(rx[at + 16..at + 20].try_into().expect("4 bytes"));
                // The refused message's header follows the error code.
                let seq = word(20 + 8);
                if code != 0 {
                    let index = seq
                        .checked_sub(batch.first_seq.wrapping_add(1))
                        .and_then(|i| batch.commands.get(i as usize).copied());
                    first = Some(SendError::Refused {
                        index,
                        error: io::Error::from_raw_os_error(-code),
                    });
                }
            }
            at += (len + 3) & !3;
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys_take_one_register_per_field() {
        let key = MapKey::Addr(Ipv4Addr::new(10, 43, 0, 1), Protocol::Tcp, 80);
        assert_eq!(key_bytes(&key), [10, 43, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        let key = MapKey::Port(Protocol::Udp, 30080);
        assert_eq!(key_bytes(&key), [17, 0, 0, 0, 0x75, 0x80, 0, 0]);
    }

    #[test]
    fn statements_it_does_not_know_are_left_to_nft() {
        let rule = Cmd::AddRule("c".into(), vec![Statement::Notrack]);
        let err = encode(&[Cmd::AddTable, rule], 1)
            .err()
            .expect("notrack is not encoded");
        assert_eq!(err.0, "Notrack");
    }

    #[test]
    fn long_element_lists_are_split_and_errors_map_back_to_their_command() {
        let elems: Vec<(MapKey, String)> = (0..600)
            .map(|p| (MapKey::Port(Protocol::Tcp, 30000 + p), "c".to_owned()))
            .collect();
        let cmds = [
            Cmd::AddTable,
            Cmd::AddElements(super::super::render::SERVICE_NODEPORTS, elems),
        ];
        let batch = encode(&cmds, 7).expect("encodes");
        assert_eq!(
            batch.commands,
            [0, 1, 1, 1],
            "600 elements in three messages"
        );
        assert_eq!(batch.first_seq, 7);
    }
}
