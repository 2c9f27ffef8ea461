//! Watch streams: `?watch=true` answered as newline-delimited
//! `{"type":…,"object":…}` events, from the store's watch, with
//! resourceVersion semantics (unset/"0": initial ADDED events first; N:
//! changes after N; compacted: one ERROR event with 410 Expired),
//! selector-aware event types, bookmarks and `timeoutSeconds`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::{Body, MeteredSender, metered};
use super::request::Representation;
use super::{Query, q, table_of_object};
use crate::api::catalog::Resource;
use crate::api::status::ApiError;
use crate::server::registry::{ListQuery, Registry};
use crate::store::{self, EventKind, Revision};

/// Upstream's default when the client sets no timeout (min-request-timeout).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Encoded events queued for one client and not yet taken by hyper. With
/// the store's per-watcher bound (`watch_buffer_bytes`) and hyper's own
/// buffers, this is what a watcher that stopped reading can pin.
const STREAM_BUDGET: usize = 2 * 1024 * 1024;
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

pub struct Params {
    list: ListQuery,
    /// `None`: send the current state first.
    start: Option<Revision>,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Duration,
    include_object: String,
}

impl Params {
    pub fn parse(query: &Query, list: ListQuery) -> Result<Self, ApiError> {
        let send_initial = q(query, "sendInitialEvents") == Some("true");
        let start = match q(query, "resourceVersion") {
            None | Some("" | "0") => None,
            Some(_) if send_initial => None,
            Some(rv) => Some(super::request::parse_revision(rv)?),
        };
        let timeout = match q(query, "timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}"))
            })?),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Self {
            list: ListQuery {
                limit: None,
                continue_token: None,
                exact_revision: None,
                ..list
            },
            start,
            bookmarks: matches!(q(query, "allowWatchBookmarks"), Some("true" | "1")),
            initial_events_end: send_initial,
            timeout,
            include_object: q(query, "includeObject").unwrap_or("Metadata").to_owned(),
        })
    }
}

/// Start streaming; the response is returned at once and events follow.
pub fn start(
    registry: Arc<Registry>,
    res: Resource,
    namespace: Option<String>,
    params: Params,
    representation: Representation,
) -> Response<Body> {
    let (tx, body) = metered(STREAM_BUDGET);
    tokio::spawn(async move {
        let stream = Stream {
            tx,
            res,
            representation,
            include_object: params.include_object.clone(),
            cutoff: OnceLock::new(),
        };
        let _ = tokio::time::timeout(
            params.timeout,
            stream.run(&registry, namespace.as_deref(), &params),
        )
        .await;
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static response parts are valid")
}

struct Stream {
    tx: MeteredSender,
    res: Resource,
    representation: Representation,
    include_object: String,
    /// Once watching: resolves when the store cut the watcher off for
    /// falling behind, which ends a send blocked on a client that stopped
    /// reading (the client sees its watch end, as upstream's watch cache
    /// closes unresponsive watchers).
    cutoff: OnceLock<store::Cutoff>,
}

/// The client went away.
struct Gone;

impl Stream {
    async fn send(&self, kind: &str, mut object: Value) -> Result<(), Gone> {
        if kind != "BOOKMARK" && kind != "ERROR" {
            crate::server::registry::served_version(&self.res, &mut object);
        }
        let object = match (self.representation, kind) {
            (Representation::Table, "ADDED" | "MODIFIED" | "DELETED") => {
                table_of_object(&self.res, &object, &self.include_object)
            }
            (Representation::PartialObjectMetadata, "ADDED" | "MODIFIED" | "DELETED") => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
            }
            _ => object,
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON");
        line.push(b'\n');
        self.write(Bytes::from(line)).await
    }

    /// Queue `line` for the client, unless the watcher is cut off first.
    async fn write(&self, line: Bytes) -> Result<(), Gone> {
        let sent = self.tx.send(line);
        match self.cutoff.get() {
            Some(cutoff) => tokio::select! {
                sent = sent => sent.map_err(|_| Gone),
                () = cutoff.wait() => {
                    tracing::debug!(resource = %self.res.plural, "watch cut off: the client fell behind");
                    // The store just dropped the watcher's queue.
                    crate::memory::release_soon();
                    Err(Gone)
                }
            },
            None => sent.await.map_err(|_| Gone),
        }
    }

    /// An ERROR event; its Status keeps upstream's field order.
    async fn send_error(&self, err: &ApiError) -> Result<(), Gone> {
        let mut line = br#"{"type":"ERROR","object":"#.to_vec();
        let mut body = err.to_body();
        body.pop(); // the Status's own trailing newline
        line.extend(body);
        line.extend(b"}\n");
        self.write(Bytes::from(line)).await
    }

    async fn bookmark(&self, rv: Revision, initial_end: bool) -> Result<(), Gone> {
        let mut meta = json!({"resourceVersion": rv.0.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(
            "BOOKMARK",
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta}),
        )
        .await
    }

    async fn run(
        &self,
        registry: &Registry,
        namespace: Option<&str>,
        params: &Params,
    ) -> Result<(), Gone> {
        let matches =
            |obj: &Value| params.list.labels.matches_object(obj) && params.list.fields.matches(obj);
        let everything = params.list.labels.is_empty() && params.list.fields.is_empty();
        let from = match params.start {
            Some(rv) => rv,
            None => match registry.list(&self.res, namespace, &params.list).await {
                Ok(list) => {
                    for item in &list.items {
                        match item.decode() {
                            Ok(obj) => self.send("ADDED", obj).await?,
                            Err(err) => return self.send_error(&err).await,
                        }
                    }
                    if params.initial_events_end {
                        self.bookmark(list.revision, true).await?;
                    }
                    list.revision
                }
                Err(err) => return self.send_error(&err).await,
            },
        };
        let mut prefix = self.res.list_prefix(namespace);
        if self.res.namespaced
            && namespace.is_none()
            && let Some(ns) = params.list.fields.required("metadata.namespace")
        {
            prefix = self.res.list_prefix(Some(ns));
        }
        let mut watcher = match registry.store.watch(&prefix, from).await {
            Ok(w) => w,
            Err(store::Error::Compacted {
                requested,
                compacted,
            }) => {
                let err = ApiError::expired(format!(
                    "too old resource version: {requested} ({compacted})"
                ));
                return self.send_error(&err).await;
            }
            Err(err) => {
                return self.send_error(&ApiError::internal(err.to_string())).await;
            }
        };
        let _ = self.cutoff.set(watcher.cutoff());
        let mut bookmark_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            tokio::select! {
                event = watcher.next() => {
                    let Some(event) = event else { return Ok(()) };
                    let event = match event {
                        Ok(e) => e,
                        // Lagged or compacted mid-stream: end the stream; the
                        // client re-watches from the last version it saw.
                        Err(err) => {
                            tracing::debug!(%err, "watch ended");
                            return Ok(());
                        }
                    };
                    let decode = |kv: &store::KeyValue, rv: Revision| -> Option<Value> {
                        let mut obj: Value = serde_json::from_slice(&kv.value).ok()?;
                        obj["metadata"]["resourceVersion"] = json!(rv.0.to_string());
                        Some(obj)
                    };
                    let rev = event.revision();
                    // The previous state is decoded only when a selector must
                    // be tried on it (or it is what a DELETED carries).
                    let old_matches = || {
                        event.prev.as_ref().is_some_and(|prev| {
                            everything || decode(prev, rev).is_some_and(|old| matches(&old))
                        })
                    };
                    match event.kind {
                        EventKind::Put => {
                            let Some(obj) = decode(&event.kv, rev) else { continue };
                            match (matches(&obj), old_matches()) {
                                (true, true) => self.send("MODIFIED", obj).await?,
                                (true, false) => self.send("ADDED", obj).await?,
                                // Left the selection: DELETED, with the new state.
                                (false, true) => self.send("DELETED", obj).await?,
                                (false, false) => {}
                            }
                        }
                        EventKind::Delete => {
                            if let Some(old) = event.prev.as_ref().and_then(|p| decode(p, rev))
                                && matches(&old)
                            {
                                self.send("DELETED", old).await?;
                            }
                        }
                    }
                }
                _ = bookmark_timer.tick(), if params.bookmarks => {
                    self.bookmark(watcher.resume_revision(), false).await?;
                }
                _ = self.tx.closed() => return Err(Gone),
            }
        }
    }
}
