//! Events about objects (what `kubectl describe` shows), recorded for the
//! controllers and the scheduler alike: a repeat of the same occurrence
//! is aggregated into one Event's `count`, as upstream's EventCorrelator
//! does. Best effort: a failed write is logged, never returned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::api::meta::meta_str;
use crate::server::registry::{Registry, WriteOptions};

/// What makes two events the same occurrence (upstream's EventCorrelator
/// aggregates on the same fields).
type EventKey = (String, &'static str, String, String, &'static str);

/// Most distinct events remembered for aggregation.
const EVENT_CACHE: usize = 4096;

/// Records Events through the registry, remembering recent ones to
/// aggregate their repeats.
pub struct Recorder {
    registry: Arc<Registry>,
    cache: Arc<Mutex<HashMap<EventKey, (String, u64)>>>,
}

impl Recorder {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            cache: Arc::default(),
        }
    }

    /// Record an Event about `obj` (what `kubectl describe` shows). A repeat of
    /// an event already recorded (same object, type, reason, message and
    /// component) bumps its `count` and `lastTimestamp` instead of adding a new
    /// object. Failures are logged, never returned: events are best effort.
    pub fn record(
        &self,
        obj: &Value,
        kind: &'static str,
        reason: &str,
        message: String,
        component: &'static str,
    ) {
        let registry = self.registry.clone();
        let ns = match meta_str(obj, "namespace") {
            "" => "default".to_owned(),
            ns => ns.to_owned(),
        };
        let now = jiff::Timestamp::now();
        let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let key: EventKey = (
            meta_str(obj, "uid").to_owned(),
            kind,
            reason.to_owned(),
            message.clone(),
            component,
        );
        let (name, count) = {
            let mut cache = self.cache.lock().expect("event cache lock");
            if cache.len() >= EVENT_CACHE && !cache.contains_key(&key) {
                cache.clear();
            }
            let entry = cache.entry(key.clone()).or_insert_with(|| {
                (
                    format!("{}.{:x}", meta_str(obj, "name"), now.as_nanosecond()),
                    0,
                )
            });
            entry.1 += 1;
            entry.clone()
        };
        let cache = self.cache.clone();
        let event = json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"], "uid": obj["metadata"]["uid"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": "",
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        });
        tokio::spawn(async move {
            let res = registry
                .resource("", "events")
                .expect("events are in the catalog")
                .clone();
            if count > 1 {
                // Repeats race each other: write the newest count, and again
                // if it grew meanwhile, so the stored count never goes back.
                let mut written = 0;
                loop {
                    let latest = cache
                        .lock()
                        .expect("event cache lock")
                        .get(&key)
                        .map_or(count, |e| e.1);
                    if latest <= written {
                        return;
                    }
                    let patch = json!({"count": latest, "lastTimestamp": ts});
                    match registry
                        .patch(
                            &res,
                            Some(&ns),
                            &name,
                            (crate::api::patch::PatchType::Merge, &patch),
                            None,
                            &WriteOptions::default(),
                        )
                        .await
                    {
                        Ok(_) => written = latest,
                        // Expired (or its create is still in flight): record anew.
                        Err(err) if err.code == 404 => break,
                        Err(err) => {
                            tracing::debug!(%err, "could not update an event");
                            return;
                        }
                    }
                }
            }
            if let Err(err) = registry
                .create(&res, Some(&ns), event, &WriteOptions::default())
                .await
            {
                tracing::debug!(%err, "could not record an event");
            }
        });
    }
}
