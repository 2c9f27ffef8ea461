//! The Kubernetes CEL libraries (upstream's `k8s.io/apiserver/pkg/cel/library`)
//! that CRD rules may call: lists (`isSorted`, `sum`, `min`, `max`,
//! `indexOf`, `lastIndexOf`), regex (`find`, `findAll`), URLs (`url`,
//! `isURL` and the `get*` accessors), quantities (`quantity`, `isQuantity`,
//! comparison and arithmetic), IP addresses and CIDRs (`ip`, `cidr` and their
//! predicates), and named formats (`format.dns1123Label()` …, `validate`).
//!
//! Quantities, addresses, CIDRs, URLs and formats are opaque values with
//! upstream's type names, so `==` compares them as upstream does: quantities
//! by value, CIDRs by address and prefix as written.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use cel::common::types::{CelInt, DYN_TYPE, LIST_TYPE};
use cel::common::value::CowVal;
use cel::extractors::{IntoFunction, This};
use cel::objects::{Key, Map as CelMap, Opaque};
use cel::{Context, Env, ExecutionError};

use super::{Cel, optional};

/// The overloads that share a name with the strings extension's, so they
/// must be declared in the environment: `list.indexOf(x)` and
/// `list.lastIndexOf(x)`.
///
/// # Errors
/// A clash with another declaration (a bug here).
pub(super) fn declare(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_member_overload(
        "indexOf",
        "list.indexOf(dyn)",
        LIST_TYPE,
        vec![DYN_TYPE],
        |args| position(args, false),
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list.lastIndexOf(dyn)",
        LIST_TYPE,
        vec![DYN_TYPE],
        |args| position(args, true),
    )
}

fn position<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    last: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let name = if last { "lastIndexOf" } else { "indexOf" };
    let [list, wanted]: [CowVal<'b, 'v>; 2] = args
        .try_into()
        .map_err(|_| ExecutionError::function_error(name, "expected one argument"))?;
    let items = list
        .as_iterable()
        .ok_or_else(|| ExecutionError::function_error(name, "expected a list"))?;
    let mut iter = items.iter();
    let (mut at, mut found) = (0i64, -1i64);
    while let Some(item) = iter.next() {
        if item.equals(wanted.as_ref()) {
            found = at;
            if !last {
                break;
            }
        }
        at += 1;
    }
    Ok(CowVal::owned(CelInt::from(found)))
}

fn error(function: &str, message: impl Into<String>) -> ExecutionError {
    ExecutionError::function_error(function, message.into())
}

fn text(v: &str) -> Cel {
    Cel::String(Arc::new(v.to_owned()))
}

fn opaque<T: Opaque>(v: T) -> Cel {
    Cel::Opaque(Arc::new(v))
}

fn downcast<'a, T: Opaque>(
    v: &'a Cel,
    function: &str,
    want: &str,
) -> Result<&'a T, ExecutionError> {
    match v {
        Cel::Opaque(o) => o.downcast_ref::<T>(),
        _ => None,
    }
    .ok_or_else(|| error(function, format!("expected {want}, got {v:?}")))
}

/// Registers the libraries' functions on a context, and returns their
/// names (for [`super::check`]). Names the environment already declares are
/// skipped (the environment's own win).
pub(super) fn register(ctx: &mut Context) -> Vec<String> {
    let mut functions = Functions {
        ctx,
        names: Vec::new(),
    };
    lists(&mut functions);
    regex(&mut functions);
    urls(&mut functions);
    quantities(&mut functions);
    addresses(&mut functions);
    formats(&mut functions);
    functions.names
}

/// A context being given functions, and the names given.
struct Functions<'c, 'a, 'b> {
    ctx: &'c mut Context<'a, 'b>,
    names: Vec<String>,
}

impl Functions<'_, '_, '_> {
    fn add<T: 'static, F>(&mut self, name: &str, function: F)
    where
        F: IntoFunction<T> + 'static + Send + Sync,
    {
        if self.ctx.add_function(name, function).is_ok() {
            self.names.push(name.to_owned());
        }
    }
}

// ---------------------------------------------------------------------------
// Lists and regex.

fn list_of(this: &Cel) -> Result<&[Cel], ExecutionError> {
    match this {
        Cel::List(l) => Ok(l),
        other => Err(error("list", format!("expected a list, got {other:?}"))),
    }
}

fn compare(a: &Cel, b: &Cel) -> Option<Ordering> {
    match (a, b) {
        (Cel::Int(x), Cel::Int(y)) => Some(x.cmp(y)),
        (Cel::UInt(x), Cel::UInt(y)) => Some(x.cmp(y)),
        (Cel::Float(x), Cel::Float(y)) => x.partial_cmp(y),
        (Cel::String(x), Cel::String(y)) => Some(x.cmp(y)),
        (Cel::Bool(x), Cel::Bool(y)) => Some(x.cmp(y)),
        (Cel::Opaque(_), Cel::Opaque(_)) => {
            let (x, y) = (
                downcast::<Quantity>(a, "compare", "").ok()?,
                downcast::<Quantity>(b, "compare", "").ok()?,
            );
            Some(x.cmp(y))
        }
        _ => None,
    }
}

fn lists(ctx: &mut Functions) {
    ctx.add(
        "isSorted",
        |This(this): This<Cel>| -> Result<bool, ExecutionError> {
            let items = list_of(&this)?;
            Ok(items
                .windows(2)
                .all(|w| compare(&w[0], &w[1]).is_some_and(|o| o != Ordering::Greater)))
        },
    );
    ctx.add(
        "sum",
        |This(this): This<Cel>| -> Result<Cel, ExecutionError> {
            let items = list_of(&this)?;
            let mut int = 0i64;
            let mut float = 0f64;
            let mut floats = false;
            for i in items {
                match i {
                    Cel::Int(n) => int = int.saturating_add(*n),
                    Cel::UInt(n) => int = int.saturating_add(i64::try_from(*n).unwrap_or(i64::MAX)),
                    Cel::Float(f) => {
                        floats = true;
                        float += f;
                    }
                    other => return Err(error("sum", format!("cannot add {other:?}"))),
                }
            }
            Ok(if floats {
                #[allow(clippy::cast_precision_loss)]
                Cel::Float(float + int as f64)
            } else {
                Cel::Int(int)
            })
        },
    );
    for (name, want) in [("min", Ordering::Less), ("max", Ordering::Greater)] {
        ctx.add(
            name,
            move |This(this): This<Cel>| -> Result<Cel, ExecutionError> {
                let items = list_of(&this)?;
                let mut best: Option<&Cel> = None;
                for i in items {
                    best = match best {
                        Some(b) if compare(i, b) != Some(want) => Some(b),
                        _ => Some(i),
                    };
                }
                best.cloned()
                    .ok_or_else(|| error(name, "the list is empty"))
            },
        );
    }
}

fn regex(ctx: &mut Functions) {
    ctx.add(
        "find",
        |This(this): This<Arc<String>>, pattern: Arc<String>| -> Result<Cel, ExecutionError> {
            let re = regex::Regex::new(&pattern).map_err(|e| error("find", e.to_string()))?;
            Ok(text(re.find(&this).map(|m| m.as_str()).unwrap_or_default()))
        },
    );
    ctx.add(
        "findAll",
        |This(this): This<Arc<String>>, pattern: Arc<String>| -> Result<Cel, ExecutionError> {
            let re = regex::Regex::new(&pattern).map_err(|e| error("findAll", e.to_string()))?;
            Ok(Cel::List(Arc::new(
                re.find_iter(&this).map(|m| text(m.as_str())).collect(),
            )))
        },
    );
}

// ---------------------------------------------------------------------------
// URLs.

/// A URL as Go's `url.ParseRequestURI` splits it: an absolute URI or an
/// absolute path.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    scheme: String,
    /// With brackets for IPv6, and the port.
    host: String,
    path: String,
    query: String,
}

impl Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.URL"
    }
}

impl Url {
    fn parse(s: &str) -> Option<Url> {
        if s.is_empty() || s.contains(|c: char| c.is_ascii_control() || c == ' ') {
            return None;
        }
        let (scheme, rest) = if s.starts_with('/') {
            ("", s)
        } else {
            let (scheme, rest) = s.split_once(':')?;
            let mut chars = scheme.chars();
            if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                || rest.is_empty()
            {
                return None;
            }
            (scheme, rest)
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, path) = match rest.strip_prefix("//") {
            Some(after) if !scheme.is_empty() => match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            },
            _ => ("", rest),
        };
        // userinfo is not part of the host.
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if host.starts_with('[') && !host.contains(']') {
            return None;
        }
        Some(Url {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
        })
    }

    fn hostname(&self) -> &str {
        match self.host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => self.host.rsplit_once(':').map_or(&self.host, |(h, _)| h),
        }
    }

    fn port(&self) -> &str {
        let after = match self.host.rfind(']') {
            Some(i) => &self.host[i + 1..],
            None => &self.host,
        };
        after.rsplit_once(':').map_or("", |(_, p)| p)
    }

    /// The path escaped as Go's `URL.EscapedPath` does.
    fn escaped_path(&self) -> String {
        let decoded = percent_decode(&self.path, false);
        let mut out = String::new();
        for b in decoded.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@!*'()".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn query(&self) -> Cel {
        let mut map: HashMap<Key, Vec<Cel>> = HashMap::new();
        for pair in self.query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(Key::String(Arc::new(percent_decode(k, true))))
                .or_default()
                .push(text(&percent_decode(v, true)));
        }
        let map = map
            .into_iter()
            .map(|(k, v)| (k, Cel::List(Arc::new(v))))
            .collect();
        Cel::Map(CelMap { map: Arc::new(map) })
    }
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len()
                && hex(bytes[i + 1]).is_some()
                && hex(bytes[i + 2]).is_some() =>
            {
                let (hi, lo) = (
                    hex(bytes[i + 1]).unwrap_or(0),
                    hex(bytes[i + 2]).unwrap_or(0),
                );
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
                continue;
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn urls(ctx: &mut Functions) {
    ctx.add("isURL", |s: Arc<String>| -> bool {
        Url::parse(&s).is_some()
    });
    ctx.add("url", |s: Arc<String>| -> Result<Cel, ExecutionError> {
        Url::parse(&s)
            .map(opaque)
            .ok_or_else(|| error("url", format!("URL parse error during conversion from string: parse {s:?}: invalid URI for request")))
    });
    type Getter = fn(&Url) -> Cel;
    let getters: [(&str, Getter); 6] = [
        ("getScheme", |u| text(&u.scheme)),
        ("getHost", |u| text(&u.host)),
        ("getHostname", |u| text(u.hostname())),
        ("getPort", |u| text(u.port())),
        ("getEscapedPath", |u| text(&u.escaped_path())),
        ("getQuery", Url::query),
    ];
    for (name, get) in getters {
        ctx.add(
            name,
            move |This(this): This<Cel>| -> Result<Cel, ExecutionError> {
                Ok(get(downcast::<Url>(&this, name, "a URL")?))
            },
        );
    }
}

// ---------------------------------------------------------------------------
// Quantities.

/// A resource quantity, exactly: `mantissa × 10^exponent`, at nano
/// precision at most (finer values round up, as upstream's do).
#[derive(Debug, Clone, Copy)]
struct Quantity {
    mantissa: i128,
    exponent: i32,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Quantity {}

impl Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Quantity {
    /// Upstream's `resource.ParseQuantity` grammar: a signed decimal number
    /// and an optional suffix (`Ki`…`Ei`, `n`…`E`, or `e`/`E` and an
    /// exponent).
    fn parse(s: &str) -> Option<Quantity> {
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        let mut exponent = -i32::try_from(fraction.len()).ok()?;
        let trimmed = digits.trim_end_matches('0');
        exponent += i32::try_from(digits.len() - trimmed.len()).ok()?;
        let mut mantissa: i128 = if trimmed.is_empty() {
            0
        } else {
            trimmed.parse().ok()?
        };
        let (binary, decimal): (u32, i32) = match suffix {
            "" => (0, 0),
            "Ki" => (1, 0),
            "Mi" => (2, 0),
            "Gi" => (3, 0),
            "Ti" => (4, 0),
            "Pi" => (5, 0),
            "Ei" => (6, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            other => {
                let exp = other.strip_prefix(['e', 'E'])?;
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (0, exp.parse().ok()?)
            }
        };
        if binary > 0 {
            mantissa = mantissa.checked_mul(1i128 << (10 * binary))?;
        }
        exponent = exponent.checked_add(decimal)?;
        if negative {
            mantissa = -mantissa;
        }
        let mut q = Quantity { mantissa, exponent };
        if q.exponent < -9 {
            // Round up to nano precision, away from zero for positives.
            let shift = pow10(u32::try_from(-9 - q.exponent).ok()?)?;
            let (div, rem) = (q.mantissa / shift, q.mantissa % shift);
            q = Quantity {
                mantissa: if rem > 0 { div + 1 } else { div },
                exponent: -9,
            };
        }
        Some(q)
    }

    /// Both mantissas at the smaller exponent, if that fits.
    fn aligned(&self, other: &Quantity) -> Option<(i128, i128, i32)> {
        let e = self.exponent.min(other.exponent);
        let a = self
            .mantissa
            .checked_mul(pow10(u32::try_from(self.exponent - e).ok()?)?)?;
        let b = other
            .mantissa
            .checked_mul(pow10(u32::try_from(other.exponent - e).ok()?)?)?;
        Some((a, b, e))
    }

    fn cmp(&self, other: &Quantity) -> Ordering {
        match self.aligned(other) {
            Some((a, b, _)) => a.cmp(&b),
            None => self
                .as_f64()
                .partial_cmp(&other.as_f64())
                .unwrap_or(Ordering::Equal),
        }
    }

    fn add(&self, other: &Quantity) -> Option<Quantity> {
        let (a, b, exponent) = self.aligned(other)?;
        Some(Quantity {
            mantissa: a.checked_add(b)?,
            exponent,
        })
    }

    fn negated(&self) -> Quantity {
        Quantity {
            mantissa: -self.mantissa,
            exponent: self.exponent,
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn as_f64(&self) -> f64 {
        self.mantissa as f64 * 10f64.powi(self.exponent)
    }

    fn as_i64(&self) -> Option<i64> {
        let value = if self.exponent >= 0 {
            self.mantissa
                .checked_mul(pow10(u32::try_from(self.exponent).ok()?)?)?
        } else {
            let d = pow10(u32::try_from(-self.exponent).ok()?)?;
            if self.mantissa % d != 0 {
                return None;
            }
            self.mantissa / d
        };
        i64::try_from(value).ok()
    }
}

/// A quantity argument: a quantity, or an integer.
fn quantity_arg(v: &Cel, function: &str) -> Result<Quantity, ExecutionError> {
    match v {
        Cel::Int(i) => Ok(Quantity {
            mantissa: i128::from(*i),
            exponent: 0,
        }),
        other => downcast::<Quantity>(other, function, "a quantity").copied(),
    }
}

fn quantities(ctx: &mut Functions) {
    ctx.add("isQuantity", |s: Arc<String>| -> bool {
        Quantity::parse(&s).is_some()
    });
    ctx.add("quantity", |s: Arc<String>| -> Result<Cel, ExecutionError> {
        Quantity::parse(&s).map(opaque).ok_or_else(|| {
            error(
                "quantity",
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )
        })
    });
    ctx.add(
        "sign",
        |This(this): This<Cel>| -> Result<i64, ExecutionError> {
            let q = downcast::<Quantity>(&this, "sign", "a quantity")?;
            Ok(match q.mantissa.cmp(&0) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            })
        },
    );
    ctx.add(
        "isInteger",
        |This(this): This<Cel>| -> Result<bool, ExecutionError> {
            Ok(downcast::<Quantity>(&this, "isInteger", "a quantity")?
                .as_i64()
                .is_some())
        },
    );
    ctx.add(
        "asInteger",
        |This(this): This<Cel>| -> Result<i64, ExecutionError> {
            downcast::<Quantity>(&this, "asInteger", "a quantity")?
                .as_i64()
                .ok_or_else(|| error("asInteger", "cannot convert value to integer"))
        },
    );
    ctx.add(
        "asApproximateFloat",
        |This(this): This<Cel>| -> Result<f64, ExecutionError> {
            Ok(downcast::<Quantity>(&this, "asApproximateFloat", "a quantity")?.as_f64())
        },
    );
    for (name, negate) in [("add", false), ("sub", true)] {
        ctx.add(
            name,
            move |This(this): This<Cel>, other: Cel| -> Result<Cel, ExecutionError> {
                let q = downcast::<Quantity>(&this, name, "a quantity")?;
                let mut o = quantity_arg(&other, name)?;
                if negate {
                    o = o.negated();
                }
                q.add(&o)
                    .map(opaque)
                    .ok_or_else(|| error(name, "the result overflows"))
            },
        );
    }
    type Verdict = fn(Ordering) -> Cel;
    let comparisons: [(&str, Verdict); 3] = [
        ("isGreaterThan", |o| Cel::Bool(o == Ordering::Greater)),
        ("isLessThan", |o| Cel::Bool(o == Ordering::Less)),
        ("compareTo", |o| Cel::Int(o as i64)),
    ];
    for (name, verdict) in comparisons {
        ctx.add(
            name,
            move |This(this): This<Cel>, other: Cel| -> Result<Cel, ExecutionError> {
                let q = downcast::<Quantity>(&this, name, "a quantity")?;
                let o = downcast::<Quantity>(&other, name, "a quantity")?;
                Ok(verdict(q.cmp(o)))
            },
        );
    }
}

// ---------------------------------------------------------------------------
// IP addresses and CIDRs.

#[derive(Debug, PartialEq, Eq)]
struct Ip(IpAddr);

impl Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        "net.IP"
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Opaque for Cidr {
    fn runtime_type_name(&self) -> &str {
        "net.CIDR"
    }
}

/// An address as upstream's `ip()` takes one: no zone, no IPv4-mapped IPv6,
/// no leading zeros in IPv4 octets.
fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        ip => Some(ip),
    }
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (ip, bits) = s.split_once('/')?;
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) || bits.len() > 3 {
        return None;
    }
    let addr = parse_ip(ip)?;
    let prefix: u8 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Cidr { addr, prefix })
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl Cidr {
    fn masked_bits(&self, addr: IpAddr) -> Option<u128> {
        let (value, width) = bits(addr);
        if width != bits(self.addr).1 {
            return None;
        }
        let host = u32::from(width - self.prefix);
        let mask = if host >= 128 {
            0
        } else {
            (u128::MAX << host) & (u128::MAX >> (128 - u32::from(width)))
        };
        Some(value & mask)
    }

    fn contains(&self, addr: IpAddr) -> bool {
        self.masked_bits(addr) == self.masked_bits(self.addr)
    }

    fn masked(&self) -> Cidr {
        let network = self.masked_bits(self.addr).unwrap_or_default();
        let addr = match self.addr {
            #[allow(clippy::cast_possible_truncation)]
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(network as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(network)),
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }
}

fn ip_arg(v: &Cel, function: &str) -> Result<IpAddr, ExecutionError> {
    match v {
        Cel::String(s) => parse_ip(s).ok_or_else(|| ip_error(s)),
        other => downcast::<Ip>(other, function, "an IP address").map(|ip| ip.0),
    }
}

fn cidr_arg(v: &Cel, function: &str) -> Result<(IpAddr, u8), ExecutionError> {
    match v {
        Cel::String(s) => parse_cidr(s)
            .map(|c| (c.addr, c.prefix))
            .ok_or_else(|| cidr_error(s)),
        other => downcast::<Cidr>(other, function, "a CIDR").map(|c| (c.addr, c.prefix)),
    }
}

fn ip_error(s: &str) -> ExecutionError {
    error(
        "ip",
        format!(
            "IP Address {s:?} parse error during conversion from string: ParseAddr({s:?}): invalid IP address"
        ),
    )
}

fn cidr_error(s: &str) -> ExecutionError {
    error(
        "cidr",
        format!(
            "network address {s:?} parse error during conversion from string: netip.ParsePrefix({s:?}): invalid prefix"
        ),
    )
}

fn addresses(ctx: &mut Functions) {
    ctx.add("isIP", |s: Arc<String>| -> bool { parse_ip(&s).is_some() });
    ctx.add("isCIDR", |s: Arc<String>| -> bool {
        parse_cidr(&s).is_some()
    });
    ctx.add(
        "ip.isCanonical",
        |s: Arc<String>| -> Result<bool, ExecutionError> {
            let ip = parse_ip(&s).ok_or_else(|| ip_error(&s))?;
            Ok(ip.to_string() == *s)
        },
    );
    // `ip('…')` parses; `cidr('…').ip()` is the CIDR's address.
    ctx.add(
        "ip",
        |This(this): This<Cel>| -> Result<Cel, ExecutionError> {
            match &this {
                Cel::String(s) => parse_ip(s)
                    .map(|ip| opaque(Ip(ip)))
                    .ok_or_else(|| ip_error(s)),
                other => Ok(opaque(Ip(downcast::<Cidr>(
                    other,
                    "ip",
                    "a string or a CIDR",
                )?
                .addr))),
            }
        },
    );
    ctx.add("cidr", |s: Arc<String>| -> Result<Cel, ExecutionError> {
        parse_cidr(&s).map(opaque).ok_or_else(|| cidr_error(&s))
    });
    type Test = fn(IpAddr) -> Cel;
    let tests: [(&str, Test); 6] = [
        ("family", |ip| Cel::Int(if ip.is_ipv4() { 4 } else { 6 })),
        ("isUnspecified", |ip| Cel::Bool(ip.is_unspecified())),
        ("isLoopback", |ip| Cel::Bool(ip.is_loopback())),
        ("isLinkLocalMulticast", |ip| {
            Cel::Bool(match ip {
                IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
                IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
            })
        }),
        ("isLinkLocalUnicast", |ip| Cel::Bool(link_local_unicast(ip))),
        ("isGlobalUnicast", |ip| {
            Cel::Bool(match ip {
                IpAddr::V4(v4) => {
                    !v4.is_unspecified()
                        && !v4.is_loopback()
                        && !v4.is_multicast()
                        && !v4.is_broadcast()
                        && !link_local_unicast(ip)
                }
                IpAddr::V6(v6) => {
                    !v6.is_unspecified()
                        && !v6.is_loopback()
                        && !v6.is_multicast()
                        && !link_local_unicast(ip)
                }
            })
        }),
    ];
    for (name, test) in tests {
        ctx.add(
            name,
            move |This(this): This<Cel>| -> Result<Cel, ExecutionError> {
                Ok(test(downcast::<Ip>(&this, name, "an IP address")?.0))
            },
        );
    }
    ctx.add(
        "containsIP",
        |This(this): This<Cel>, other: Cel| -> Result<bool, ExecutionError> {
            let cidr = downcast::<Cidr>(&this, "containsIP", "a CIDR")?;
            Ok(cidr.contains(ip_arg(&other, "containsIP")?))
        },
    );
    ctx.add(
        "containsCIDR",
        |This(this): This<Cel>, other: Cel| -> Result<bool, ExecutionError> {
            let cidr = downcast::<Cidr>(&this, "containsCIDR", "a CIDR")?;
            let (addr, prefix) = cidr_arg(&other, "containsCIDR")?;
            Ok(prefix >= cidr.prefix && cidr.contains(addr))
        },
    );
    ctx.add(
        "masked",
        |This(this): This<Cel>| -> Result<Cel, ExecutionError> {
            Ok(opaque(
                downcast::<Cidr>(&this, "masked", "a CIDR")?.masked(),
            ))
        },
    );
    ctx.add(
        "prefixLength",
        |This(this): This<Cel>| -> Result<i64, ExecutionError> {
            Ok(i64::from(
                downcast::<Cidr>(&this, "prefixLength", "a CIDR")?.prefix,
            ))
        },
    );
}

fn link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

// ---------------------------------------------------------------------------
// Named formats.

/// One of upstream's named string formats.
#[derive(Debug, PartialEq, Eq)]
struct Format(&'static str);

impl Opaque for Format {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.NamedFormat"
    }
}

const FORMATS: [&str; 13] = [
    "dns1123Label",
    "dns1123Subdomain",
    "dns1035Label",
    "qualifiedName",
    "dns1123LabelPrefix",
    "dns1123SubdomainPrefix",
    "dns1035LabelPrefix",
    "labelValue",
    "uri",
    "uuid",
    "byte",
    "date",
    "datetime",
];

/// Upstream's `NameIsDNS*` checks: a prefix (for `generateName`) may end
/// in `-`.
fn dns_name(s: &str, prefix: bool, max: usize, ok: fn(&str) -> bool, msg: &str) -> Vec<String> {
    let masked;
    let s = if prefix && s.ends_with('-') {
        masked = format!("{}a", &s[..s.len() - 1]);
        masked.as_str()
    } else {
        s
    };
    let mut errs = Vec::new();
    if s.len() > max {
        errs.push(crate::api::names::too_long(max));
    }
    if !ok(s) {
        errs.push(msg.to_owned());
    }
    errs
}

fn validate_format(format: &str, s: &str) -> Vec<String> {
    use crate::api::names::{
        dns1035_pattern, label_pattern, label_value_problems, qualified_name_problems,
        subdomain_pattern,
    };
    use crate::api::validation::{DNS1035_LABEL_MSG, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG};
    let prefix = format.ends_with("Prefix");
    match format.trim_end_matches("Prefix") {
        "dns1123Label" => dns_name(s, prefix, 63, label_pattern, DNS1123_LABEL_MSG),
        "dns1123Subdomain" => dns_name(s, prefix, 253, subdomain_pattern, DNS1123_SUBDOMAIN_MSG),
        "dns1035Label" => dns_name(s, prefix, 63, dns1035_pattern, DNS1035_LABEL_MSG),
        "qualifiedName" => qualified_name_problems(s),
        "labelValue" => label_value_problems(s),
        "uri" if Url::parse(s).is_none() => {
            vec![format!("parse {s:?}: invalid URI for request")]
        }
        "uuid" if !crate::api::schema::format_ok("uuid", s) => {
            vec!["does not match the UUID format".to_owned()]
        }
        "byte" if !crate::api::schema::format_ok("byte", s) => vec!["invalid base64".to_owned()],
        "date" if !crate::api::schema::format_ok("date", s) => vec!["invalid date".to_owned()],
        "datetime" if !crate::api::schema::format_ok("date-time", s) => {
            vec!["invalid datetime".to_owned()]
        }
        _ => Vec::new(),
    }
}

fn formats(ctx: &mut Functions) {
    ctx.add("format.named", |name: Arc<String>| -> Cel {
        optional(
            FORMATS
                .iter()
                .find(|f| **f == name.as_str())
                .map(|f| opaque(Format(f))),
        )
    });
    for name in FORMATS {
        ctx.add(&format!("format.{name}"), move || -> Cel {
            opaque(Format(name))
        });
    }
    ctx.add(
        "validate",
        |This(this): This<Cel>, s: Arc<String>| -> Result<Cel, ExecutionError> {
            let format = downcast::<Format>(&this, "validate", "a format")?;
            let errs = validate_format(format.0, &s);
            Ok(optional((!errs.is_empty()).then(|| {
                Cel::List(Arc::new(
                    errs.iter().map(String::as_str).map(text).collect(),
                ))
            })))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::super::{Cel, OldSelf, compile, evaluate};
    use serde_json::{Value, json};

    fn run(rule: &str, this: &Value) -> Result<Cel, String> {
        evaluate(&*compile(rule)?, this, &OldSelf::None, None)
    }

    /// Every rule holds (upstream's own examples, mostly).
    fn holds(rules: &[&str]) {
        let this = json!({"name": "web-1", "ports": [80, 443, 80], "mem": "1Gi"});
        for rule in rules {
            assert_eq!(run(rule, &this), Ok(Cel::Bool(true)), "{rule}");
        }
    }

    #[test]
    fn lists_and_regex() {
        holds(&[
            "self.ports.indexOf(80) == 0 && self.ports.lastIndexOf(80) == 2",
            "self.ports.indexOf(8080) == -1",
            "'abcabc'.indexOf('c') == 2 && 'abcabc'.lastIndexOf('c') == 5",
            "[1, 2, 3].isSorted() && ![3, 1].isSorted() && [1, 2, 3].sum() == 6",
            "[4, 1, 9].min() == 1 && [4, 1, 9].max() == 9 && ['b', 'a'].min() == 'a'",
            "self.name.find('[0-9]+') == '1' && 'a1b22'.findAll('[0-9]+') == ['1', '22']",
        ]);
    }

    #[test]
    fn quantities_compare_and_add_exactly() {
        holds(&[
            "isQuantity('1.3G') && isQuantity('1.3Gi') && isQuantity('10000k') && isQuantity('2e3')",
            "!isQuantity('1,3G') && !isQuantity('200K') && !isQuantity('Three') && !isQuantity('Mi')",
            "quantity('50000000G').isInteger() && quantity('50k').asInteger() == 50000",
            "!quantity('9999999999999999999999999999999999999G').isInteger()",
            "!quantity('1m').isInteger() && quantity('1500m').asApproximateFloat() == 1.5",
            "quantity('50k').add(quantity('20k')) == quantity('70k')",
            "quantity('50k').add(20) == quantity('50020')",
            "quantity('50k').sub(20000) == quantity('30k')",
            "quantity('50k').add(20).sub(quantity('100k')).sub(-50000) == quantity('20')",
            "quantity('1Gi').isGreaterThan(quantity('1G')) && quantity('1k').isLessThan(quantity('1Ki'))",
            "quantity('1000m').compareTo(quantity('1')) == 0 && quantity('2').compareTo(quantity('1')) == 1",
            "quantity('-1').sign() == -1 && quantity('0').sign() == 0 && quantity(self.mem).sign() == 1",
            "quantity('1Gi') == quantity('1073741824') && quantity('0.5Ki') == quantity('512')",
        ]);
        assert!(run("quantity('200K')", &json!({})).is_err());
        assert!(
            run("quantity('1m').asInteger()", &json!({}))
                .unwrap_err()
                .contains("cannot convert value to integer")
        );
    }

    #[test]
    fn addresses_and_cidrs() {
        holds(&[
            "isIP('10.0.0.1') && isIP('::1') && !isIP('01.2.3.4') && !isIP('::ffff:1.2.3.4') && !isIP('fe80::1%eth0')",
            "ip('127.0.0.1').family() == 4 && ip('::1').family() == 6",
            "ip('0.0.0.0').isUnspecified() && ip('::').isUnspecified() && !ip('::1').isUnspecified()",
            "ip('127.0.0.1').isLoopback() && !ip('192.168.0.1').isLoopback() && ip('::1').isLoopback()",
            "ip('224.0.0.1').isLinkLocalMulticast() && !ip('224.0.1.1').isLinkLocalMulticast() && ip('ff02::1').isLinkLocalMulticast() && !ip('fd00::1').isLinkLocalMulticast()",
            "ip('169.254.169.254').isLinkLocalUnicast() && ip('fe80::1').isLinkLocalUnicast() && !ip('fd80::1').isLinkLocalUnicast()",
            "ip('192.168.0.1').isGlobalUnicast() && !ip('255.255.255.255').isGlobalUnicast() && ip('2001:db8::abcd').isGlobalUnicast() && !ip('ff00::1').isGlobalUnicast()",
            "ip.isCanonical('127.0.0.1') && ip.isCanonical('2001:db8::abcd') && !ip.isCanonical('2001:DB8::ABCD') && !ip.isCanonical('2001:db8:0:0:0:0:0:abcd')",
            "ip('10.0.0.1') == ip('10.0.0.1') && ip('10.0.0.1') != ip('10.0.0.2')",
            "isCIDR('10.0.0.0/8') && !isCIDR('10.0.0.0/33') && !isCIDR('10.0.0.0') && isCIDR('::1/128')",
            "cidr('192.168.0.0/24').containsIP(ip('192.168.0.1')) && !cidr('192.168.0.0/24').containsIP('192.168.1.1')",
            "cidr('192.168.0.0/16').containsCIDR(cidr('192.168.10.0/24')) && !cidr('192.168.1.0/24').containsCIDR('192.168.2.0/24')",
            "!cidr('192.168.10.0/24').containsCIDR('192.168.0.0/16')",
            "cidr('192.168.0.1/24').ip() == ip('192.168.0.1') && cidr('::1/128').ip().family() == 6",
            "cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24') && cidr('192.168.0.1/24') != cidr('192.168.0.1/24').masked()",
            "cidr('192.168.0.0/16').prefixLength() == 16 && cidr('::1/128').prefixLength() == 128",
            "cidr('0.0.0.0/0').containsIP('8.8.8.8') && !cidr('10.0.0.0/8').containsIP('::1')",
        ]);
        assert!(
            run("ip('1.2.3')", &json!({}))
                .unwrap_err()
                .contains("1.2.3")
        );
    }

    #[test]
    fn urls() {
        holds(&[
            "isURL('https://example.com/x') && isURL('/absolute-path') && !isURL('../relative') && !isURL('nope')",
            "url('https://example.com:80/').getScheme() == 'https' && url('/path').getScheme() == ''",
            "url('https://example.com:80/').getHost() == 'example.com:80' && url('https://[::1]:80/').getHost() == '[::1]:80'",
            "url('https://[::1]:80/').getHostname() == '::1' && url('https://example.com/').getHostname() == 'example.com'",
            "url('https://example.com:80/').getPort() == '80' && url('https://example.com/').getPort() == ''",
            "url('https://example.com/with%20space/').getEscapedPath() == '/with%20space/' && url('https://example.com').getEscapedPath() == ''",
            "url('https://example.com/path?k1=a&k2=b&k2=c').getQuery() == {'k1': ['a'], 'k2': ['b', 'c']}",
            "url('https://example.com/').getQuery() == {}",
        ]);
    }

    #[test]
    fn named_formats_validate() {
        holds(&[
            "!format.dns1123Label().validate('my-label-name').hasValue()",
            "format.dns1123Label().validate('My_Label').hasValue()",
            "format.dns1123Label().validate('My_Label').value()[0].startsWith('a lowercase RFC 1123 label must consist of')",
            "!format.dns1123Subdomain().validate('apiextensions.k8s.io').hasValue()",
            "!format.dns1035Label().validate('my-label-name').hasValue() && format.dns1035Label().validate('1abc').hasValue()",
            "!format.qualifiedName().validate('apiextensions.k8s.io/v1beta1').hasValue() && format.qualifiedName().validate('a/b/c').hasValue()",
            "!format.dns1123LabelPrefix().validate('my-label-prefix-').hasValue() && format.dns1123Label().validate('my-label-prefix-').hasValue()",
            "!format.uri().validate('http://example.com').hasValue() && format.uri().validate('nope').hasValue()",
            "!format.uuid().validate('123e4567-e89b-12d3-a456-426614174000').hasValue() && format.uuid().validate('x').value() == ['does not match the UUID format']",
            "!format.byte().validate('aGVsbG8=').hasValue() && !format.date().validate('2021-01-01').hasValue()",
            "!format.datetime().validate('2021-01-01T00:00:00Z').hasValue() && format.datetime().validate('yesterday').value() == ['invalid datetime']",
            "format.named('dns1123Label').hasValue() && !format.named('nope').hasValue()",
            "!format.named('labelValue').value().validate('').hasValue() && format.labelValue().validate('-x').hasValue()",
            "format.dns1123Label().validate('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa').value().size() == 1",
        ]);
    }
}
