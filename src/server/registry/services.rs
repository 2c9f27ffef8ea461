//! ClusterIP and NodePort allocation. The allocations live in memory and are
//! rebuilt from the stored Services at start; one server owns the store, so
//! memory and store cannot disagree for long (a failed write releases what
//! it took).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::api::status::FieldError;

/// The Service CIDR and NodePort range.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRanges {
    pub cidr: (Ipv4Addr, u8),
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    fn default() -> Self {
        Self {
            cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
            node_ports: (30000, 32767),
        }
    }
}

impl ServiceRanges {
    fn first_last(&self) -> (u32, u32) {
        let base = u32::from(self.cidr.0) & (u32::MAX << (32 - u32::from(self.cidr.1)));
        let size = 1u32 << (32 - u32::from(self.cidr.1));
        // Network and broadcast addresses are never handed out.
        (base + 1, base + size - 2)
    }

    /// The n-th usable address (1 → 10.43.0.1): the API service's and DNS's.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first_last().0 + n - 1)
    }

    fn cidr_text(&self) -> String {
        format!("{}/{}", self.cidr.0, self.cidr.1)
    }
}

#[derive(Debug, Default)]
pub struct Allocator {
    pub ranges: ServiceRanges,
    ips: HashSet<u32>,
    ports: HashSet<u16>,
    next_ip: u32,
    next_port: u16,
}

/// What one Service holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    pub ips: Vec<Ipv4Addr>,
    pub ports: Vec<u16>,
}

impl Held {
    pub fn of(svc: &Value) -> Self {
        let ips = svc
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect();
        let ports = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort")?.as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .collect();
        Self { ips, ports }
    }
}

impl Allocator {
    pub fn new(ranges: ServiceRanges) -> Self {
        Self {
            ranges,
            ..Self::default()
        }
    }

    /// Mark what a stored Service holds (at start).
    pub fn restore(&mut self, held: &Held) {
        self.ips.extend(held.ips.iter().map(|ip| u32::from(*ip)));
        self.ports.extend(held.ports.iter().copied());
    }

    pub fn release(&mut self, held: &Held) {
        for ip in &held.ips {
            self.ips.remove(&u32::from(*ip));
        }
        for p in &held.ports {
            self.ports.remove(p);
        }
    }

    fn take_ip(
        &mut self,
        wanted: Option<Ipv4Addr>,
        errs: &mut Vec<FieldError>,
    ) -> Option<Ipv4Addr> {
        let (first, last) = self.ranges.first_last();
        if let Some(ip) = wanted {
            let n = u32::from(ip);
            if n < first || n > last {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!([ip.to_string()]),
                    format!(
                        "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                        self.ranges.cidr_text()
                    ),
                ));
                return None;
            }
            if !self.ips.insert(n) {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!([ip.to_string()]),
                    format!("failed to allocate IP {ip}: provided IP is already allocated"),
                ));
                return None;
            }
            return Some(ip);
        }
        // Dynamic allocations skip the first 16 addresses, which are kept for
        // well-known services (API at .1, DNS at .10), as upstream reserves a
        // low band for static IPs.
        let dynamic_first = (first + 16).min(last);
        let span = last - dynamic_first + 1;
        for i in 0..span {
            let n = dynamic_first + (self.next_ip + i) % span;
            if self.ips.insert(n) {
                self.next_ip = (n - dynamic_first + 1) % span;
                return Some(Ipv4Addr::from(n));
            }
        }
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            &json!([]),
            format!(
                "failed to allocate a serviceIP: range is full ({})",
                self.ranges.cidr_text()
            ),
        ));
        None
    }

    fn take_port(
        &mut self,
        field: String,
        wanted: Option<u16>,
        errs: &mut Vec<FieldError>,
    ) -> Option<u16> {
        let (lo, hi) = self.ranges.node_ports;
        if let Some(p) = wanted {
            if p < lo || p > hi {
                errs.push(FieldError::invalid(
                    field,
                    &json!(p),
                    format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                ));
                return None;
            }
            if !self.ports.insert(p) {
                errs.push(FieldError::invalid(
                    field,
                    &json!(p),
                    "provided port is already allocated",
                ));
                return None;
            }
            return Some(p);
        }
        let span = hi - lo + 1;
        for i in 0..span {
            let p = lo + (self.next_port + i) % span;
            if self.ports.insert(p) {
                self.next_port = (p - lo + 1) % span;
                return Some(p);
            }
        }
        errs.push(FieldError::invalid(
            field,
            &json!(0),
            format!("range is full ({lo}-{hi})"),
        ));
        None
    }

    /// Fill in `spec.clusterIP(s)` and node ports of a new or updated Service,
    /// keeping what `old` already holds. On error nothing stays allocated.
    pub fn assign(&mut self, svc: &mut Value, old: Option<&Held>) -> Result<Held, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut taken = Held::default();
        let kept = old.cloned().unwrap_or_default();
        let spec = svc.get("spec").cloned().unwrap_or(json!({}));
        let kind = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        let mut ip_field = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if ip_field.is_empty() {
            if let Some(first) = spec.pointer("/clusterIPs/0").and_then(Value::as_str) {
                ip_field = first.to_owned();
            } else if let Some(ip) = kept.ips.first() {
                ip_field = ip.to_string();
            }
        }
        let mut result = Held::default();
        if kind == "ExternalName" {
            // No cluster IP; release any the Service had.
        } else if ip_field == "None" {
            svc["spec"]["clusterIP"] = json!("None");
            svc["spec"]["clusterIPs"] = json!(["None"]);
        } else {
            let wanted = if ip_field.is_empty() {
                None
            } else {
                match ip_field.parse::<Ipv4Addr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        errs.push(FieldError::invalid(
                            "spec.clusterIPs[0]",
                            &json!(ip_field),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        ));
                        None
                    }
                }
            };
            let already = wanted.filter(|ip| kept.ips.contains(ip));
            let ip = match already {
                Some(ip) => Some(ip),
                None if errs.is_empty() => {
                    let got = self.take_ip(wanted, &mut errs);
                    taken.ips.extend(got);
                    got
                }
                None => None,
            };
            if let Some(ip) = ip {
                result.ips.push(ip);
                svc["spec"]["clusterIP"] = json!(ip.to_string());
                svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
                svc["spec"]["ipFamilies"] = json!(["IPv4"]);
                svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
        let wants_node_ports = kind == "NodePort" || kind == "LoadBalancer";
        if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, port) in ports.iter_mut().enumerate() {
                let requested = port
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|p| *p != 0);
                if !wants_node_ports {
                    if let Some(m) = port.as_object_mut() {
                        m.remove("nodePort");
                    }
                    continue;
                }
                let requested = match requested.map(u16::try_from) {
                    Some(Ok(p)) => Some(p),
                    Some(Err(_)) => {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &port["nodePort"],
                            "must be between 1 and 65535, inclusive",
                        ));
                        continue;
                    }
                    None => None,
                };
                if let Some(p) = requested.filter(|p| kept.ports.contains(p)) {
                    result.ports.push(p);
                    continue;
                }
                if let Some(p) =
                    self.take_port(format!("spec.ports[{i}].nodePort"), requested, &mut errs)
                {
                    taken.ports.push(p);
                    result.ports.push(p);
                    port["nodePort"] = json!(p);
                }
            }
        }
        if !errs.is_empty() {
            self.release(&taken);
            return Err(errs);
        }
        // What the old Service held but the new one does not is freed.
        let freed = Held {
            ips: kept
                .ips
                .iter()
                .filter(|ip| !result.ips.contains(ip))
                .copied()
                .collect(),
            ports: kept
                .ports
                .iter()
                .filter(|p| !result.ports.contains(p))
                .copied()
                .collect(),
        };
        self.release(&freed);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"spec": spec})
    }

    #[test]
    fn ips_and_node_ports_are_unique_and_released() {
        let mut a = Allocator::new(ServiceRanges::default());
        let mut s1 = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        let h1 = a.assign(&mut s1, None).unwrap();
        let mut s2 = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        let h2 = a.assign(&mut s2, None).unwrap();
        assert_ne!(h1.ips, h2.ips);
        assert_ne!(h1.ports, h2.ports);
        assert!((30000..=32767).contains(&h1.ports[0]));
        // A specific port already taken is refused; after release it is free.
        let mut s3 =
            svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": h1.ports[0]}]}));
        let errs = a.assign(&mut s3, None).unwrap_err();
        assert!(errs[0].message.contains("already allocated"), "{:?}", errs);
        a.release(&h1);
        a.assign(&mut s3, None).unwrap();
    }

    #[test]
    fn requested_ip_outside_the_range_is_invalid() {
        let mut a = Allocator::new(ServiceRanges::default());
        let mut s = svc(json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}));
        let errs = a.assign(&mut s, None).unwrap_err();
        assert!(
            errs[0].message.contains("not in the valid range"),
            "{errs:?}"
        );
        let mut s = svc(json!({"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}));
        assert_eq!(
            a.assign(&mut s, None).unwrap().ips,
            [Ipv4Addr::new(10, 43, 0, 1)]
        );
        assert_eq!(s["spec"]["clusterIPs"], json!(["10.43.0.1"]));
    }

    #[test]
    fn update_keeps_the_ip_and_frees_node_ports_when_type_changes() {
        let mut a = Allocator::new(ServiceRanges::default());
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        let held = a.assign(&mut s, None).unwrap();
        let mut updated = s.clone();
        updated["spec"]["type"] = json!("ClusterIP");
        let now = a.assign(&mut updated, Some(&held)).unwrap();
        assert_eq!(now.ips, held.ips);
        assert!(now.ports.is_empty());
        assert!(updated["spec"]["ports"][0].get("nodePort").is_none());
        assert!(!a.ports.contains(&held.ports[0]));
    }
}
