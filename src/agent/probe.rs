//! tcpSocket, httpGet and gRPC probes, dialled from the node as the
//! kubelet dials them: to the probe's `host`, or the pod's IP when it
//! names none.
//! A server that listens only on the pod's loopback fails them here as it
//! would under the kubelet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::net::TcpStream;

/// The User-Agent of the kubelet whose API version we serve.
const USER_AGENT: &str = "kube-probe/1.33";

/// How many redirects to the same host an httpGet probe follows (Go's
/// client default, which the kubelet keeps).
const MAX_REDIRECTS: usize = 10;

/// How much of a response body is read (the kubelet's limit).
const MAX_BODY: usize = 10 * 1024;

/// An httpGet probe, its `host` already defaulted.
#[derive(Debug, Clone)]
pub struct HttpGet {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `httpHeaders`, in order; a `Host` among them is the Host header.
    pub headers: Vec<(String, String)>,
}

impl HttpGet {
    fn url(&self, port: u16, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", authority(&self.host, port))
    }
}

/// `host:port`, an IPv6 address in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connect to `host:port` within `timeout`.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, dial(host, port)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("dial tcp: lookup {host}: {e}"))?
        .collect();
    let mut last = format!("dial tcp: lookup {host}: no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("dial tcp {addr}: connect: {}", go_error(&e)),
        }
    }
    Err(last)
}

/// An OS error as Go words it ("connection refused"), which is what
/// users search for from a kubelet's probe messages.
fn go_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// GET the probe's URL within `timeout` (redirects included); 200–399 is
/// success. A redirect to another host ends the probe with success, as
/// the kubelet's does.
pub async fn http(get: &HttpGet, timeout: Duration) -> Result<(), String> {
    let path = if get.path.is_empty() {
        "/".to_owned()
    } else if get.path.starts_with('/') {
        get.path.clone()
    } else {
        format!("/{}", get.path)
    };
    let first = get.url(get.port, &path);
    let exchange = async {
        let (mut port, mut path) = (get.port, path);
        for _ in 0..=MAX_REDIRECTS {
            let url = get.url(port, &path);
            let (code, location) = request(get, port, &path)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if !(300..400).contains(&code) {
                return Ok(code);
            }
            let Some(next) = location.and_then(|l| redirect(&get.host, get.https, port, &l)) else {
                // Elsewhere (or nowhere): the redirect itself is the answer.
                return Ok(code);
            };
            (port, path) = next;
        }
        Err(format!(
            "Get \"{first}\": stopped after {MAX_REDIRECTS} redirects"
        ))
    };
    let code = match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "Get \"{first}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ));
        }
    };
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Where a redirect from `host:port` to `location` goes, when it stays on
/// `host` with the same scheme: the port and path.
fn redirect(host: &str, https: bool, port: u16, location: &str) -> Option<(u16, String)> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some((port, location.to_owned()));
    }
    let uri: http::Uri = location.parse().ok()?;
    let scheme_https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return None,
    };
    let to = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    if to != host || scheme_https != https {
        return None;
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Some((port, path))
}

/// One GET: the status code and the Location header.
async fn request(get: &HttpGet, port: u16, path: &str) -> Result<(u16, Option<String>), String> {
    let stream = dial(&get.host, port).await?;
    let mut req = http::Request::get(path);
    let has = |name: &str| {
        get.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    if !has("host") {
        req = req.header(http::header::HOST, authority(&get.host, port));
    }
    if !has("user-agent") {
        req = req.header(http::header::USER_AGENT, USER_AGENT);
    }
    if !has("accept") {
        req = req.header(http::header::ACCEPT, "*/*");
    }
    for (k, v) in &get.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("the probe's request: {e}"))?;
    if get.https {
        let server = match get.host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls::pki_types::ServerName::try_from(get.host.clone())
                .map_err(|e| format!("the probe's host: {e}"))?,
        };
        let tls = tokio_rustls::TlsConnector::from(any_certificate())
            .connect(server, stream)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(tls, req).await
    } else {
        send(stream, req).await
    }
}

async fn send<S>(
    stream: S,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<(u16, Option<String>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(|e| e.to_string());
    let result = match response {
        Ok(r) => {
            let code = r.status().as_u16();
            let location = r
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            // Read (a bounded part of) the body, as the kubelet does.
            let mut body = r.into_body();
            let mut read = 0;
            while read < MAX_BODY {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, bytes::Bytes::len),
                    _ => break,
                }
            }
            Ok((code, location))
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

/// A gRPC probe: the standard health service's `Check` for `service` at
/// `host:port`, over plain HTTP/2 as the kubelet's; SERVING is success.
pub async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let target = authority(host, port);
    let call = async {
        let stream = dial(host, port)
            .await
            .map_err(|e| format!("failed to connect service \"{target}\": {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("failed to connect service \"{target}\": {e}"))?;
        let conn = tokio::spawn(conn);
        // HealthCheckRequest { string service = 1; }, length-prefixed.
        let mut message = Vec::new();
        if !service.is_empty() {
            message.push(0x0a);
            push_varint(&mut message, service.len() as u64);
            message.extend_from_slice(service.as_bytes());
        }
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        let req = http::Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let headers = res.headers().clone();
            let collected = res.into_body().collect().await.map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            // In the trailers, or in the headers of a trailers-only answer.
            let field = |name: &str| {
                trailers
                    .get(name)
                    .or_else(|| headers.get(name))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            Ok::<_, String>((
                field("grpc-status"),
                field("grpc-message"),
                collected.to_bytes(),
            ))
        }
        .await;
        conn.abort();
        let (grpc_status, grpc_message, body) = answer?;
        if grpc_status != "0" {
            return Err(format!(
                "health rpc probe failed: rpc error: code = {} desc = {grpc_message}",
                grpc_code(&grpc_status)
            ));
        }
        // HealthCheckResponse { ServingStatus status = 1; } after the prefix.
        let status = body.get(5..).map_or(0, health_status);
        match status {
            1 => Ok(()),
            n => Err(format!(
                "service unhealthy (responded with \"{}\")",
                match n {
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "UNKNOWN",
                }
            )),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Field 1 (a varint) of a HealthCheckResponse, 0 when absent.
fn health_status(message: &[u8]) -> u64 {
    let mut i = 0;
    while i < message.len() {
        let key = message[i];
        i += 1;
        let mut value = 0u64;
        let mut shift = 0;
        while i < message.len() {
            let b = message[i];
            i += 1;
            value |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if key == 0x08 {
            return value;
        }
        if key & 7 != 0 {
            // Not a varint field: nothing else is expected here.
            return 0;
        }
    }
    0
}

/// A gRPC status code's name, as Go's client prints it.
fn grpc_code(code: &str) -> &str {
    match code {
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "7" => "PermissionDenied",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "16" => "Unauthenticated",
        "" => "Unknown",
        other => other,
    }
}

/// A TLS client that takes any certificate: the kubelet's HTTPS probes
/// skip verification (the pod's certificate is for its clients' names).
fn any_certificate() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            #[derive(Debug)]
            struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
            impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
                fn verify_server_cert(
                    &self,
                    _: &rustls::pki_types::CertificateDer<'_>,
                    _: &[rustls::pki_types::CertificateDer<'_>],
                    _: &rustls::pki_types::ServerName<'_>,
                    _: &[u8],
                    _: rustls::pki_types::UnixTime,
                ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error>
                {
                    Ok(rustls::client::danger::ServerCertVerified::assertion())
                }
                fn verify_tls12_signature(
                    &self,
                    message: &[u8],
                    cert: &rustls::pki_types::CertificateDer<'_>,
                    dss: &rustls::DigitallySignedStruct,
                ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
                {
                    rustls::crypto::verify_tls12_signature(
                        message,
                        cert,
                        dss,
                        &self.0.signature_verification_algorithms,
                    )
                }
                fn verify_tls13_signature(
                    &self,
                    message: &[u8],
                    cert: &rustls::pki_types::CertificateDer<'_>,
                    dss: &rustls::DigitallySignedStruct,
                ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
                {
                    rustls::crypto::verify_tls13_signature(
                        message,
                        cert,
                        dss,
                        &self.0.signature_verification_algorithms,
                    )
                }
                fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                    self.0.signature_verification_algorithms.supported_schemes()
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// A server on loopback that answers each of `answers` to one request
    /// in turn (over TLS with a self-signed certificate when `tls`); its
    /// port, and the requests it got.
    fn serve(tls: bool, answers: Vec<String>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pod.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (tcp, _) = listener.accept().unwrap();
                let mut stream: Box<dyn ReadWrite> = if tls {
                    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                    Box::new(rustls::StreamOwned::new(conn, tcp))
                } else {
                    Box::new(tcp)
                };
                let mut request = String::new();
                let mut reader = BufReader::new(&mut stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    request.push_str(&line);
                }
                let _ = write!(stream, "HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.flush();
                requests.push(request);
            }
            requests
        });
        (port, handle)
    }

    trait ReadWrite: std::io::Read + Write {}
    impl<T: std::io::Read + Write> ReadWrite for T {}

    fn get(https: bool, port: u16, path: &str, headers: &[(&str, &str)]) -> HttpGet {
        HttpGet {
            https,
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    const SECOND: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn https_probes_take_any_certificate_and_read_the_status() {
        let (port, server) = serve(true, vec!["204 No Content".into()]);
        http(&get(true, port, "/healthz", &[]), SECOND)
            .await
            .unwrap();
        let request = &server.join().unwrap()[0];
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("user-agent: kube-probe/1.33"), "{request}");
        assert!(
            request.contains(&format!("host: 127.0.0.1:{port}")),
            "{request}"
        );

        let (port, _server) = serve(true, vec!["500 Internal Server Error".into()]);
        let e = http(&get(true, port, "/", &[]), SECOND).await.unwrap_err();
        assert_eq!(e, "HTTP probe failed with statuscode: 500");

        // Plain HTTP to a TLS port gets no status line.
        let (port, _server) = serve(true, vec!["200 OK".into()]);
        let e = http(&get(false, port, "/", &[]), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(
            e.starts_with(&format!("Get \"http://127.0.0.1:{port}/\"")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn http_probes_send_their_headers_and_follow_redirects_on_their_host() {
        // The probe's Host header replaces the address; others are added.
        let (port, server) = serve(false, vec!["200 OK".into()]);
        let probe = get(
            false,
            port,
            "healthz",
            &[("Host", "web.example"), ("X-Probe", "1")],
        );
        http(&probe, SECOND).await.unwrap();
        let request = &server.join().unwrap()[0];
        assert!(request.starts_with("GET /healthz "), "{request}");
        assert!(request.contains("host: web.example\r\n"), "{request}");
        assert!(!request.contains("127.0.0.1"), "{request}");
        assert!(request.contains("x-probe: 1\r\n"), "{request}");

        // A redirect on the same host is followed to its answer...
        let (port, server) = serve(
            false,
            vec![
                "302 Found\r\nLocation: /login".into(),
                "404 Not Found".into(),
            ],
        );
        let e = http(&get(false, port, "/", &[]), SECOND).await.unwrap_err();
        assert_eq!(e, "HTTP probe failed with statuscode: 404");
        assert!(server.join().unwrap()[1].starts_with("GET /login "));
        // ...one elsewhere is success, as the kubelet's.
        let (port, _server) = serve(
            false,
            vec!["301 Moved Permanently\r\nLocation: http://elsewhere.example/".into()],
        );
        http(&get(false, port, "/", &[]), SECOND).await.unwrap();
    }

    #[tokio::test]
    async fn probes_fail_on_refused_and_silent_ports() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = tcp("127.0.0.1", port, SECOND).await.unwrap_err();
        assert!(
            e.starts_with(&format!("dial tcp 127.0.0.1:{port}: connect:")),
            "{e}"
        );
        // Accepts but never answers: the timeout ends it.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        tcp("127.0.0.1", port, SECOND).await.unwrap();
        let t = std::time::Instant::now();
        let e = http(&get(false, port, "/", &[]), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("context deadline exceeded"), "{e}");
        assert!(t.elapsed() < SECOND, "{:?}", t.elapsed());
    }

    /// A gRPC health service over h2c on loopback: "" and "web" are
    /// SERVING, "db" NOT_SERVING, anything else NOT_FOUND. Its port.
    async fn health_server() -> u16 {
        use http_body_util::{BodyExt, StreamBody};
        use hyper::body::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let name =
                            String::from_utf8_lossy(body.get(7..).unwrap_or_default()).into_owned();
                        let mut trailers = http::HeaderMap::new();
                        let mut frames = Vec::new();
                        let status = match name.as_str() {
                            "" | "web" => Some(1u8),
                            "db" => Some(2),
                            _ => None,
                        };
                        match status {
                            Some(s) => {
                                frames.push(Frame::data(bytes::Bytes::from(vec![
                                    0, 0, 0, 0, 2, 0x08, s,
                                ])));
                                trailers.insert("grpc-status", "0".parse().unwrap());
                            }
                            None => {
                                trailers.insert("grpc-status", "5".parse().unwrap());
                                trailers.insert("grpc-message", "unknown service".parse().unwrap());
                            }
                        }
                        frames.push(Frame::trailers(trailers));
                        let body = StreamBody::new(futures::stream::iter(
                            frames.into_iter().map(Ok::<_, std::convert::Infallible>),
                        ));
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_probes_ask_the_health_service() {
        let port = health_server().await;
        grpc("127.0.0.1", port, "", SECOND).await.unwrap();
        grpc("127.0.0.1", port, "web", SECOND).await.unwrap();
        let e = grpc("127.0.0.1", port, "db", SECOND).await.unwrap_err();
        assert_eq!(e, "service unhealthy (responded with \"NOT_SERVING\")");
        let e = grpc("127.0.0.1", port, "cache", SECOND).await.unwrap_err();
        assert_eq!(
            e,
            "health rpc probe failed: rpc error: code = NotFound desc = unknown service"
        );
        // Nothing listening.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = grpc("127.0.0.1", closed, "", SECOND).await.unwrap_err();
        assert!(e.starts_with("failed to connect service"), "{e}");
        // Not gRPC (an HTTP/1 server that never answers): the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let e = grpc("127.0.0.1", port, "", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.starts_with("timeout: "), "{e}");
    }

    #[test]
    fn redirects_stay_on_the_probed_host() {
        assert_eq!(
            redirect("10.0.0.1", false, 80, "/x?y=1"),
            Some((80, "/x?y=1".into()))
        );
        assert_eq!(
            redirect("10.0.0.1", false, 80, "http://10.0.0.1:8080/a"),
            Some((8080, "/a".into()))
        );
        assert_eq!(redirect("10.0.0.1", false, 80, "http://10.0.0.2/a"), None);
        assert_eq!(redirect("10.0.0.1", false, 80, "https://10.0.0.1/a"), None);
        assert_eq!(redirect("10.0.0.1", false, 80, "//10.0.0.2/a"), None);
    }
}
