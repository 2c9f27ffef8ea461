//! The upstream resolvers: names outside the cluster zone are relayed to
//! the node's nameservers (from its resolv.conf), one after another, each
//! with a timeout, and only a reply to our own question is accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, warn};

use super::Dns;

/// How long one upstream gets to answer before the next one is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

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
pub(super) fn pick_resolv_conf(texts: &[String]) -> usize {
    texts
        .iter()
        .position(|t| has_pod_reachable_nameserver(t))
        .unwrap_or(0)
}

pub(super) fn has_pod_reachable_nameserver(text: &str) -> bool {
    Dns::upstreams_from_resolv_conf(text)
        .iter()
        .any(|u| !u.ip().is_loopback() && !u.ip().is_unspecified())
}

/// Is `upstream` one of the addresses we serve on? Served on the unspecified
/// address, every loopback address on our port is us (nothing else could
/// have bound that port).
pub(super) fn is_own(own: &[SocketAddr], upstream: SocketAddr) -> bool {
    own.iter().any(|o| {
        *o == upstream
            || (o.ip().is_unspecified()
                && o.port() == upstream.port()
                && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()))
    })
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

impl Dns {
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

    /// The answers upstream gives for `target` (an ExternalName's CNAME
    /// target); empty when it cannot be resolved, so the client still gets
    /// the CNAME and can resolve it itself.
    pub(super) async fn resolve_upstream(
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
    pub(super) async fn forward(
        &self,
        query: &[u8],
        question: &Query,
        over_tcp: bool,
    ) -> Option<Vec<u8>> {
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
}
