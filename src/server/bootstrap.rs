//! Objects every cluster has from its first start: the four system
//! namespaces and the `kubernetes` Service (at the first Service IP) with
//! its Endpoints pointing at this server.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::api::status::ApiError;
use crate::server::registry::{Registry, WriteOptions};

async fn create_if_missing(
    registry: &Registry,
    plural: &str,
    group: &str,
    namespace: Option<&str>,
    obj: Value,
) -> Result<(), ApiError> {
    let res = registry
        .resource(group, plural)
        .expect("bootstrap kinds are in the catalog")
        .clone();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match registry.get(&res, namespace, name).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    match registry
        .create(&res, namespace, obj, &WriteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create what is missing; existing objects are left as they are.
///
/// # Errors
/// A store failure.
pub async fn ensure(registry: &Registry, advertise: IpAddr, port: u16) -> Result<(), ApiError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        create_if_missing(
            registry,
            "namespaces",
            "",
            None,
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    let api_ip = registry_first_ip(registry);
    create_if_missing(registry, "services", "", Some("default"), json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": api_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}], "type": "ClusterIP", "sessionAffinity": "None"},
    }))
    .await?;
    let endpoints = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": advertise.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    ensure_matches(registry, "", "endpoints", endpoints, "subsets").await?;
    // The same as an EndpointSlice: what service proxies read (the
    // endpoints controller leaves selector-less Services alone).
    let slice = json!({
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "orch-apiserver",
        }},
        "addressType": if advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [advertise.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure_matches(
        registry,
        "discovery.k8s.io",
        "endpointslices",
        slice,
        "endpoints",
    )
    .await?;
    Ok(())
}

/// Create `desired` in `default`, or replace the stored one when its
/// `field` (or `ports`) differs (the server's address or port changed).
async fn ensure_matches(
    registry: &Registry,
    group: &str,
    resource: &str,
    desired: Value,
    field: &str,
) -> Result<(), ApiError> {
    let res = registry
        .resource(group, resource)
        .expect("bootstrap resources are in the catalog")
        .clone();
    let name = desired["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match registry.get(&res, Some("default"), &name).await {
        Ok(current)
            if current.get(field) == desired.get(field)
                && current.get("ports") == desired.get("ports") => {}
        Ok(_) => {
            registry
                .update(
                    &res,
                    Some("default"),
                    &name,
                    desired,
                    None,
                    &WriteOptions::default(),
                )
                .await?;
        }
        Err(e) if e.code == 404 => {
            create_if_missing(registry, resource, group, Some("default"), desired).await?
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn registry_first_ip(registry: &Registry) -> String {
    registry.service_ranges().nth(1).to_string()
}
