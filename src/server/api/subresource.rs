//! Handlers for an object's subresources: `status` and `finalize`,
//! `scale`, `binding`, `eviction`, a service account's `token`, and a
//! pod's `log`, `exec`, `attach` and `portforward`, which go through the
//! tunnel of the pod's node agent.

use http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::body::RequestBody;
use super::response::{json_response, status_response};
use super::{ApiServer, Body, Call, Query, exec, object, portforward, request};
use crate::api::catalog::Resource;
use crate::api::patch::PatchType;
use crate::api::status::{self, ApiError};
use crate::server::registry::{WriteOptions, strategy};

/// May the caller approve or deny requests to the signer CSR `name`
/// names? Upstream asks for verb `approve` on `signers` named the signer
/// (or `<domain>/*`) in certificates.k8s.io.
///
/// # Errors
/// Upstream's 403 when not; the request's own errors (404).
async fn approver_of(call: &Call<'_>, name: &str) -> Result<(), ApiError> {
    use crate::server::auth::authz::{Attributes, Decision};
    let csr = call.registry().get(&call.res, None, name).await?;
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut names = vec![signer.clone()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    for signer_name in names {
        let attrs = Attributes {
            user: call.user.clone(),
            verb: "approve".into(),
            namespace: String::new(),
            api_group: "certificates.k8s.io".into(),
            api_version: "*".into(),
            resource: "signers".into(),
            subresource: String::new(),
            name: signer_name,
            path: String::new(),
            resource_request: true,
        };
        if matches!(
            call.api.authorizers.authorize(&attrs).await,
            Decision::Allow(_)
        ) {
            return Ok(());
        }
    }
    Err(ApiError {
        details: Some(Box::new(status::Details {
            name: name.to_owned(),
            group: "certificates.k8s.io".into(),
            kind: "certificatesigningrequests".into(),
            ..status::Details::default()
        })),
        ..ApiError::forbidden(format!(
            "certificatesigningrequests.certificates.k8s.io {name:?} is forbidden: user not permitted to approve requests with signerName {signer:?}"
        ))
    })
}

/// Serve a request on subresource `sub` of object `name`.
pub(super) async fn serve(
    call: &Call<'_>,
    req: Request<RequestBody>,
    name: &str,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let (registry, ns) = (call.registry(), call.ns());
    match (&method, sub) {
        (&Method::PUT, "status") => object::update(call, req, name, Some("status")).await,
        (&Method::PUT | &Method::PATCH, "approval") => {
            approver_of(call, name).await?;
            if method == Method::PUT {
                object::update(call, req, name, Some("approval")).await
            } else {
                object::patch(call, req, name, Some("approval")).await
            }
        }
        (&Method::GET, "approval") => {
            let obj = registry.get(&call.res, ns, name).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        // finalize writes spec.finalizers, which a plain update keeps.
        (&Method::PUT, "finalize") => object::update(call, req, name, None).await,
        (&Method::PATCH, "status") => object::patch(call, req, name, Some("status")).await,
        (&Method::GET, "status") => {
            let obj = registry.get(&call.res, ns, name).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (_, "scale") => call.api.scale(req, &call.res, ns, name, &call.write).await,
        (&Method::POST, "binding") => {
            let body = request::read_body(req).await?;
            registry
                .bind(ns.unwrap_or_default(), name, &body.value, &call.write)
                .await?;
            Ok(status_response(
                StatusCode::CREATED,
                status::success_body(201),
            ))
        }
        (&Method::POST, "eviction") => {
            let body = request::read_body(req).await?;
            let opts = call.delete_options(&Query::new(), body.value.get("deleteOptions"))?;
            registry
                .evict(ns.unwrap_or_default(), name, &body.value, &opts)
                .await?;
            Ok(status_response(
                StatusCode::CREATED,
                status::success_body(201),
            ))
        }
        (&Method::POST, "token") => {
            let body = request::read_body(req).await?;
            let sa = registry.get(&call.res, ns, name).await?;
            call.api
                .token_request(ns.unwrap_or_default(), name, &sa, body.value)
                .await
        }
        (&Method::GET, "log")
        | (&Method::GET | &Method::POST, "exec" | "attach" | "portforward") => {
            stream(call, req, name, sub).await
        }
        (_, "log" | "exec" | "attach" | "portforward") => {
            let pod = registry.get(&call.res, ns, name).await?;
            Err(no_agent(&pod, name, sub))
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// `log`, `exec`, `attach` and `portforward`: through the tunnel of the
/// pod's node agent.
async fn stream(
    call: &Call<'_>,
    req: Request<RequestBody>,
    name: &str,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let ns = call.ns();
    let pod = call.registry().get(&call.res, ns, name).await?;
    let tunnels = &call.api.tunnels;
    let query = req.uri().query().unwrap_or_default().to_owned();
    match sub {
        "log" => {
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            let container = pod_container(&pod, name, &query)?;
            let uid = pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            tunnels
                .get(
                    node,
                    &format!(
                        "/containerLogs/{}/{name}/{container}?uid={uid}&{query}",
                        ns.unwrap_or_default()
                    ),
                )
                .await
        }
        "portforward" => portforward::serve(tunnels, req, &pod).await,
        what => {
            let container = pod_container(&pod, name, &query)?;
            exec::serve(tunnels, req, &pod, &container, what).await
        }
    }
}

/// Why `sub` of a pod cannot be served with that method: a pod with no
/// node yet, or a server without agents.
fn no_agent(pod: &Value, name: &str, sub: &str) -> ApiError {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if node.is_empty() {
        return ApiError::bad_request(format!(
            "pod {name} does not have a host assigned; {sub} needs a running pod"
        ));
    }
    ApiError::service_unavailable(format!(
        "no connection to the node agent of node {node:?} (pod {name}): this server runs without agents (--disable-agent), so pods/{sub} cannot be served"
    ))
}

impl ApiServer {
    /// `…/scale` as an `autoscaling/v1` Scale.
    pub(super) async fn scale(
        &self,
        req: Request<RequestBody>,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        write: &WriteOptions,
    ) -> Result<Response<Body>, ApiError> {
        let registry = &self.registry;
        let method = req.method().clone();
        let obj = registry.get(res, ns, name).await?;
        let scale = scale_of(res, &obj);
        let mut applied = false;
        let mut sent = Value::Null;
        let wanted = match method {
            Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
            Method::PUT => request::read_body(req).await?.value,
            Method::PATCH => {
                let patch = request::read_patch(req).await?;
                patch.check_repeated_keys(write)?;
                let (patch_type, body) = (patch.patch_type, patch.value);
                applied = patch_type == PatchType::Apply;
                sent = body.clone();
                match patch_type {
                    PatchType::Json => crate::api::patch::json_patch(&scale, &body),
                    // An applied Scale sets the replicas it names (applied
                    // below as the manager's, on /scale).
                    PatchType::Merge | PatchType::Strategic | PatchType::Apply => {
                        crate::api::patch::merge_patch(&scale, &body)
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
        // An apply sets only the replicas, as the manager's Apply on
        // /scale (owning them, conflicting with their other owners);
        // other writes change the object read.
        let mut updated = if applied {
            json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": {"name": name}})
        } else {
            obj.clone()
        };
        match res.custom.as_ref().and_then(|c| c.scale.as_ref()) {
            Some(scale) => {
                if !crate::api::custom::set(&mut updated, &scale.spec_replicas, json!(replicas)) {
                    return Err(ApiError::internal(format!(
                        "specReplicasPath {:?} is not a simple path",
                        scale.spec_replicas
                    )));
                }
            }
            None => updated["spec"]["replicas"] = json!(replicas),
        }
        // The Scale read above carries the object's resourceVersion; only
        // one the client sent is a precondition of an apply.
        let sent_rv = if applied { &sent } else { &wanted };
        if let Some(rv) = sent_rv
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            updated["metadata"]["resourceVersion"] = json!(rv);
        }
        let written = if applied {
            registry
                .apply(res, ns, name, &updated, Some("scale"), write)
                .await?
        } else {
            registry
                .update(res, ns, name, updated, Some("scale"), write)
                .await?
        };
        Ok(json_response(
            StatusCode::OK,
            &scale_of(res, &written.object),
        ))
    }
}

fn scale_of(res: &Resource, obj: &Value) -> Value {
    let selector = strategy::of(res).scale_selector(obj);
    let (spec_replicas, status_replicas) = match res.custom.as_ref().and_then(|c| c.scale.as_ref())
    {
        Some(scale) => scale.replicas(obj),
        None => (
            obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0)),
            obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
        ),
    };
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": spec_replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    })
}

impl ApiServer {
    /// `serviceaccounts/<name>/token`: a signed token for `sa`, for the
    /// audiences (the API's own, `--api-audiences`, when none are asked,
    /// as upstream) and lifetime asked (1 h by default, at least 10 min),
    /// bound to a pod when `boundObjectRef` names one that exists.
    pub(super) async fn token_request(
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
            .unwrap_or_else(|| self.api_audiences.as_slice().to_vec());
        let bound = &spec["boundObjectRef"];
        let pod = match bound["kind"].as_str() {
            None => None,
            Some("Pod") => {
                let pod_name = bound["name"].as_str().unwrap_or_default();
                let pod_res = self
                    .registry
                    .catalog()
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
