//! The garbage collector: dependents follow their owners.
//!
//! - Background deletion: once an owner is gone, its dependents (objects
//!   whose ownerReferences name its uid and no other live owner) are deleted.
//! - Foreground deletion: an owner marked with the `foregroundDeletion`
//!   finalizer has its dependents deleted first; the finalizer is removed
//!   (and the owner goes) when none are left.
//! - Orphan deletion is done by the registry before the owner is deleted;
//!   an orphaning interrupted by a crash (the `orphan` finalizer left on an
//!   object being deleted) is finished here at start.
//!
//! Owners and dependents are tracked for the kinds with informers
//! (Deployments → ReplicaSets → Pods, DaemonSets/StatefulSets → Pods and
//! ControllerRevisions, CronJobs → Jobs → Pods); dependents left dangling
//! while the server was down are collected at start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, is_deleting, meta_str, run_workers};
use crate::api::catalog::Resource;
use crate::api::patch::PatchType;
use crate::api::status::ApiError;
use crate::server::informer::{Informer, Queue, object_key};
use crate::server::registry::{DeleteOptions, WriteOptions};

const FOREGROUND: &str = "foregroundDeletion";

/// The kinds that own things the collector tracks.
const OWNER_KINDS: [&str; 7] = [
    "Deployment",
    "ReplicaSet",
    "ReplicationController",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
];

fn owner_informers(ctx: &Context) -> Vec<Arc<Informer>> {
    OWNER_KINDS
        .iter()
        .filter_map(|k| ctx.informers.of_kind(k).cloned())
        .collect()
}

fn dependent_informers(ctx: &Context) -> [&Arc<Informer>; 4] {
    [
        &ctx.informers.replicasets,
        &ctx.informers.jobs,
        &ctx.informers.controllerrevisions,
        &ctx.informers.pods,
    ]
}

/// Uids of built-in owners being deleted in the foreground whose other
/// dependents (those [`any_owner`] tracks: ConfigMaps, custom objects…)
/// no longer block them. [`reconcile`] drops such an owner's finalizer
/// only once it is here and its informer-tracked dependents are gone too.
type Cleared = Arc<std::sync::Mutex<HashSet<String>>>;

fn lock(cleared: &Cleared) -> std::sync::MutexGuard<'_, HashSet<String>> {
    cleared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    // Keys are "<owner kind>|<uid>|<object key>" of owners to look at.
    let queue = Queue::new();
    let cleared = Cleared::default();
    for informer in owner_informers(&ctx) {
        let kind = informer.res.kind.clone();
        let queue = queue.clone();
        let mut rx = informer.subscribe();
        tasks.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(change) => {
                        let deleted = change.new.is_none();
                        let foreground = change
                            .new
                            .as_deref()
                            .is_some_and(|o| is_deleting(o) && has_finalizer(o, FOREGROUND));
                        if deleted || foreground {
                            let owner = change.new.or(change.old).expect("a change has an object");
                            queue.add(format!("{kind}|{}|{}", meta_str(&owner, "uid"), change.key));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Err(_) => {}
                }
            }
        });
    }
    // A dependent going away may let a foreground owner finish.
    {
        let (queue, ctx2) = (queue.clone(), ctx.clone());
        let mut pods = ctx.informers.pods.subscribe();
        let mut rss = ctx.informers.replicasets.subscribe();
        let mut jobs = ctx.informers.jobs.subscribe();
        let mut revisions = ctx.informers.controllerrevisions.subscribe();
        tasks.spawn(async move {
            loop {
                let change = tokio::select! {
                    c = pods.recv() => c,
                    c = rss.recv() => c,
                    c = jobs.recv() => c,
                    c = revisions.recv() => c,
                };
                let Ok(change) = change else { continue };
                if change.new.is_some() {
                    continue;
                }
                let Some(gone) = change.old else { continue };
                for r in gone
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let owner_key = format!(
                        "{}/{}",
                        meta_str(&gone, "namespace"),
                        r["name"].as_str().unwrap_or_default()
                    );
                    let kind = r["kind"].as_str().unwrap_or_default();
                    let Some(informer) = ctx2.informers.of_kind(kind) else {
                        continue;
                    };
                    if OWNER_KINDS.contains(&kind)
                        && informer.get(&owner_key).is_some_and(|o| is_deleting(&o))
                    {
                        queue.add(format!(
                            "{kind}|{}|{owner_key}",
                            r["uid"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        });
    }
    // Dangling dependents from before this start.
    {
        let ctx2 = ctx.clone();
        tasks.spawn(async move {
            finish_orphaning(&ctx2).await;
            let live: HashSet<String> = owner_informers(&ctx2)
                .iter()
                .flat_map(|i| i.list(None))
                .map(|o| meta_str(&o, "uid").to_owned())
                .collect();
            for dep in dependent_informers(&ctx2).iter().flat_map(|i| i.list(None)) {
                let refs: Vec<&Value> = dep
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .collect();
                let tracked = refs
                    .iter()
                    .all(|r| OWNER_KINDS.contains(&r["kind"].as_str().unwrap_or_default()));
                if !refs.is_empty()
                    && tracked
                    && refs
                        .iter()
                        .all(|r| !live.contains(r["uid"].as_str().unwrap_or_default()))
                {
                    let owner = refs[0]["uid"].as_str().map(str::to_owned);
                    delete_dependent(&ctx2, &dep, None, owner.as_deref()).await;
                }
            }
        });
    }
    {
        let (ctx, cleared) = (ctx.clone(), cleared.clone());
        tasks.spawn(async move { any_owner::run(ctx, cleared).await });
    }
    run_workers(tasks, "garbage-collector", queue, 2, move |key| {
        reconcile(ctx.clone(), cleared.clone(), key)
    });
}

/// The kinds whose dependents the informer-driven collector above finds.
const DEPENDENT_KINDS: [&str; 4] = ["ReplicaSet", "Job", "ControllerRevision", "Pod"];

/// Background collection for every other owner and dependent, custom
/// resources included (a Deployment owned by a custom object, a ConfigMap
/// owned by a Deployment): an index from owner uid to dependents, built
/// from a list of every resource at start and kept from a watch on the
/// whole store. When an owner is deleted, its indexed dependents with no
/// other live owner are deleted; dependents whose owners vanished while
/// the server was down are collected at start, and so are dependents
/// created after all their owners were gone. Owners whose kind is not
/// served (a custom resource whose definition is not installed yet) count
/// as alive. Owners deleted in the foreground wait here for the blocking
/// dependents (`blockOwnerDeletion`) indexed here, which are deleted in
/// the foreground too; a built-in owner of the informer-tracked kinds also
/// waits for its informer-tracked dependents ([`Cleared`]).
mod any_owner {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Value, json};

    use crate::api::catalog::{Catalog, Resource};

    use super::{Cleared, Context, DEPENDENT_KINDS, OWNER_KINDS, delete_dependent, lock, meta_str};
    use crate::server::registry::ListQuery;
    use crate::store::{self, EventKind, Revision};

    /// One owner reference of a dependent.
    #[derive(Clone, Debug)]
    struct OwnerRef {
        api_version: String,
        kind: String,
        name: String,
        uid: String,
        /// `blockOwnerDeletion`: a foreground deletion of the owner waits
        /// for this dependent.
        block: bool,
    }

    /// A dependent, as much of it as deleting it takes.
    #[derive(Clone, Debug)]
    struct Dependent {
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
        uid: String,
        owners: Vec<OwnerRef>,
    }

    impl Dependent {
        fn of(obj: &Value) -> Option<Dependent> {
            let owners: Vec<OwnerRef> = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)?
                .iter()
                .map(|r| OwnerRef {
                    api_version: r["apiVersion"].as_str().unwrap_or_default().into(),
                    kind: r["kind"].as_str().unwrap_or_default().into(),
                    name: r["name"].as_str().unwrap_or_default().into(),
                    uid: r["uid"].as_str().unwrap_or_default().into(),
                    block: r["blockOwnerDeletion"] == true,
                })
                .collect();
            let kind = obj["kind"].as_str().unwrap_or_default();
            // Pairs the informer-driven collector handles are left to it.
            let mine = owners.iter().any(|o| {
                !OWNER_KINDS.contains(&o.kind.as_str()) || !DEPENDENT_KINDS.contains(&kind)
            });
            (!owners.is_empty() && mine).then(|| Dependent {
                api_version: obj["apiVersion"].as_str().unwrap_or_default().into(),
                kind: kind.into(),
                namespace: meta_str(obj, "namespace").into(),
                name: meta_str(obj, "name").into(),
                uid: meta_str(obj, "uid").into(),
                owners,
            })
        }

        fn as_object(&self) -> Value {
            json!({"apiVersion": self.api_version, "kind": self.kind,
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}})
        }
    }

    #[derive(Default)]
    struct Index {
        /// owner uid -> dependent uid -> dependent
        by_owner: HashMap<String, HashMap<String, Dependent>>,
        /// dependent uid -> its owners' uids
        owners_of: HashMap<String, Vec<String>>,
    }

    impl Index {
        fn add(&mut self, dep: Dependent) {
            let owners: Vec<String> = dep.owners.iter().map(|o| o.uid.clone()).collect();
            for o in &owners {
                self.by_owner
                    .entry(o.clone())
                    .or_default()
                    .insert(dep.uid.clone(), dep.clone());
            }
            self.owners_of.insert(dep.uid.clone(), owners);
        }

        /// Forget `uid` as a dependent; the uids of the owners it had.
        fn remove(&mut self, uid: &str) -> Vec<String> {
            let owners = self.owners_of.remove(uid).unwrap_or_default();
            for owner in &owners {
                if let Some(deps) = self.by_owner.get_mut(owner) {
                    deps.remove(uid);
                    if deps.is_empty() {
                        self.by_owner.remove(owner);
                    }
                }
            }
            owners
        }

        /// Whether `owner` still has a dependent that blocks its deletion.
        fn blocked(&self, owner: &str) -> bool {
            self.by_owner.get(owner).is_some_and(|deps| {
                deps.values()
                    .any(|d| d.owners.iter().any(|r| r.uid == owner && r.block))
            })
        }

        /// Take the dependents of `owner`.
        fn take(&mut self, owner: &str) -> Vec<Dependent> {
            let deps: Vec<Dependent> = self
                .by_owner
                .remove(owner)
                .map(|d| d.into_values().collect())
                .unwrap_or_default();
            for d in &deps {
                if let Some(owners) = self.owners_of.get_mut(&d.uid) {
                    owners.retain(|o| o != owner);
                }
            }
            deps
        }
    }

    /// Whether the owner `r` of `dep` exists (kinds not served count).
    async fn alive(ctx: &Context, dep: &Dependent, r: &OwnerRef) -> bool {
        let owner = json!({"apiVersion": r.api_version, "kind": r.kind});
        let Some(res) = super::res_of(ctx, &owner) else {
            return true;
        };
        let ns = (res.namespaced && !dep.namespace.is_empty()).then_some(dep.namespace.as_str());
        match ctx.registry.get(&res, ns, &r.name).await {
            Ok(obj) => meta_str(&obj, "uid") == r.uid,
            Err(e) => e.code != 404,
        }
    }

    /// Whether any owner of `dep` exists.
    async fn any_alive(ctx: &Context, dep: &Dependent) -> bool {
        for r in &dep.owners {
            if alive(ctx, dep, r).await {
                return true;
            }
        }
        false
    }

    /// Delete the dependents of `owner_uid` that have no other live owner.
    async fn collect(ctx: &Context, owner_uid: &str, deps: Vec<Dependent>) {
        for dep in deps {
            let mut others_alive = false;
            for r in dep.owners.iter().filter(|r| r.uid != owner_uid) {
                if alive(ctx, &dep, r).await {
                    others_alive = true;
                    break;
                }
            }
            if !others_alive {
                delete_dependent(ctx, &dep.as_object(), Some("Background"), Some(owner_uid)).await;
            }
        }
    }

    /// An owner being deleted in the foreground, as much of it as finishing
    /// that takes.
    type Foreground = HashMap<String, Value>;

    /// Whether `obj` is an owner being deleted in the foreground. Those of
    /// the kinds the informer-driven collector owns wait here only for the
    /// dependents indexed here.
    fn foreground_owner(obj: &Value) -> Option<(String, Value)> {
        let kind = obj["kind"].as_str().unwrap_or_default();
        (super::is_deleting(obj) && super::has_finalizer(obj, super::FOREGROUND)).then(|| {
            let stub = json!({"apiVersion": obj["apiVersion"], "kind": kind,
                "metadata": {"namespace": meta_str(obj, "namespace"), "name": meta_str(obj, "name"),
                    "uid": meta_str(obj, "uid")}});
            (meta_str(obj, "uid").to_owned(), stub)
        })
    }

    /// Foreground deletion of `owner`: its dependents go first (in the
    /// foreground themselves, as upstream deletes them), and once none that
    /// blocks it is left, it is finished ([`finish`]). Whether it is.
    async fn drive_foreground(
        ctx: &Context,
        cleared: &Cleared,
        index: &Index,
        uid: &str,
        owner: &Value,
    ) -> bool {
        if !index.blocked(uid) {
            return finish(ctx, cleared, uid, owner).await;
        }
        let deps: Vec<Dependent> = index
            .by_owner
            .get(uid)
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default();
        for dep in deps {
            delete_dependent(ctx, &dep.as_object(), Some("Foreground"), Some(uid)).await;
        }
        false
    }

    /// An owner nothing indexed here blocks any more: its
    /// `foregroundDeletion` finalizer is dropped, or, for a kind the
    /// informer-driven collector owns, that collector is told it may drop
    /// it. Whether that is done.
    async fn finish(ctx: &Context, cleared: &Cleared, uid: &str, owner: &Value) -> bool {
        if OWNER_KINDS.contains(&owner["kind"].as_str().unwrap_or_default()) {
            lock(cleared).insert(uid.to_owned());
            return true;
        }
        super::drop_foreground(ctx, owner).await
    }

    /// List everything: the index, the owners being deleted in the
    /// foreground, and the revision to watch from.
    async fn build(ctx: &Context) -> Option<(Index, Foreground, Revision)> {
        let mut index = Index::default();
        let mut foreground = Foreground::new();
        let mut start: Option<Revision> = None;
        let resources = listable(&ctx.registry.catalog());
        for res in resources {
            let list = ctx
                .registry
                .list(&res, None, &ListQuery::default())
                .await
                .ok()?;
            start = Some(start.map_or(list.revision, |s: Revision| s.min(list.revision)));
            for obj in list.decoded().ok()? {
                if let Some(dep) = Dependent::of(&obj) {
                    index.add(dep);
                }
                foreground.extend(foreground_owner(&obj));
            }
        }
        Some((index, foreground, start.unwrap_or(Revision(0))))
    }

    /// What can be listed in `catalog`.
    fn listable(catalog: &Catalog) -> Vec<Resource> {
        catalog
            .resources()
            .iter()
            .filter(|r| r.allows("list"))
            .cloned()
            .collect()
    }

    /// A resource's name, to notice new ones by.
    fn name_of(res: &Resource) -> String {
        format!("{}/{}/{}", res.group, res.version, res.plural)
    }

    /// Index the dependents of a resource served since the collector's
    /// list, collect those whose owners are gone, and go on with the
    /// foreground deletions among its objects.
    async fn add_listed(
        ctx: &Context,
        cleared: &Cleared,
        res: &Resource,
        index: &mut Index,
        foreground: &mut Foreground,
    ) {
        let Ok(list) = ctx.registry.list(res, None, &ListQuery::default()).await else {
            return;
        };
        for obj in list.decoded().unwrap_or_default() {
            if let Some(dep) = Dependent::of(&obj) {
                if any_alive(ctx, &dep).await {
                    index.remove(&dep.uid);
                    index.add(dep);
                } else {
                    let owner = dep.owners[0].uid.clone();
                    collect(ctx, &owner, vec![dep]).await;
                }
            }
            if let Some((uid, owner)) = foreground_owner(&obj)
                && !drive_foreground(ctx, cleared, index, &uid, &owner).await
            {
                foreground.insert(uid, owner);
            }
        }
    }

    pub(super) async fn run(ctx: Arc<Context>, cleared: Cleared) {
        loop {
            let mut catalog = ctx.registry.catalog();
            let mut served: BTreeSet<String> = listable(&catalog).iter().map(name_of).collect();
            let Some((mut index, mut foreground, start)) = build(&ctx).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut finished = Vec::new();
            for (uid, owner) in &foreground {
                if drive_foreground(&ctx, &cleared, &index, uid, owner).await {
                    finished.push(uid.clone());
                }
            }
            for uid in finished {
                foreground.remove(&uid);
            }
            // Owners that went while the server was down.
            let owners: Vec<(String, Dependent)> = index
                .by_owner
                .iter()
                .filter_map(|(uid, deps)| deps.values().next().map(|d| (uid.clone(), d.clone())))
                .collect();
            for (uid, dep) in owners {
                let Some(r) = dep.owners.iter().find(|r| r.uid == uid) else {
                    continue;
                };
                if !alive(&ctx, &dep, r).await {
                    let deps = index.take(&uid);
                    collect(&ctx, &uid, deps).await;
                }
            }
            let mut watcher = match ctx.registry.store.watch("/registry/", start).await {
                Ok(w) => w,
                Err(store::Error::Closed) => return,
                Err(err) => {
                    tracing::debug!(%err, "garbage collector watch failed, relisting");
                    continue;
                }
            };
            while let Some(event) = watcher.next().await {
                let Ok(event) = event else { break };
                // Resources served since the list (custom resources whose
                // definitions were installed after start) may hold
                // dependents from before: list those (their later changes
                // come through this watch).
                let now = ctx.registry.catalog();
                if !Arc::ptr_eq(&now, &catalog) {
                    catalog = now;
                    for res in listable(&catalog) {
                        if served.insert(name_of(&res)) {
                            add_listed(&ctx, &cleared, &res, &mut index, &mut foreground).await;
                        }
                    }
                }
                match event.kind {
                    EventKind::Put => {
                        let has = |b: &[u8], what: &[u8]| b.windows(what.len()).any(|w| w == what);
                        let has_refs = |b: &[u8]| has(b, b"\"ownerReferences\"");
                        let before = event.prev.as_ref().is_some_and(|p| has_refs(&p.value));
                        if !has_refs(&event.kv.value)
                            && !before
                            && !has(&event.kv.value, b"\"foregroundDeletion\"")
                        {
                            continue;
                        }
                        let Ok(obj) = serde_json::from_slice::<Value>(&event.kv.value) else {
                            continue;
                        };
                        index.remove(meta_str(&obj, "uid"));
                        if let Some(dep) = Dependent::of(&obj) {
                            // A dependent created after its owners were
                            // deleted has nobody to collect it later.
                            if event.prev.is_none() && !any_alive(&ctx, &dep).await {
                                let owner = dep.owners[0].uid.clone();
                                collect(&ctx, &owner, vec![dep]).await;
                            } else {
                                index.add(dep);
                            }
                        }
                        if let Some((uid, owner)) = foreground_owner(&obj) {
                            if drive_foreground(&ctx, &cleared, &index, &uid, &owner).await {
                                foreground.remove(&uid);
                            } else {
                                foreground.insert(uid, owner);
                            }
                        }
                    }
                    EventKind::Delete => {
                        let Some(prev) = event.prev.as_ref() else {
                            continue;
                        };
                        let Ok(obj) = serde_json::from_slice::<Value>(&prev.value) else {
                            continue;
                        };
                        let uid = meta_str(&obj, "uid").to_owned();
                        let owners = index.remove(&uid);
                        foreground.remove(&uid);
                        lock(&cleared).remove(&uid);
                        let deps = index.take(&uid);
                        if !deps.is_empty() {
                            collect(&ctx, &uid, deps).await;
                        }
                        // A dependent gone may let an owner finish.
                        for owner in owners {
                            if let Some(stub) = foreground.get(&owner).cloned()
                                && !index.blocked(&owner)
                                && finish(&ctx, &cleared, &owner, &stub).await
                            {
                                foreground.remove(&owner);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Finish orphaning deletes a crash interrupted: objects being deleted
/// that still carry the `orphan` finalizer.
async fn finish_orphaning(ctx: &Context) {
    let resources: Vec<Resource> = ctx
        .registry
        .catalog()
        .resources()
        .iter()
        .filter(|r| r.allows("list") && r.allows("patch"))
        .cloned()
        .collect();
    for res in resources {
        let Ok(list) = ctx
            .registry
            .list(&res, None, &crate::server::registry::ListQuery::default())
            .await
        else {
            continue;
        };
        for obj in list.decoded().unwrap_or_default() {
            if is_deleting(&obj) && has_finalizer(&obj, "orphan") {
                match ctx.registry.finish_orphaning(&res, &obj).await {
                    Ok(()) => {
                        tracing::info!(object = %object_key(&obj), kind = %res.kind, "finished an interrupted orphaning delete")
                    }
                    Err(e) => {
                        tracing::warn!(%e, object = %object_key(&obj), "could not finish an orphaning delete")
                    }
                }
            }
        }
    }
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|v| v == name))
}

fn res_of(ctx: &Context, obj: &Value) -> Option<Resource> {
    let (group, version) = obj["apiVersion"]
        .as_str()?
        .rsplit_once('/')
        .unwrap_or(("", obj["apiVersion"].as_str()?));
    ctx.registry
        .catalog()
        .find_kind(group, version, obj["kind"].as_str()?)
        .cloned()
}

async fn delete_dependent(
    ctx: &Context,
    dep: &Value,
    policy: Option<&str>,
    owner_uid: Option<&str>,
) {
    let Some(res) = res_of(ctx, dep) else { return };
    let ns = meta_str(dep, "namespace");
    // The cache may be behind (an orphaning patch in flight): decide on the
    // object as stored now.
    if let Some(owner_uid) = owner_uid {
        match ctx
            .registry
            .get(&res, (!ns.is_empty()).then_some(ns), meta_str(dep, "name"))
            .await
        {
            Ok(current) => {
                let still_owned = current
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid));
                if !still_owned || current["metadata"]["uid"] != dep["metadata"]["uid"] {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let opts = DeleteOptions {
        propagation_policy: policy.map(str::to_owned),
        precondition_uid: Some(meta_str(dep, "uid").to_owned()),
        ..DeleteOptions::default()
    };
    match ctx
        .registry
        .delete(
            &res,
            (!ns.is_empty()).then_some(ns),
            meta_str(dep, "name"),
            &opts,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(%e, dependent = %object_key(dep), "garbage collection failed"),
    }
}

/// Drop the `foregroundDeletion` finalizer of `owner` (as stored now, so
/// a stale copy cannot undo another writer's change). Whether it is done:
/// dropped, or the owner is gone or no longer the same object.
async fn drop_foreground(ctx: &Context, owner: &Value) -> bool {
    let Some(res) = res_of(ctx, owner) else {
        return true;
    };
    let ns = meta_str(owner, "namespace");
    let ns = (!ns.is_empty()).then_some(ns);
    let name = meta_str(owner, "name");
    for _ in 0..3 {
        let current = match ctx.registry.get(&res, ns, name).await {
            Ok(current) => current,
            Err(e) => return e.code == 404,
        };
        if current["metadata"]["uid"] != owner["metadata"]["uid"]
            || !has_finalizer(&current, FOREGROUND)
        {
            return true;
        }
        let finalizers: Vec<&Value> = current["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| *f != FOREGROUND)
            .collect();
        let patch = json!({"metadata": {"finalizers": finalizers,
            "resourceVersion": current["metadata"]["resourceVersion"]}});
        match ctx
            .registry
            .patch(
                &res,
                ns,
                name,
                (PatchType::Merge, &patch),
                None,
                &WriteOptions::default(),
            )
            .await
        {
            Ok(_) => return true,
            Err(e) if e.code == 404 => return true,
            Err(e) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(%e, owner = %object_key(owner), "cannot finish a foreground deletion");
                return false;
            }
        }
    }
    false
}

/// Dependents of `uid` in the tracked informers.
fn dependents(ctx: &Context, uid: &str) -> Vec<Arc<Value>> {
    dependent_informers(ctx)
        .iter()
        .flat_map(|i| i.list(None))
        .filter(|o| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
        .collect()
}

async fn reconcile(ctx: Arc<Context>, cleared: Cleared, key: String) -> Result<Action, ApiError> {
    let mut parts = key.splitn(3, '|');
    let (Some(kind), Some(uid), Some(owner_key)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(Action::AwaitChange);
    };
    let Some(informer) = ctx.informers.of_kind(kind) else {
        return Ok(Action::AwaitChange);
    };
    let owner = informer
        .get(owner_key)
        .filter(|o| meta_str(o, "uid") == uid);
    match owner {
        // Gone: background deletion of dependents with no other live owner.
        None => {
            for dep in dependents(&ctx, uid) {
                let others_alive = dep
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|r| r["uid"] != uid)
                    .any(|r| {
                        let k = format!(
                            "{}/{}",
                            meta_str(&dep, "namespace"),
                            r["name"].as_str().unwrap_or_default()
                        );
                        // Owners of kinds not tracked here count as alive.
                        ctx.informers
                            .of_kind(r["kind"].as_str().unwrap_or_default())
                            .is_none_or(|inf| {
                                inf.get(&k)
                                    .is_some_and(|o| o["metadata"]["uid"] == r["uid"])
                            })
                    });
                if !others_alive && !is_deleting(&dep) {
                    delete_dependent(&ctx, &dep, Some("Background"), Some(uid)).await;
                }
            }
            Ok(Action::AwaitChange)
        }
        // Foreground: dependents first, then drop the finalizer.
        Some(owner) if is_deleting(&owner) && has_finalizer(&owner, FOREGROUND) => {
            let deps = dependents(&ctx, uid);
            for dep in deps.iter().filter(|d| !is_deleting(d)) {
                // Dependents that own things themselves (ReplicaSets) go in
                // the foreground too; leaves (pods) simply go.
                let policy = if matches!(dep["kind"].as_str(), Some("ReplicaSet" | "Job")) {
                    "Foreground"
                } else {
                    "Background"
                };
                delete_dependent(&ctx, dep, Some(policy), Some(uid)).await;
            }
            if deps.is_empty() {
                // The collector for any owner has not cleared it yet: it
                // still has other blocking dependents, or has not seen it.
                if !lock(&cleared).contains(uid) {
                    return Ok(Action::RequeueAfter(Duration::from_millis(200)));
                }
                if drop_foreground(&ctx, &owner).await {
                    Ok(Action::AwaitChange)
                } else {
                    Ok(Action::RequeueAfter(Duration::from_secs(1)))
                }
            } else {
                // Dependents still terminating (e.g. pods in their grace period).
                Ok(Action::RequeueAfter(Duration::from_secs(2)))
            }
        }
        Some(_) => Ok(Action::AwaitChange),
    }
}
