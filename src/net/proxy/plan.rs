//! Planning: from the desired ruleset (and what the kernel holds) to the
//! nft commands of one transaction, whole or as an update, and the chains
//! and sets left stale. Pure.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use nftables::expr::{Expression, NamedExpression};
use nftables::schema::{Chain, Element, FlushObject, NfCmd, NfListObject, Set, SetFlag, Table};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfFamily};

use super::TABLE;
use super::render::{BaseHook, ChainDef, MAPS, MapDef, MapKey, Ruleset, goto_verdict, s};

/// One nft command of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Cmd {
    /// `add table ip orch`.
    AddTable,
    /// `delete table ip orch`.
    DeleteTable,
    /// Declare a verdict map (or plain set).
    AddMap(MapDef),
    /// Declare an affinity set (name, timeout in seconds).
    AddSet(String, u32),
    /// Delete an affinity set.
    DeleteSet(String),
    /// Declare a chain (base chains with their hook).
    AddChain(String, Option<BaseHook>),
    /// Remove every rule of a chain.
    FlushChain(String),
    /// Delete an (empty, unreferenced) chain.
    DeleteChain(String),
    /// Append a rule.
    AddRule(String, Vec<Statement<'static>>),
    /// Add map elements (key → goto chain; a plain set's keys only).
    AddElements(MapDef, Vec<(MapKey, String)>),
    /// Delete map elements by key.
    DeleteElements(MapDef, Vec<MapKey>),
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddTable => write!(f, "add table"),
            Self::DeleteTable => write!(f, "delete table"),
            Self::AddMap(m) => write!(f, "add map {}", m.name),
            Self::AddSet(n, t) => write!(f, "add set {n} timeout {t}"),
            Self::DeleteSet(n) => write!(f, "delete set {n}"),
            Self::AddChain(n, _) => write!(f, "add chain {n}"),
            Self::FlushChain(n) => write!(f, "flush chain {n}"),
            Self::DeleteChain(n) => write!(f, "delete chain {n}"),
            Self::AddRule(n, _) => write!(f, "add rule {n}"),
            Self::AddElements(m, e) => {
                write!(f, "add element {}", m.name)?;
                for (k, v) in e {
                    if m.verdict {
                        write!(f, " {{ {k} : goto {v} }}")?;
                    } else {
                        write!(f, " {{ {k} }}")?;
                    }
                }
                Ok(())
            }
            Self::DeleteElements(m, e) => {
                write!(f, "delete element {}", m.name)?;
                for k in e {
                    write!(f, " {{ {k} }}")?;
                }
                Ok(())
            }
        }
    }
}

fn key_expr<'a>(k: &MapKey) -> Expression<'a> {
    let parts = match k {
        MapKey::Addr(a, p, n) => vec![
            s(a.to_string()),
            s(p.as_str()),
            Expression::Number(u32::from(*n)),
        ],
        MapKey::Port(p, n) => vec![s(p.as_str()), Expression::Number(u32::from(*n))],
        MapKey::Pair(a) => vec![s(a.to_string()), s(a.to_string())],
    };
    Expression::Named(NamedExpression::Concat(parts))
}

impl Cmd {
    /// The command as nft JSON. Maps are written by hand: the nftables crate's
    /// `SetType` has no `verdict`, so a verdict map cannot be declared with it.
    pub(super) fn to_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let table = || Cow::Borrowed(TABLE);
        let chain = |name: &str, base: Option<BaseHook>| Chain {
            family: NfFamily::IP,
            table: table(),
            name: Cow::Owned(name.to_owned()),
            _type: base.map(|b| b.kind),
            hook: base.map(|b| b.hook),
            prio: base.map(|b| b.prio),
            policy: base.map(|_| NfChainPolicy::Accept),
            ..Chain::default()
        };
        let set = |name: &str, timeout: Option<u32>| Set {
            family: NfFamily::IP,
            table: table(),
            name: Cow::Owned(name.to_owned()),
            flags: timeout.map(|_| HashSet::from([SetFlag::Timeout])),
            timeout,
            ..Set::default()
        };
        let cmd = match self {
            Self::AddTable | Self::DeleteTable => {
                let t = NfListObject::Table(Table {
                    family: NfFamily::IP,
                    name: table(),
                    handle: None,
                });
                if *self == Self::AddTable {
                    NfCmd::Add(t)
                } else {
                    NfCmd::Delete(t)
                }
            }
            Self::AddMap(m) => {
                let v = if m.verdict {
                    serde_json::json!({"add": {"map": {
                        "family": "ip", "table": TABLE, "name": m.name, "type": m.key, "map": "verdict"
                    }}})
                } else {
                    serde_json::json!({"add": {"set": {
                        "family": "ip", "table": TABLE, "name": m.name, "type": m.key
                    }}})
                };
                return serde_json::to_writer(out, &v);
            }
            Self::AddSet(n, t) => NfCmd::Add(NfListObject::Set(Box::new(set(n, Some(*t))))),
            Self::DeleteSet(n) => NfCmd::Delete(NfListObject::Set(Box::new(set(n, None)))),
            Self::AddChain(n, b) => NfCmd::Add(NfListObject::Chain(chain(n, *b))),
            Self::FlushChain(n) => NfCmd::Flush(FlushObject::Chain(chain(n, None))),
            Self::DeleteChain(n) => NfCmd::Delete(NfListObject::Chain(chain(n, None))),
            Self::AddRule(n, expr) => NfCmd::Add(NfListObject::Rule(nftables::schema::Rule {
                family: NfFamily::IP,
                table: table(),
                chain: Cow::Owned(n.clone()),
                expr: Cow::Borrowed(expr.as_slice()),
                handle: None,
                index: None,
                comment: None,
            })),
            Self::AddElements(m, elems) => NfCmd::Add(NfListObject::Element(Element {
                family: NfFamily::IP,
                table: table(),
                name: m.name.into(),
                elem: elems
                    .iter()
                    .map(|(k, v)| {
                        if m.verdict {
                            Expression::List(vec![key_expr(k), goto_verdict(v.clone())])
                        } else {
                            key_expr(k)
                        }
                    })
                    .collect(),
            })),
            Self::DeleteElements(m, keys) => NfCmd::Delete(NfListObject::Element(Element {
                family: NfFamily::IP,
                table: table(),
                name: m.name.into(),
                elem: keys.iter().map(key_expr).collect(),
            })),
        };
        serde_json::to_writer(out, &cmd)
    }
}

/// Commands that replace table `ip orch` by `rs` in one transaction.
#[must_use]
pub fn plan_full(rs: &Ruleset) -> Vec<Cmd> {
    // `add` first so that `delete` cannot fail when the table is absent.
    let mut cmds = vec![Cmd::AddTable, Cmd::DeleteTable, Cmd::AddTable];
    cmds.extend(rs.maps.keys().map(|m| Cmd::AddMap(*m)));
    cmds.extend(rs.sets.iter().map(|(n, t)| Cmd::AddSet(n.clone(), *t)));
    // Every chain exists before any rule or element can point at it.
    cmds.extend(
        rs.chains
            .iter()
            .map(|(n, c)| Cmd::AddChain(n.clone(), c.base)),
    );
    for (name, chain) in &rs.chains {
        cmds.extend(
            chain
                .rules
                .iter()
                .map(|r| Cmd::AddRule(name.clone(), r.clone())),
        );
    }
    for (map, elems) in &rs.maps {
        if !elems.is_empty() {
            cmds.push(Cmd::AddElements(
                *map,
                elems.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ));
        }
    }
    cmds
}

/// Chains and sets that were flushed/unused and wait to be deleted (since when).
#[derive(Clone, Debug, Default)]
pub struct Stale {
    pub(super) chains: BTreeMap<String, Instant>,
    pub(super) sets: BTreeMap<String, Instant>,
}

/// Commands that bring the kernel from `applied` (plus the `stale` objects it
/// still holds) to `desired`; `stale` is updated to what is left afterwards.
/// Unchanged chains are not touched; map elements are diffs. (The proxy
/// itself plans from the parts that changed, the same way.)
#[must_use]
pub fn plan_update(
    applied: &Ruleset,
    desired: &Ruleset,
    stale: &mut Stale,
    now: Instant,
    delay: Duration,
) -> Vec<Cmd> {
    let empty = BTreeMap::new();
    let mut moves = Vec::new();
    for map in MAPS {
        let old = applied.maps.get(&map).unwrap_or(&empty);
        let new = desired.maps.get(&map).unwrap_or(&empty);
        let keys: BTreeSet<&MapKey> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let (before, after) = (old.get(key), new.get(key));
            if before != after {
                moves.push((map, key.clone(), before.cloned(), after.cloned()));
            }
        }
    }
    let change = (
        Some((&applied.chains, &applied.sets)),
        Some((&desired.chains, &desired.sets)),
    );
    plan_changes(&[change], &moves, stale, now, delay)
}

/// An owner's chains and affinity sets.
pub(super) type Side<'a> = (&'a BTreeMap<String, ChainDef>, &'a BTreeMap<String, u32>);

/// Commands for parts that changed (before, after; `None`: absent) and the
/// map elements that moved (map, key, before, after). Chains that are no
/// longer wanted are flushed and wait in `stale` for `delay` before they are
/// deleted; a wanted chain that is still stale is reused.
pub(super) fn plan_changes<'a>(
    changes: &[(Option<Side<'a>>, Option<Side<'a>>)],
    moves: &[(MapDef, MapKey, Option<String>, Option<String>)],
    stale: &mut Stale,
    now: Instant,
    delay: Duration,
) -> Vec<Cmd> {
    static NO_CHAINS: BTreeMap<String, ChainDef> = BTreeMap::new();
    static NO_SETS: BTreeMap<String, u32> = BTreeMap::new();
    let side = |s: &Option<Side<'a>>| -> Side<'a> { s.unwrap_or((&NO_CHAINS, &NO_SETS)) };
    let mut cmds = Vec::new();
    for (old, new) in changes {
        let ((_, old_sets), (_, new_sets)) = (side(old), side(new));
        for (name, timeout) in new_sets {
            if !old_sets.contains_key(name) && stale.sets.remove(name).is_none() {
                cmds.push(Cmd::AddSet(name.clone(), *timeout));
            }
        }
    }
    let mut refill = Vec::new();
    for (old, new) in changes {
        let ((old_chains, _), (new_chains, _)) = (side(old), side(new));
        for (name, chain) in new_chains {
            match old_chains.get(name) {
                Some(old) if old == chain => continue,
                Some(_) => cmds.push(Cmd::FlushChain(name.clone())),
                // Flushed earlier but not deleted yet: it exists and is empty.
                None if stale.chains.remove(name).is_some() => {}
                None => cmds.push(Cmd::AddChain(name.clone(), chain.base)),
            }
            refill.push((name, chain));
        }
    }
    for (name, chain) in refill {
        cmds.extend(
            chain
                .rules
                .iter()
                .map(|r| Cmd::AddRule(name.clone(), r.clone())),
        );
    }
    for map in MAPS {
        let gone: Vec<MapKey> = moves
            .iter()
            .filter(|(m, _, before, _)| *m == map && before.is_some())
            .map(|(_, k, _, _)| k.clone())
            .collect();
        if !gone.is_empty() {
            cmds.push(Cmd::DeleteElements(map, gone));
        }
        let added: Vec<(MapKey, String)> = moves
            .iter()
            .filter(|(m, ..)| *m == map)
            .filter_map(|(_, k, _, after)| Some((k.clone(), after.clone()?)))
            .collect();
        if !added.is_empty() {
            cmds.push(Cmd::AddElements(map, added));
        }
    }
    // Delete what has been stale long enough, then retire what became stale now.
    let ripe: Vec<String> = stale
        .chains
        .iter()
        .filter(|(_, t)| now.saturating_duration_since(**t) >= delay)
        .map(|(n, _)| n.clone())
        .collect();
    for name in ripe {
        stale.chains.remove(&name);
        cmds.push(Cmd::DeleteChain(name));
    }
    let ripe: Vec<String> = stale
        .sets
        .iter()
        .filter(|(_, t)| now.saturating_duration_since(**t) >= delay)
        .map(|(n, _)| n.clone())
        .collect();
    for name in ripe {
        stale.sets.remove(&name);
        cmds.push(Cmd::DeleteSet(name));
    }
    for (old, new) in changes {
        let ((old_chains, old_sets), (new_chains, new_sets)) = (side(old), side(new));
        for name in old_chains.keys().filter(|n| !new_chains.contains_key(*n)) {
            cmds.push(Cmd::FlushChain(name.clone()));
            stale.chains.insert(name.clone(), now);
        }
        for name in old_sets.keys().filter(|n| !new_sets.contains_key(*n)) {
            stale.sets.insert(name.clone(), now);
        }
    }
    cmds
}
