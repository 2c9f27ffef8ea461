//! The HTTP face of the API server: TLS (h2 and HTTP/1.1 on one port) and
//! the request pipeline. [`ApiServer::handle`] is the one entry point; a
//! request passes through its stages in order:
//!
//! 1. route ([`route`]): what it asks for (upstream's `RequestInfo`);
//! 2. authenticate ([`crate::server::auth::authn`]): who asks;
//! 3. authorize ([`crate::server::auth::authz`]): may they;
//! 4. dispatch to a handler: [`collection`] (list, watch, create, delete
//!    a collection), [`object`] (get, update, patch, delete) or
//!    [`subresource`], which read the body and hand it to the registry
//!    ([`crate::server::registry`]) with the user in its write options;
//! 5. in the registry, a write is decoded and defaulted, passes the
//!    mutating admission plugins ([`crate::server::admission`]), the
//!    kind's strategy prepares and validates it, the validating admission
//!    plugins see it, and it is stored. Controllers and the scheduler
//!    write through the registry too, so their writes are admitted the
//!    same way.
//!
//! Failures become a `metav1.Status` ([`response::error_response`]).

#![forbid(unsafe_code)]

mod body;
mod collection;
mod connection;
mod discovery;
mod exec;
mod nodes;
mod object;
mod openapi;
mod portforward;
mod request;
mod response;
mod review;
pub mod route;
mod subresource;
pub mod tunnel;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::catalog::Resource;
use crate::api::status::ApiError;
use crate::server::auth::authn::{self, Credentials};
use crate::server::auth::authz::{self, Decision};
use crate::server::auth::{self, User};
use crate::server::registry::{DeleteOptions, Registry, WriteOptions};
use crate::store::Revision;

pub use body::{Body, RequestBody};
pub use connection::Limits;
use connection::Peer;
pub use request::MAX_BODY;
use request::Representation;
pub(crate) use response::table_of_object;
use response::{error_response, json_response};
use route::{RequestInfo, ResourcePath, TUNNEL_PATH, Target};

/// What the handlers share.
pub struct ApiServer {
    pub registry: Arc<Registry>,
    /// `host:port` clients reach the server at (for `/api`).
    pub server_address: String,
    pub git_commit: &'static str,
    /// Served unauthenticated at `/cacerts`: agents check it against the
    /// hash in their join token before trusting it.
    pub ca_pem: String,
    /// Connections node agents opened, for their kubelet APIs.
    pub tunnels: Arc<tunnel::Tunnels>,
    /// Signs service account tokens (`serviceaccounts/<name>/token`).
    pub service_accounts: Arc<auth::serviceaccount::Signer>,
    /// The API's own audiences: what a TokenRequest that names none gets.
    pub api_audiences: auth::serviceaccount::Audiences,
    /// The cluster CA, for nodes' client certificates.
    pub pki: Arc<auth::Pki>,
    /// Checks a connection's client certificate, once per connection.
    pub x509: Arc<authn::x509::X509>,
    /// Who a request comes from.
    pub authenticators: authn::Chain,
    /// Whether a request without credentials is `system:anonymous` (else
    /// a 401).
    pub anonymous_auth: bool,
    /// Whether they may make it.
    pub authorizers: Arc<authz::Chain>,
}

type Query = std::collections::HashMap<String, Vec<String>>;

/// How long a get or list waits for a resourceVersion the store has not
/// reached (upstream's watch cache blocks 3 s).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

use crate::api::query::first as q;

/// Serve the API on `listener` until the returned future is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<ApiServer>,
    limits: Limits,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let unauthenticated = connection::Unauthenticated::new(limits.max_unauthenticated);
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, addr) = match listener.accept().await {
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
        // Counted at once, so a flood closes its own oldest connections
        // before any handshake work.
        let pending = unauthenticated.admit();
        connections.spawn(connection::serve(
            tcp,
            addr,
            acceptor.clone(),
            api.clone(),
            limits.clone(),
            pending,
        ));
    }
}

impl ApiServer {
    /// One request through the pipeline: route → authenticate → authorize
    /// → dispatch to a handler → (for writes) the registry, whose write
    /// path runs admission.
    async fn handle(self: Arc<Self>, req: Request<RequestBody>, peer: &Peer) -> Response<Body> {
        // What agents fetch before they hold any credential (k3s's).
        if req.uri().path() == "/cacerts" {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::full(self.ca_pem.clone()))
                .expect("static response parts are valid");
        }
        let info = route::parse(req.method(), req.uri(), &self.registry.catalog());
        let credentials = Credentials::new(&peer.certificate, req.headers());
        let user = match self.authenticators.authenticate(&credentials).await {
            Ok(user) => {
                peer.authenticated();
                user
            }
            // Upstream's anonymous authenticator: only for requests that
            // present nothing (a bad credential is still a 401). The
            // connection stays counted as unauthenticated.
            Err(authn::Error::NoCredentials) if self.anonymous_auth => User::anonymous(),
            Err(err) => {
                tracing::debug!(path = %info.path, %err, "not authenticated");
                return error_response(&ApiError::unauthorized());
            }
        };
        // Acting as someone else (kubectl --as): allowed per thing asked.
        let user = if auth::impersonation::requested(req.headers()) {
            match auth::impersonation::impersonate(&self.authorizers, &user, req.headers()).await {
                Ok(Some(as_user)) => as_user,
                Ok(None) => user,
                Err(err) => return error_response(&err),
            }
        } else {
            user
        };
        let span = tracing::debug_span!("request", method = %req.method(), path = %info.path, user = %user.name);
        async move {
            let attrs = info.attributes(&user);
            match self.authorizers.authorize(&attrs).await {
                Decision::Allow(_) => {}
                Decision::Deny(reason) | Decision::NoOpinion(reason) => {
                    return error_response(&authz::forbidden(&attrs, &reason));
                }
            }
            if let Some(resp) = self.health_or_version(&info.path) {
                return resp;
            }
            match self.dispatch(req, &info, &user).await {
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

    /// The health endpoints and `/version` (which RBAC lets everyone,
    /// anonymous users included, read through system:public-info-viewer).
    fn health_or_version(&self, path: &str) -> Option<Response<Body>> {
        let text = |body: Body| {
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(body)
                .expect("static response parts are valid")
        };
        let health = ["/healthz", "/livez", "/readyz"]
            .iter()
            .any(|h| path == *h || path.strip_prefix(h).is_some_and(|r| r.starts_with('/')));
        match path {
            "/version" => Some(json_response(StatusCode::OK, &self.version())),
            _ if health => Some(text(Body::full("ok"))),
            _ => None,
        }
    }

    /// Hand an authorized request to its handler.
    async fn dispatch(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        info: &RequestInfo,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match &info.target {
            // Only the node itself gets here (authorized above).
            Target::NonResource if info.path == TUNNEL_PATH => Ok(self.tunnels.accept(req)),
            Target::NonResource if info.path == "/openapi/v2" => {
                openapi::v2::respond(&self.registry.catalog(), req.headers()).await
            }
            Target::NonResource => self.openapi(&info.path),
            Target::Discovery {
                legacy,
                group,
                version,
            } => {
                if req.method() != Method::GET {
                    return Err(ApiError::method_not_allowed(req.method().as_str()));
                }
                self.discovery(
                    *legacy,
                    group.as_deref(),
                    version.as_deref(),
                    accept.as_deref(),
                )
            }
            Target::Resource(rp) => {
                let call = self.resource_call(&req, info, rp, accept.as_deref(), user)?;
                if req.method() == Method::GET
                    && let Some(rv) = request::not_older_than(&info.verb, &info.query)?
                {
                    self.wait_for_revision(rv).await?;
                }
                // A deprecated custom resource version says so on every
                // answer, as upstream does.
                let deprecation = call.res.custom.as_ref().and_then(|c| c.deprecation.clone());
                let served = match (&rp.name, &rp.subresource) {
                    (None, _) => collection::serve(&call, req).await,
                    (Some(name), None) => object::serve(&call, req, name).await,
                    (Some(name), Some(sub)) => subresource::serve(&call, req, name, sub).await,
                };
                match deprecation {
                    Some(warning) => served.map(|r| response::with_warnings(r, &[warning])),
                    None => served,
                }
            }
        }
    }

    /// Wait (up to [`FRESHNESS_WAIT`]) until the store has reached `rv`,
    /// as upstream's watch cache waits before serving a get or list that
    /// must not be older than it.
    ///
    /// # Errors
    /// 504 Timeout (`Too large resource version`) when it has not.
    async fn wait_for_revision(&self, rv: Revision) -> Result<(), ApiError> {
        let store = &self.registry.store;
        let current = store.current_revision();
        if current >= rv {
            return Ok(());
        }
        // Every change after `current` comes through this watcher, so none
        // is missed between the check and the wait.
        let reached = async {
            let mut changes = store.watch("", current).await.ok()?;
            while let Some(Ok(event)) = changes.next().await {
                if event.revision() >= rv {
                    return Some(());
                }
            }
            None
        };
        if let Ok(Some(())) = tokio::time::timeout(FRESHNESS_WAIT, reached).await {
            return Ok(());
        }
        let current = store.current_revision();
        if current >= rv {
            return Ok(());
        }
        Err(ApiError::too_large_resource_version(rv.0, current.0))
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

    /// `/openapi/v3` and its group-versions; any other path names nothing.
    fn openapi(&self, path: &str) -> Result<Response<Body>, ApiError> {
        let Some(rest) = path.strip_prefix("/openapi/v3") else {
            return Err(ApiError::not_found_path());
        };
        let catalog = &self.registry.catalog();
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
        doc.map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(ApiError::not_found_path)
    }

    fn discovery(
        &self,
        legacy: bool,
        group: Option<&str>,
        version: Option<&str>,
        accept: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let catalog = &self.registry.catalog();
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

    /// The resource a path names, checked against its scope and
    /// subresources, with the representation and write options asked.
    fn resource_call<'a>(
        self: &'a Arc<Self>,
        req: &Request<RequestBody>,
        info: &'a RequestInfo,
        rp: &'a ResourcePath,
        accept: Option<&str>,
        user: &'a User,
    ) -> Result<Call<'a>, ApiError> {
        let res = self
            .registry
            .catalog()
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
        if let Some(custom) = &res.custom
            && custom.conversion_webhook
            && custom.storage_version != res.version
        {
            return Err(ApiError::internal_occurred(&format!(
                "conversion webhook for {}/{}, Kind={} failed: this server does not call conversion webhooks yet; use version {} (the storage version), or conversion strategy None",
                res.group, res.version, res.kind, custom.storage_version
            )));
        }
        let representation = request::negotiate(accept)
            .ok_or_else(|| ApiError::not_acceptable(accept.unwrap_or_default()))?;
        let write = WriteOptions {
            user: Some(user.clone()),
            ..request::write_options(&info.query)?
        };
        let write = request::field_manager_options(req, &info.query, write)?;
        // Reads take no resourceVersion that does not parse (upstream
        // answers those 500; the store would otherwise ignore them).
        if req.method() == Method::GET {
            request::read_revision(&info.query)?;
        }
        // A legacy `/watch/` path is a watch whatever the method says.
        if info.verb == "watch" && req.method() != Method::GET {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        Ok(Call {
            api: self,
            res,
            rp,
            info,
            representation,
            write,
            user,
        })
    }
}

/// A resource request on its way to a handler: the resource, what the
/// route, `Accept` header and query said, and who asks.
struct Call<'a> {
    api: &'a Arc<ApiServer>,
    res: Resource,
    rp: &'a ResourcePath,
    info: &'a RequestInfo,
    representation: Representation,
    write: WriteOptions,
    user: &'a User,
}

impl Call<'_> {
    fn ns(&self) -> Option<&str> {
        self.rp.namespace.as_deref()
    }

    fn query(&self) -> &Query {
        &self.info.query
    }

    fn registry(&self) -> &Arc<Registry> {
        &self.api.registry
    }

    /// A delete's options from `query` and `body`, with who deletes (for
    /// admission).
    fn delete_options(
        &self,
        query: &Query,
        body: Option<&Value>,
    ) -> Result<DeleteOptions, ApiError> {
        Ok(DeleteOptions {
            user: Some(self.user.clone()),
            ..request::delete_options(query, body)?
        })
    }
}
