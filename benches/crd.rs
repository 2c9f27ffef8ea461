//! CustomResourceDefinitions and server-side apply: prints the figures
//! issue #23 names.
//!
//! - custom object creates at 200 requests/s, with a schema of ~50 fields
//!   and 5 CEL rules: p50/p99 (target p99 < 20 ms)
//! - server-side apply patches of a Deployment by two managers: p50/p99
//!   (target p99 < 20 ms), without and with a rollout behind every other
//!   patch
//! - how long a new CRD takes to appear in discovery (target < 1 s)
//! - server RSS with 50 CRDs installed and 10,000 custom objects
//!
//! Run with `cargo bench --bench crd`. It starts the real `orch server`
//! (bench profile) on a free loopback port and talks to it with kube-rs
//! over HTTPS.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use support::{client, machine, ms, pct, rss_kib, start_server};
use tokio::sync::Mutex;

/// A definition of `kind` in group `bench.example.com`, its spec ~50
/// fields (with `rules` CEL rules on the spec).
fn definition(plural: &str, kind: &str, rules: bool) -> Value {
    let mut props = serde_json::Map::new();
    for i in 0..20 {
        props.insert(
            format!("text{i}"),
            json!({"type": "string", "maxLength": 64}),
        );
        props.insert(
            format!("count{i}"),
            json!({"type": "integer", "minimum": 0, "maximum": 100000}),
        );
    }
    props.insert("replicas".into(), json!({"type": "integer", "default": 1}));
    props.insert("minReplicas".into(), json!({"type": "integer"}));
    props.insert("maxReplicas".into(), json!({"type": "integer"}));
    props.insert(
        "mode".into(),
        json!({"type": "string", "enum": ["fast", "safe"]}),
    );
    props.insert(
        "tags".into(),
        json!({"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 32}}),
    );
    props.insert(
        "labels".into(),
        json!({"type": "object", "maxProperties": 10, "additionalProperties": {"type": "string", "maxLength": 63}}),
    );
    props.insert(
        "ports".into(),
        json!({"type": "array", "maxItems": 8, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
               "items": {"type": "object", "required": ["name"], "properties": {
                   "name": {"type": "string", "maxLength": 15}, "port": {"type": "integer"}}}}),
    );
    let mut spec = json!({"type": "object", "properties": props});
    if rules {
        spec["x-kubernetes-validations"] = json!([
            {"rule": "self.minReplicas <= self.replicas", "message": "replicas below minReplicas"},
            {"rule": "self.replicas <= self.maxReplicas", "message": "replicas above maxReplicas"},
            {"rule": "self.tags.all(t, t.matches('^[a-z0-9-]+$'))", "message": "tags are lowercase"},
            {"rule": "self.ports.all(p, p.port > 0 && p.port < 65536)", "message": "ports are ports"},
            {"rule": "!has(self.mode) || self.mode != 'safe' || self.replicas >= 2", "message": "safe mode needs two replicas"},
        ]);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.bench.example.com")},
        "spec": {
            "group": "bench.example.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec,
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}],
        },
    })
}

fn object(name: &str) -> Value {
    let mut spec = serde_json::Map::new();
    for i in 0..20 {
        spec.insert(format!("text{i}"), json!(format!("value-{i}")));
        spec.insert(format!("count{i}"), json!(i * 7));
    }
    spec.insert("replicas".into(), json!(3));
    spec.insert("minReplicas".into(), json!(1));
    spec.insert("maxReplicas".into(), json!(5));
    spec.insert("mode".into(), json!("safe"));
    spec.insert("tags".into(), json!(["edge", "web", "tier-1"]));
    spec.insert("labels".into(), json!({"team": "a", "env": "prod"}));
    spec.insert(
        "ports".into(),
        json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]),
    );
    json!({"apiVersion": "bench.example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})
}

async fn install(client: &Client, crd: &Value) -> Instant {
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let obj: DynamicObject = serde_json::from_value(crd.clone()).expect("crd");
    let t = Instant::now();
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create CRD");
    t
}

/// Wait until `plural` is in the group version's discovery document.
async fn discovered(client: &Client, plural: &str) {
    loop {
        let req = http::Request::get("/apis/bench.example.com/v1")
            .body(Vec::new())
            .expect("request");
        if let Ok(doc) = client.request::<Value>(req).await
            && doc["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["name"] == plural))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Creates at `rate`/s for `seconds` from `clients`.
async fn paced_creates(
    clients: &[Client],
    res: &ApiResource,
    rate: f64,
    seconds: u64,
) -> Vec<Duration> {
    let results: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let interval = Duration::from_secs_f64(clients.len() as f64 / rate);
    // Each client ticks at `interval`, phase-shifted so the clients together
    // send one request every `1 / rate` s, not all of them at once.
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", res);
        let results = results.clone();
        let phase = interval.mul_f64(c as f64 / clients.len() as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(start + phase, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut mine = Vec::new();
            let mut n = 0;
            while Instant::now() < end {
                ticker.tick().await;
                let obj: DynamicObject =
                    serde_json::from_value(object(&format!("w-{c}-{n}"))).expect("object");
                let t = Instant::now();
                api.create(&PostParams::default(), &obj)
                    .await
                    .expect("create");
                mine.push(t.elapsed());
                n += 1;
            }
            results.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.expect("creator");
    }
    let mut out = results.lock().await.clone();
    out.sort_unstable();
    out
}

/// Server-side apply patches of one Deployment, alternating two managers
/// on disjoint fields (each apply changes something), `count` of them.
/// With `rollouts`, each of the deployer's applies changes the image, so
/// the controllers roll the Deployment out on the same cores; without,
/// it changes an annotation.
async fn apply_latency(client: &Client, name: &str, count: usize, rollouts: bool) -> Vec<Duration> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (image, note) = if rollouts {
            (format!("registry.local/app:{i}"), "steady".to_owned())
        } else {
            ("registry.local/app:1".to_owned(), format!("apply {i}"))
        };
        let (manager, patch) = if i % 2 == 0 {
            (
                "deployer",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "annotations": {"note": note}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                    {"name": "app", "image": image, "ports": [{"containerPort": 8080}],
                     "env": [{"name": "MODE", "value": "production"}]}]}}}}),
            )
        } else {
            (
                "labeller",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": {"revision": format!("r{i}")}}}),
            )
        };
        let t = Instant::now();
        api.patch(name, &PatchParams::apply(manager), &Patch::Apply(&patch))
            .await
            .expect("apply");
        out.push(t.elapsed());
    }
    out.sort_unstable();
    out
}

#[tokio::main]
async fn main() {
    println!("{}", machine());
    let server = start_server();
    let client = client(&server).await;
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..16 {
            v.push(support::client(&server).await);
        }
        v
    };

    // Discovery latency of a new definition.
    let mut appear = Vec::new();
    for i in 0..5 {
        let plural = format!("probes{i}");
        let started = install(&client, &definition(&plural, &format!("Probe{i}"), false)).await;
        discovered(&client, &plural).await;
        appear.push(started.elapsed());
    }
    appear.sort_unstable();
    println!(
        "CRD in discovery after creation: median {}, worst {} (target < 1000 ms)",
        ms(appear[appear.len() / 2]),
        ms(appear[appear.len() - 1])
    );

    // Creates at 200/s with ~50 fields and 5 CEL rules.
    install(&client, &definition("widgets", "Widget", true)).await;
    discovered(&client, "widgets").await;
    let widgets = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bench.example.com", "v1", "Widget"),
        "widgets",
    );
    let creates = paced_creates(&clients, &widgets, 200.0, 10).await;
    println!(
        "custom object create at 200/s (~50 fields, 5 CEL rules), {} creates: p50 {}, p99 {} (target p99 < 20 ms)",
        creates.len(),
        ms(pct(&creates, 0.5)),
        ms(pct(&creates, 0.99))
    );

    // Server-side apply.
    for (name, rollouts, what) in [
        ("ssa", false, "metadata changes"),
        ("ssa-rollouts", true, "every other apply a rollout"),
    ] {
        let applies = apply_latency(&client, name, 1000, rollouts).await;
        println!(
            "server-side apply of a Deployment, 2 managers ({what}), {} patches: p50 {}, p99 {} (target p99 < 20 ms)",
            applies.len(),
            ms(pct(&applies, 0.5)),
            ms(pct(&applies, 0.99))
        );
    }

    // 50 definitions, 10,000 objects.
    let before = rss_kib(server.child.id());
    for i in 0..44 {
        install(
            &client,
            &definition(&format!("kinds{i}"), &format!("Kind{i}"), i % 4 == 0),
        )
        .await;
    }
    discovered(&client, "kinds43").await;
    let have = creates.len();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &widgets);
    let mut tasks = Vec::new();
    let remaining = 10_000usize.saturating_sub(have);
    for w in 0..16 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for n in (w..remaining).step_by(16) {
                let obj: DynamicObject =
                    serde_json::from_value(object(&format!("bulk-{n}"))).expect("object");
                api.create(&PostParams::default(), &obj)
                    .await
                    .expect("bulk create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("bulk creator");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(server.child.id());
    println!(
        "server RSS: {:.1} MiB with 6 CRDs and {have} objects; {:.1} MiB with 50 CRDs and 10,000 custom objects",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
