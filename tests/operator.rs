//! An operator written with kube-rs's runtime runs against orch (issue
//! #23): a `Controller` over a custom resource, its reconciler behind
//! kube's finalizer helper, creating a Deployment the custom object owns
//! and writing the object's status through the status subresource with
//! server-side apply. Deleting the object runs the finalizer's cleanup,
//! and the garbage collector then deletes the Deployment it owned.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use support::Cluster;

const WEBAPPS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: webapps.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: webapps, singular: webapp, kind: WebApp}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [image]
            properties:
              image: {type: string}
              replicas: {type: integer, minimum: 0, default: 1}
          status:
            type: object
            properties:
              deployment: {type: string}
              replicas: {type: integer}
"#;

const MANAGER: &str = "webapp-operator";
const FINALIZER: &str = "webapps.example.com/cleanup";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    resource: ApiResource,
}

fn deployment_for(app: &DynamicObject) -> serde_json::Value {
    let name = app.name_any();
    let replicas = app.data["spec"]["replicas"].as_i64().unwrap_or(1);
    let image = app.data["spec"]["image"].as_str().unwrap_or_default();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "example.com/v1",
                "kind": "WebApp",
                "name": name,
                "uid": app.metadata.uid.clone().unwrap_or_default(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"webapp": name}},
            "template": {
                "metadata": {"labels": {"webapp": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    })
}

async fn apply(app: Arc<DynamicObject>, ctx: &Ctx) -> Result<Action, Error> {
    let ns = app.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let wanted = deployment_for(&app);
    let made = deployments
        .patch(
            &app.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&wanted),
        )
        .await?;
    let apps: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource);
    let status = json!({
        "apiVersion": "example.com/v1",
        "kind": "WebApp",
        "status": {
            "deployment": made.name_any(),
            "replicas": made.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        },
    });
    apps.patch_status(
        &app.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn cleanup(app: Arc<DynamicObject>, ctx: &Ctx) -> Result<Action, Error> {
    // What a real operator would release outside the cluster; here a
    // record the test can see.
    let ns = app.namespace().unwrap_or_default();
    let records: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let record = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("cleaned-{}", app.name_any())}});
    records
        .patch(
            &format!("cleaned-{}", app.name_any()),
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&record),
        )
        .await?;
    Ok(Action::await_change())
}

async fn reconcile(
    app: Arc<DynamicObject>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let ns = app.namespace().unwrap_or_default();
    let apps: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource);
    finalizer(&apps, FINALIZER, app, |event| async {
        match event {
            Event::Apply(app) => apply(app, &ctx).await,
            Event::Cleanup(app) => cleanup(app, &ctx).await,
        }
    })
    .await
}

fn error_policy(
    _: Arc<DynamicObject>,
    error: &kube::runtime::finalizer::Error<Error>,
    _: Arc<Ctx>,
) -> Action {
    eprintln!("reconcile failed: {error:?}");
    Action::requeue(Duration::from_millis(200))
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_operator_manages_its_custom_resource() {
    let server = Cluster::start();
    let crd = server.write("webapps.yaml", WEBAPPS);
    server.ok("1.33", &["apply", "-f", crd.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=established",
            "--timeout=10s",
            "crd/webapps.example.com",
        ],
    );
    let kc = Kubeconfig::read_from(&server.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid for kube-rs");
    let client = Client::try_from(config).expect("client");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "WebApp"),
        "webapps",
    );

    let apps: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        resource: resource.clone(),
    });
    let operator = tokio::spawn(
        Controller::new_with(apps, watcher::Config::default(), resource.clone())
            .owns(
                Api::<Deployment>::all(client.clone()),
                watcher::Config::default(),
            )
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    eprintln!("controller: {e:?}");
                }
            }),
    );

    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut app = DynamicObject::new("shop", &resource);
    app.data = json!({"spec": {"image": "nginx:1"}});
    apps.create(&PostParams::default(), &app)
        .await
        .expect("create WebApp");

    // The operator adds its finalizer, makes the Deployment (owned by the
    // WebApp, replicas from the schema's default) and reports status.
    let made = eventually("the Deployment", || async {
        deployments.get_opt("shop").await.ok().flatten()
    })
    .await;
    assert_eq!(made.spec.as_ref().unwrap().replicas, Some(1));
    let owner = &made.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("WebApp", "shop", Some(true))
    );
    let managers: Vec<_> = made
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&(MANAGER.to_owned(), "Apply".to_owned())),
        "{managers:?}"
    );
    let app = eventually("the WebApp's status", || async {
        let app = apps.get("shop").await.ok()?;
        (app.data["status"]["deployment"] == "shop").then_some(app)
    })
    .await;
    assert_eq!(app.finalizers(), [FINALIZER.to_owned()]);
    let status_entry = app
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.subresource.as_deref() == Some("status"))
        .expect("a status entry");
    assert_eq!(status_entry.manager.as_deref(), Some(MANAGER));
    assert_eq!(status_entry.operation.as_deref(), Some("Apply"));

    // A spec change reaches the Deployment and the status.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .expect("scale the WebApp");
    eventually("3 replicas", || async {
        let app = apps.get("shop").await.ok()?;
        let d = deployments.get("shop").await.ok()?;
        (d.spec?.replicas == Some(3) && app.data["status"]["replicas"] == 3).then_some(())
    })
    .await;

    // Deleting the WebApp runs the cleanup, then the garbage collector
    // deletes the Deployment it owned.
    apps.delete("shop", &DeleteParams::default())
        .await
        .expect("delete WebApp");
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    eventually("the cleanup", || async {
        records.get_opt("cleaned-shop").await.ok().flatten()
    })
    .await;
    eventually("the WebApp to go", || async {
        apps.get_opt("shop")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
    eventually("the owned Deployment to go", || async {
        deployments
            .get_opt("shop")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
    operator.abort();
}
