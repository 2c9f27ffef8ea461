//! Serving the zone: one query message in, one response out
//! ([`Dns::answer`]), over UDP and TCP ([`Dns::serve`]), with bounds on
//! queries and connections in flight.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Dns;
use super::zone::Lookup;

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

impl Dns {
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
