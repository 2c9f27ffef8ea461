//! The HTTP face of the API server: TLS (h2 and HTTP/1.1 on one port),
//! authentication, routing, content negotiation, and the mapping of every
//! failure to a `metav1.Status`. Object semantics live in
//! [`crate::server::registry`]; this module turns requests into registry
//! calls and results into responses.

#![forbid(unsafe_code)]

mod body;
mod discovery;
mod exec;
mod nodes;
mod openapi;
mod portforward;
mod request;
pub mod tunnel;
mod watch;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::catalog::Resource;
use crate::api::patch::PatchType;
use crate::api::selector::{FieldSelector, LabelSelector, selectable_fields};
use crate::api::status::{self, ApiError};
use crate::api::table;
use crate::server::auth::{self, Tokens, User};
use crate::server::registry::{
    DeleteOptions, FieldValidation, ListQuery, ListResult, Registry, WriteOptions, Written,
};
use crate::store::Revision;

pub use body::Body;
use request::{Representation, ResourcePath, Target};

/// Request bodies above this are refused with 413 (upstream's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// How much of a too-large body is read and dropped before answering.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

/// What the handlers share.
pub struct ApiServer {
    pub registry: Arc<Registry>,
    pub tokens: Tokens,
    /// `host:port` clients reach the server at (for `/api`).
    pub server_address: String,
    pub git_commit: &'static str,
    /// Served unauthenticated at `/cacerts`: agents check it against the
    /// hash in their join token before trusting it.
    pub ca_pem: String,
    /// Connections node agents opened, for their kubelet APIs.
    pub tunnels: Arc<tunnel::Tunnels>,
    /// Signs and checks service account tokens.
    pub service_accounts: Arc<crate::server::auth::serviceaccount::Signer>,
    /// The cluster CA, for nodes' client certificates.
    pub pki: Arc<crate::server::auth::Pki>,
    /// Checks client certificates against the CA (the handshake lets any
    /// through so that a bad one gets a 401).
    pub client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The controllers' cache of pods (the node authorizer's fast path).
    pub pods: Arc<crate::server::informer::Informer>,
}

/// Where agents open their kubelet API tunnels.
const TUNNEL_PATH: &str = "/orch/v1/tunnel";

type Query = std::collections::HashMap<String, Vec<String>>;

use crate::api::query::first as q;

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a JSON value always serialises");
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::full(bytes))
        .expect("static response parts are valid")
}

/// A `Status` body, already serialised the way kube-apiserver writes it.
fn status_response(code: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::full(bytes))
        .expect("static response parts are valid")
}

fn error_response(err: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    status_response(code, err.to_body())
}

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

/// Serve the API on `listener` until the returned future is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, api: Arc<ApiServer>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = api.clone();
        connections.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            // A certificate the CA did not sign (or expired) got through the
            // handshake only to be answered 401 here.
            let cert_user = tls.get_ref().1.peer_certificates().and_then(|chain| {
                let (leaf, intermediates) = chain.split_first()?;
                let now = rustls::pki_types::UnixTime::now();
                Some(
                    api.client_verifier
                        .verify_client_cert(leaf, intermediates, now)
                        .ok()
                        .and_then(|_| User::from_certificate(leaf))
                        .ok_or(()),
                )
            });
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                let user = cert_user.clone();
                async move { Ok::<_, Infallible>(api.handle(req, user).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}

impl ApiServer {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        cert_user: Option<Result<User, ()>>,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        // Unauthenticated endpoints.
        match path.as_str() {
            "/version" => return json_response(StatusCode::OK, &self.version()),
            "/cacerts" => {
                return Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Body::full(self.ca_pem.clone()))
                    .expect("static response parts are valid");
            }
            p if p == "/healthz"
                || p == "/livez"
                || p == "/readyz"
                || p.starts_with("/healthz/")
                || p.starts_with("/livez/")
                || p.starts_with("/readyz/") =>
            {
                return Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(Body::full("ok"))
                    .expect("static response parts are valid");
            }
            _ => {}
        }
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cert_user = match cert_user {
            Some(Ok(user)) => Some(user),
            Some(Err(())) => return error_response(&ApiError::unauthorized()),
            None => None,
        };
        let mut user =
            cert_user.or_else(|| bearer.as_deref().and_then(|h| self.tokens.authenticate(h)));
        if user.is_none()
            && let Some(h) = &bearer
        {
            user = self.service_account_user(h).await;
            if user.is_none() {
                user = self.bootstrap_user(h).await;
            }
        }
        let Some(user) = user else {
            return error_response(&ApiError::unauthorized());
        };
        let span = tracing::debug_span!("request", method = %req.method(), path = %path, user = %user.name);
        async move {
            if !auth::authorize(&user) {
                let denied = match user.node() {
                    Some(node) => self.authorize_node(node, &user.name, &req, &path).await,
                    None if user.is_bootstrapper() && path == nodes::CERTIFICATE_PATH => Ok(()),
                    None => Err(ApiError::forbidden(format!(
                        "User {:?} cannot {} path {:?}",
                        user.name,
                        req.method().as_str().to_lowercase(),
                        path
                    ))),
                };
                if let Err(e) = denied {
                    return error_response(&e);
                }
            }
            if path == TUNNEL_PATH {
                return self.tunnels.accept(req);
            }
            if path == nodes::CERTIFICATE_PATH {
                // Only the join token's holder gets here (authorized above).
                return self
                    .node_certificate(req)
                    .await
                    .unwrap_or_else(|e| error_response(&e));
            }
            match self.route(req, &user).await {
                Ok(resp) => resp,
                Err(err) => {
                    tracing::debug!(code = err.code, reason = err.reason, message = %err.message, "request failed");
                    error_response(&err)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The service account a bearer JWT of ours names, while the token is
    /// valid and the service account (and the pod it is bound to) exist
    /// with the uids it was issued for.
    async fn service_account_user(&self, header: &str) -> Option<User> {
        let token = header.strip_prefix("Bearer ")?.trim();
        let claims = self.service_accounts.verify(token)?;
        let ns = Some(claims.namespace.as_str());
        let uid_of = |v: &Value| {
            v.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let sa_res = self
            .registry
            .catalog
            .find("", "v1", "serviceaccounts")?
            .clone();
        let sa = self
            .registry
            .get(&sa_res, ns, &claims.service_account)
            .await
            .ok()?;
        if !claims.service_account_uid.is_empty()
            && uid_of(&sa).as_deref() != Some(claims.service_account_uid.as_str())
        {
            return None;
        }
        if let Some((pod, uid)) = &claims.pod {
            let pod_res = self.registry.catalog.find("", "v1", "pods")?.clone();
            let p = self.registry.get(&pod_res, ns, pod).await.ok()?;
            if uid_of(&p).as_deref() != Some(uid.as_str()) {
                return None;
            }
        }
        Some(User::service_account(
            &claims.namespace,
            &claims.service_account,
        ))
    }

    fn version(&self) -> Value {
        json!({
            "major": "1",
            "minor": "33",
            "gitVersion": crate::server::KUBERNETES_VERSION,
            "gitCommit": self.git_commit,
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "rustc",
            "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else if cfg!(target_arch = "arm") { "arm" } else { "amd64" }),
        })
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_owned();
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(rest) = path.strip_prefix("/openapi/v3") {
            let catalog = &self.registry.catalog;
            let doc = match rest.trim_matches('/') {
                "" => Some(openapi::index(catalog, self.git_commit)),
                gv => {
                    let parts: Vec<&str> = gv.split('/').collect();
                    match parts.as_slice() {
                        ["api", v] => openapi::group_version(catalog, "", v),
                        ["apis", g, v] => openapi::group_version(catalog, g, v),
                        _ => None,
                    }
                }
            };
            return doc
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(ApiError::not_found_path);
        }
        let catalog = &self.registry.catalog;
        let target = request::parse_path(&path, |g, v, p| {
            catalog.find(g, v, p).is_some_and(|r| r.namespaced)
        })
        .ok_or_else(ApiError::not_found_path)?;
        match target {
            Target::Discovery {
                legacy,
                group,
                version,
            } => {
                if req.method() != Method::GET {
                    return Err(ApiError::method_not_allowed(req.method().as_str()));
                }
                self.discovery(
                    legacy,
                    group.as_deref(),
                    version.as_deref(),
                    accept.as_deref(),
                )
            }
            Target::Resource(rp) => self.resource(req, rp, accept.as_deref(), user).await,
        }
    }

    fn discovery(
        &self,
        legacy: bool,
        group: Option<&str>,
        version: Option<&str>,
        accept: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let catalog = &self.registry.catalog;
        let doc = match (group, version) {
            (None, _) if discovery::wants_aggregated(accept) => {
                let bytes =
                    serde_json::to_vec(&discovery::aggregated(catalog, legacy)).expect("JSON");
                return Ok(Response::builder()
                    .header(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)
                    .body(Body::full(bytes))
                    .expect("static response parts are valid"));
            }
            (None, _) if legacy => Some(discovery::api_versions(&self.server_address)),
            (None, _) => Some(discovery::api_group_list(catalog)),
            (Some(g), None) => discovery::api_group(catalog, g),
            (Some(g), Some(v)) => discovery::api_resource_list(catalog, g, v),
        };
        doc.map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(ApiError::not_found_path)
    }

    async fn resource(
        self: &Arc<Self>,
        req: Request<Incoming>,
        rp: ResourcePath,
        accept: Option<&str>,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        let registry = self.registry.clone();
        let res = registry
            .catalog
            .find(&rp.group, &rp.version, &rp.plural)
            .cloned()
            .ok_or_else(ApiError::not_found_path)?;
        if (!res.namespaced && rp.namespace.is_some())
            || (res.namespaced && rp.namespace.is_none() && rp.name.is_some())
        {
            return Err(ApiError::not_found_path());
        }
        if let Some(sub) = &rp.subresource
            && res.subresource(sub).is_none()
        {
            return Err(ApiError::not_found_path());
        }
        let query = request::parse_query(req.uri().query());
        let method = req.method().clone();
        let ns = rp.namespace.as_deref();
        let representation = request::negotiate(accept)
            .ok_or_else(|| ApiError::not_acceptable(accept.unwrap_or_default()))?;
        let write = write_options(&query)?;
        match (&method, rp.name.as_deref(), rp.subresource.as_deref()) {
            // Collections.
            (&Method::GET, None, None) => {
                let watching = matches!(q(&query, "watch"), Some("true" | "1"));
                let list_query = list_query(&res, &query)?;
                if watching {
                    let params = watch::Params::parse(&query, list_query)?;
                    return Ok(watch::start(
                        registry,
                        res,
                        rp.namespace.clone(),
                        params,
                        representation,
                    ));
                }
                if !res.allows("list") {
                    return Err(ApiError::method_not_allowed("list"));
                }
                let list = registry.list(&res, ns, &list_query).await?;
                list_response(&res, &list, representation, &query)
            }
            (&Method::POST, None, None) => {
                let body = read_body(req).await?;
                if !res.allows("create") {
                    return Err(ApiError::method_not_allowed("create"));
                }
                if res.group == "authentication.k8s.io" && res.kind == "SelfSubjectReview" {
                    return Ok(json_response(
                        StatusCode::CREATED,
                        &json!({
                            "kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                            "metadata": {"creationTimestamp": null},
                            "status": {"userInfo": {"username": user.name, "uid": user.uid, "groups": user.groups}},
                        }),
                    ));
                }
                if res.group == "authorization.k8s.io" && res.kind == "SelfSubjectAccessReview" {
                    let mut review = body.value;
                    review["status"] = json!({"allowed": auth::authorize(user)});
                    return Ok(json_response(StatusCode::CREATED, &review));
                }
                if let Some(node) = user.node()
                    && res.group.is_empty()
                    && res.plural == "nodes"
                {
                    // NodeRestriction: a node registers itself only.
                    let name = body.value["metadata"]["name"].as_str().unwrap_or_default();
                    if name != node {
                        return Err(ApiError::forbidden(format!(
                            "nodes {name:?} is forbidden: node {node:?} may only create its own Node object"
                        )));
                    }
                }
                let warnings = body.check_duplicates(&write)?;
                let mut written = registry.create(&res, ns, body.value, &write).await?;
                written.warnings.extend(warnings);
                Ok(written_response(
                    StatusCode::CREATED,
                    &res,
                    written,
                    representation,
                ))
            }
            (&Method::DELETE, None, None) => {
                let body = read_optional_body(req).await?;
                let opts = delete_options(&query, body.as_ref())?;
                let list_query = list_query(&res, &query)?;
                let items = registry
                    .delete_collection(&res, ns, &list_query, &opts)
                    .await?;
                Ok(json_response(
                    StatusCode::OK,
                    &render_list(
                        &res,
                        items,
                        registry.store.current_revision(),
                        None,
                        Representation::Json,
                        &query,
                    ),
                ))
            }
            // One object.
            (&Method::GET, Some(name), None) => {
                let obj = registry.get(&res, ns, name).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &render_object(&res, obj, representation, &query),
                ))
            }
            (&Method::PUT, Some(name), sub @ (None | Some("status" | "finalize"))) => {
                let body = read_body(req).await?;
                let sub = if sub == Some("finalize") { None } else { sub };
                let warnings = body.check_duplicates(&write)?;
                let mut written = registry
                    .update(&res, ns, name, body.value, sub, &write)
                    .await?;
                written.warnings.extend(warnings);
                Ok(written_response(
                    StatusCode::OK,
                    &res,
                    written,
                    representation,
                ))
            }
            (&Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
                let (patch_type, body) = read_patch(req).await?;
                let written = registry
                    .patch(&res, ns, name, (patch_type, &body), sub, &write)
                    .await?;
                Ok(written_response(
                    StatusCode::OK,
                    &res,
                    written,
                    representation,
                ))
            }
            (&Method::DELETE, Some(name), None) => {
                let body = read_optional_body(req).await?;
                let opts = delete_options(&query, body.as_ref())?;
                let obj = registry.delete(&res, ns, name, &opts).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &render_object(&res, obj, representation, &query),
                ))
            }
            (&Method::GET, Some(name), Some("status")) => {
                let obj = registry.get(&res, ns, name).await?;
                Ok(json_response(StatusCode::OK, &obj))
            }
            (_, Some(name), Some("scale")) => self.scale(req, &res, ns, name, &write).await,
            (&Method::POST, Some(name), Some("binding")) => {
                let body = read_body(req).await?;
                registry
                    .bind(ns.unwrap_or_default(), name, &body.value)
                    .await?;
                Ok(status_response(
                    StatusCode::CREATED,
                    status::success_body(201),
                ))
            }
            (&Method::POST, Some(name), Some("eviction")) => {
                let body = read_body(req).await?;
                let opts = delete_options(&Query::new(), body.value.get("deleteOptions"))?;
                registry.delete(&res, ns, name, &opts).await?;
                Ok(status_response(
                    StatusCode::CREATED,
                    status::success_body(201),
                ))
            }
            (&Method::GET, Some(name), Some("log")) => {
                let pod = registry.get(&res, ns, name).await?;
                let node = pod
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if node.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "pod {name} does not have a host assigned"
                    )));
                }
                let query = req.uri().query().unwrap_or_default().to_owned();
                let container = pod_container(&pod, name, &query)?;
                let uid = pod
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.tunnels
                    .get(
                        node,
                        &format!(
                            "/containerLogs/{}/{name}/{container}?uid={uid}&{query}",
                            ns.unwrap_or_default()
                        ),
                    )
                    .await
            }
            (&Method::POST, Some(name), Some("token")) => {
                let body = read_body(req).await?;
                let sa = registry.get(&res, ns, name).await?;
                self.token_request(ns.unwrap_or_default(), name, &sa, body.value)
                    .await
            }
            (&Method::GET | &Method::POST, Some(name), Some(what @ ("exec" | "attach"))) => {
                let pod = registry.get(&res, ns, name).await?;
                let query = req.uri().query().unwrap_or_default().to_owned();
                let container = pod_container(&pod, name, &query)?;
                exec::serve(&self.tunnels, req, &pod, &container, what).await
            }
            (&Method::GET | &Method::POST, Some(name), Some("portforward")) => {
                let pod = registry.get(&res, ns, name).await?;
                portforward::serve(&self.tunnels, req, &pod).await
            }
            (_, Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward"))) => {
                let pod = registry.get(&res, ns, name).await?;
                let node = pod
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if node.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "pod {name} does not have a host assigned; {sub} needs a running pod"
                    )));
                }
                Err(ApiError::service_unavailable(format!(
                    "no connection to the node agent of node {node:?} (pod {name}): this server runs without agents (--disable-agent), so pods/{sub} cannot be served"
                )))
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        }
    }

    /// `…/scale` as an `autoscaling/v1` Scale.
    async fn scale(
        &self,
        req: Request<Incoming>,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        write: &WriteOptions,
    ) -> Result<Response<Body>, ApiError> {
        let registry = &self.registry;
        let method = req.method().clone();
        let obj = registry.get(res, ns, name).await?;
        let scale = scale_of(&obj);
        let wanted = match method {
            Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
            Method::PUT => read_body(req).await?.value,
            Method::PATCH => {
                let (patch_type, body) = read_patch(req).await?;
                match patch_type {
                    PatchType::Json => crate::api::patch::json_patch(&scale, &body),
                    PatchType::Merge | PatchType::Strategic => {
                        crate::api::patch::merge_patch(&scale, &body)
                    }
                    PatchType::Apply => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            "server-side apply is not supported yet",
                        ));
                    }
                }
                .map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            other => return Err(ApiError::method_not_allowed(other.as_str())),
        };
        let replicas = wanted
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    name,
                    vec![crate::api::status::FieldError::required("spec.replicas")],
                )
            })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![crate::api::status::FieldError::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut updated = obj.clone();
        updated["spec"]["replicas"] = json!(replicas);
        if let Some(rv) = wanted
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            updated["metadata"]["resourceVersion"] = json!(rv);
        }
        let written = registry.update(res, ns, name, updated, None, write).await?;
        Ok(json_response(StatusCode::OK, &scale_of(&written.object)))
    }
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_label_selector(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn written_response(
    code: StatusCode,
    res: &Resource,
    written: Written,
    representation: Representation,
) -> Response<Body> {
    let body = render_object(res, written.object, representation, &Query::new());
    with_warnings(json_response(code, &body), &written.warnings)
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// One Table row, carrying the object as `includeObject` says.
pub(crate) fn table_row(res: &Resource, obj: &Value, include: &str, now: jiff::Timestamp) -> Value {
    let mut row = json!({"cells": table::cells(&res.group, &res.kind, obj, now)});
    match include {
        "None" => {}
        "Object" => row["object"] = obj.clone(),
        _ => row["object"] = partial_metadata(obj),
    }
    row
}

/// A Table of rows made by [`table_row`].
pub(crate) fn table_of(
    res: &Resource,
    rows: Vec<Value>,
    revision: Option<Revision>,
    continue_token: Option<&str>,
) -> Value {
    let mut metadata = json!({});
    if let Some(rv) = revision {
        metadata["resourceVersion"] = json!(rv.0.to_string());
    }
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": table::column_definitions(&res.group, &res.kind),
        "rows": rows,
    })
}

/// A one-row Table for a single object.
pub(crate) fn table_of_object(res: &Resource, obj: &Value, include: &str) -> Value {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .map(Revision);
    table_of(
        res,
        vec![table_row(res, obj, include, jiff::Timestamp::now())],
        rv,
        None,
    )
}

fn render_object(
    res: &Resource,
    obj: Value,
    representation: Representation,
    query: &Query,
) -> Value {
    match representation {
        Representation::Table
            if obj.get("kind").and_then(Value::as_str) == Some(res.kind.as_str()) =>
        {
            table_of_object(res, &obj, q(query, "includeObject").unwrap_or("Metadata"))
        }
        Representation::PartialObjectMetadata => partial_metadata(&obj),
        _ => obj,
    }
}

/// A list response. Plain JSON is written straight from the stored bytes;
/// Tables and metadata-only lists decode one object at a time.
fn list_response(
    res: &Resource,
    list: &ListResult,
    representation: Representation,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    if representation == Representation::Table {
        let include = q(query, "includeObject").unwrap_or("Metadata");
        let now = jiff::Timestamp::now();
        let mut rows = Vec::with_capacity(list.items.len());
        for item in &list.items {
            rows.push(table_row(res, &item.decode()?, include, now));
        }
        let table = table_of(
            res,
            rows,
            Some(list.revision),
            list.continue_token.as_deref(),
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    if representation != Representation::Json {
        let items = list.decoded()?;
        return Ok(json_response(
            StatusCode::OK,
            &render_list(
                res,
                items,
                list.revision,
                list.continue_token.clone(),
                representation,
                query,
            ),
        ));
    }
    let total: usize = list.items.iter().map(|i| i.json.len() + 32).sum();
    let mut out = Vec::with_capacity(total + 256);
    out.extend_from_slice(b"{\"apiVersion\":");
    out.extend_from_slice(
        serde_json::to_string(&res.api_version())
            .expect("JSON")
            .as_bytes(),
    );
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"kind\":");
    out.extend_from_slice(
        serde_json::to_string(&format!("{}List", res.kind))
            .expect("JSON")
            .as_bytes(),
    );
    let mut metadata = json!({"resourceVersion": list.revision.0.to_string()});
    if let Some(c) = &list.continue_token {
        metadata["continue"] = json!(c);
    }
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&serde_json::to_vec(&metadata).expect("JSON"));
    out.push(b'}');
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::full(out))
        .expect("static response parts are valid"))
}

fn render_list(
    res: &Resource,
    items: Vec<Value>,
    revision: Revision,
    continue_token: Option<String>,
    representation: Representation,
    query: &Query,
) -> Value {
    match representation {
        Representation::Table => {
            let include = q(query, "includeObject").unwrap_or("Metadata");
            let now = jiff::Timestamp::now();
            let rows = items
                .iter()
                .map(|o| table_row(res, o, include, now))
                .collect();
            table_of(res, rows, Some(revision), continue_token.as_deref())
        }
        Representation::PartialObjectMetadata => {
            let items: Vec<Value> = items.iter().map(partial_metadata).collect();
            let mut metadata = json!({"resourceVersion": revision.0.to_string()});
            if let Some(c) = continue_token {
                metadata["continue"] = json!(c);
            }
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items})
        }
        _ => {
            let mut metadata = json!({"resourceVersion": revision.0.to_string()});
            if let Some(c) = continue_token {
                metadata["continue"] = json!(c);
            }
            json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": metadata, "items": items})
        }
    }
}

fn write_options(query: &Query) -> Result<WriteOptions, ApiError> {
    let dry_run = match q(query, "dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported dry run value {other:?}; the only supported value is All"
            )));
        }
    };
    let field_validation = match q(query, "fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            )));
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation,
    })
}

fn list_query(res: &Resource, query: &Query) -> Result<ListQuery, ApiError> {
    let labels = LabelSelector::parse(q(query, "labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q(query, "fieldSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let allowed = selectable_fields(&res.group, &res.plural);
    for t in &fields.terms {
        if t.field != "metadata.name"
            && t.field != "metadata.namespace"
            && !allowed.contains(&t.field.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {}",
                t.field
            )));
        }
    }
    let limit = match q(query, "limit") {
        None | Some("") => None,
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?
                .max(0) as usize,
        ),
    }
    .filter(|l| *l > 0);
    let rv = q(query, "resourceVersion").filter(|s| !s.is_empty());
    let exact = match (rv, q(query, "resourceVersionMatch")) {
        (Some(rv), Some("Exact")) => Some(parse_revision(rv)?),
        (Some(rv), None) if limit.is_some() && rv != "0" => Some(parse_revision(rv)?),
        // A watch with sendInitialEvents names NotOlderThan without a version.
        (None, Some("NotOlderThan")) if q(query, "sendInitialEvents") == Some("true") => None,
        (None, Some(m)) if !m.is_empty() => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        (_, Some("Exact" | "NotOlderThan") | None) => None,
        (_, Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: unsupported value {other:?}; use Exact or NotOlderThan"
            )));
        }
    };
    Ok(ListQuery {
        labels,
        fields,
        limit,
        continue_token: q(query, "continue")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        exact_revision: exact,
    })
}

fn parse_revision(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<u64>().map(Revision).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version {rv:?}: must be a non-negative integer"
        ))
    })
}

fn delete_options(query: &Query, body: Option<&Value>) -> Result<DeleteOptions, ApiError> {
    let from_body = |k: &str| body.and_then(|b| b.get(k)).cloned();
    let grace = match q(query, "gracePeriodSeconds") {
        Some(g) => Some(g.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
        })?),
        None => from_body("gracePeriodSeconds").and_then(|v| v.as_i64()),
    };
    let policy = q(query, "propagationPolicy")
        .map(str::to_owned)
        .or_else(|| from_body("propagationPolicy").and_then(|v| v.as_str().map(str::to_owned)))
        .or_else(
            || match from_body("orphanDependents").and_then(|v| v.as_bool()) {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            },
        );
    let dry_run = q(query, "dryRun") == Some("All")
        || from_body("dryRun")
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|a| a.contains(&json!("All")));
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy: policy,
        precondition_uid: body
            .and_then(|b| b.pointer("/preconditions/uid"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_resource_version: body
            .and_then(|b| b.pointer("/preconditions/resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run,
    })
}

struct Parsed {
    value: Value,
    /// Fields that appear twice in a JSON body (YAML and protobuf bodies
    /// cannot carry duplicates past their parsers).
    duplicates: Vec<String>,
}

impl Parsed {
    /// Apply `fieldValidation` to duplicate fields: an error when Strict,
    /// warnings when Warn.
    fn check_duplicates(&self, write: &WriteOptions) -> Result<Vec<String>, ApiError> {
        if self.duplicates.is_empty() || write.field_validation == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let msgs: Vec<String> = self
            .duplicates
            .iter()
            .map(|f| format!("duplicate field {f:?}"))
            .collect();
        if write.field_validation == FieldValidation::Strict {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                msgs.join(", ")
            )));
        }
        Ok(msgs)
    }
}

async fn read_bytes(req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    // Read up to MAX_BODY; past it, keep draining (up to a bound) so the
    // client gets the 413 instead of a reset stream.
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if seen > MAX_DRAIN {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    let bytes = buf.freeze();
    Ok((content_type, bytes))
}

fn parse_document(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if crate::api::proto::is_protobuf(content_type) {
        return crate::api::proto::decode(bytes)
            .map_err(|e| ApiError::bad_request(format!("cannot decode the protobuf body: {e}")));
    }
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            serde_yaml_ng::from_slice::<Value>(bytes).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
            })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Parsed, ApiError> {
    let (ct, bytes) = read_bytes(req).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send the object as JSON or YAML",
        ));
    }
    let value = parse_document(&ct, &bytes)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    let is_json = matches!(
        ct.split(';').next().unwrap_or_default().trim(),
        "application/json" | "" | "*/*"
    );
    let duplicates = if is_json {
        crate::api::duplicates::duplicate_fields(&bytes).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Parsed { value, duplicates })
}

async fn read_optional_body(req: Request<Incoming>) -> Result<Option<Value>, ApiError> {
    let (ct, bytes) = read_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_document(&ct, &bytes).map(Some)
}

async fn read_patch(req: Request<Incoming>) -> Result<(PatchType, Value), ApiError> {
    let (ct, bytes) = read_bytes(req).await?;
    let patch_type = PatchType::from_content_type(&ct).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
        )
    })?;
    let value = if patch_type == PatchType::Apply {
        serde_yaml_ng::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid YAML: {e}")))?
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?
    };
    Ok((patch_type, value))
}

impl ApiServer {
    /// `serviceaccounts/<name>/token`: a signed token for `sa`, for the
    /// audiences and lifetime asked (1 h by default, at least 10 min),
    /// bound to a pod when `boundObjectRef` names one that exists.
    async fn token_request(
        &self,
        ns: &str,
        name: &str,
        sa: &Value,
        request: Value,
    ) -> Result<Response<Body>, ApiError> {
        let spec = &request["spec"];
        let seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        if seconds < 600 {
            return Err(ApiError::invalid(
                "authentication.k8s.io",
                "TokenRequest",
                name,
                vec![crate::api::status::FieldError::invalid(
                    "spec.expirationSeconds",
                    &json!(seconds),
                    "may not specify a duration less than 10 minutes",
                )],
            ));
        }
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .filter(|a: &Vec<String>| !a.is_empty())
            .unwrap_or_else(|| vec![crate::server::auth::serviceaccount::ISSUER.to_owned()]);
        let bound = &spec["boundObjectRef"];
        let pod = match bound["kind"].as_str() {
            None => None,
            Some("Pod") => {
                let pod_name = bound["name"].as_str().unwrap_or_default();
                let pod_res = self
                    .registry
                    .catalog
                    .find("", "v1", "pods")
                    .cloned()
                    .ok_or_else(ApiError::not_found_path)?;
                let p = self.registry.get(&pod_res, Some(ns), pod_name).await?;
                let uid = p
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some(want) = bound["uid"].as_str()
                    && want != uid
                {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
                        ),
                    ));
                }
                Some((pod_name.to_owned(), uid))
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind a token to a {other}; only Pods are supported"
                )));
            }
        };
        let sa_uid = sa
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (token, expires) = self
            .service_accounts
            .issue(
                ns,
                name,
                sa_uid,
                &audiences,
                seconds,
                pod.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut spec_out = json!({"audiences": audiences, "expirationSeconds": seconds});
        if !bound.is_null() {
            spec_out["boundObjectRef"] = bound.clone();
        }
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "metadata": {"name": name, "namespace": ns,
                              "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
                "spec": spec_out,
                "status": {"token": token,
                           "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
            }),
        ))
    }
}

/// The container `?container=` names (any of the pod's), or its only
/// regular container.
///
/// # Errors
/// 400 naming the choices, like upstream.
fn pod_container(pod: &Value, name: &str, query: &str) -> Result<String, ApiError> {
    let asked = request::parse_query(Some(query))
        .remove("container")
        .and_then(|v| v.into_iter().next());
    let names: Vec<String> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let regular: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked {
        Some(c) if names.contains(&c) => Ok(c),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if regular.len() == 1 => Ok(regular[0].to_owned()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            regular.join(" ")
        ))),
    }
}
