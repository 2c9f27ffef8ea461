//! Defaulting: the values the API server fills in when a client leaves them
//! out, so objects read back as they would from upstream Kubernetes.

use serde_json::{Map, Value, json};

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut()
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        None | Some(Value::Null) => {
            map.insert(key.to_owned(), value);
        }
        _ => {}
    }
}

fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    if !map.contains_key(key) || map[key].is_null() {
        map.insert(key.to_owned(), json!({}));
    }
    map.get_mut(key).and_then(Value::as_object_mut)
}

/// The object's `spec`, made an empty map when missing or null; `None`
/// when the object or its spec is not a map.
fn spec_of(object: &mut Value) -> Option<&mut Map<String, Value>> {
    child(object.as_object_mut()?, "spec")
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // A tag is after the last ':' that follows the last '/'.
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(probe: &mut Value) {
    let Some(p) = probe.as_object_mut() else {
        return;
    };
    set_default(p, "timeoutSeconds", json!(1));
    set_default(p, "periodSeconds", json!(10));
    set_default(p, "successThreshold", json!(1));
    set_default(p, "failureThreshold", json!(3));
    if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_default(get, "scheme", json!("HTTP"));
        set_default(get, "path", json!("/"));
    }
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else {
        return;
    };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    for port in c
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.as_object_mut() {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            default_probe(p);
        }
    }
}

/// Defaults of a pod spec (also used for workload templates).
pub fn default_pod_spec(spec: &mut Value) {
    let Some(s) = obj(spec) else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        for c in s
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default_container(c);
        }
    }
    for v in s
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for source in ["configMap", "secret"] {
            if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
                set_default(src, "defaultMode", json!(420));
            }
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(t) = child(spec, "template") {
        if let Some(s) = t.get_mut("spec") {
            default_pod_spec(s);
        } else {
            let mut s = json!({});
            default_pod_spec(&mut s);
            t.insert("spec".into(), s);
        }
        set_default(t, "metadata", json!({}));
    }
}

/// The defaults of a Pod.
pub fn pod(object: &mut Value) {
    let Some(root) = object.as_object_mut() else {
        return;
    };
    if let Some(spec) = root.get_mut("spec") {
        default_pod_spec(spec);
        // Pod-only defaults (templates do not get them upstream). Priority
        // and preemptionPolicy are the Priority admission plugin's.
        if let Some(s) = spec.as_object_mut() {
            set_default(s, "enableServiceLinks", json!(true));
        }
    }
}

/// The defaults of a Deployment.
pub fn deployment(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = child(spec, "strategy").expect("just inserted");
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = child(strategy, "rollingUpdate").expect("just inserted");
        set_default(ru, "maxUnavailable", json!("25%"));
        set_default(ru, "maxSurge", json!("25%"));
    }
    default_template(spec);
}

/// The defaults of a ReplicaSet.
pub fn replica_set(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    default_template(spec);
}

/// The defaults of a DaemonSet.
pub fn daemon_set(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set_default(spec, "revisionHistoryLimit", json!(10));
    let strategy = child(spec, "updateStrategy").expect("just inserted");
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = child(strategy, "rollingUpdate").expect("just inserted");
        set_default(ru, "maxUnavailable", json!(1));
        set_default(ru, "maxSurge", json!(0));
    }
    default_template(spec);
}

/// The defaults of a StatefulSet.
pub fn stateful_set(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    let strategy = child(spec, "updateStrategy").expect("just inserted");
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = child(strategy, "rollingUpdate").expect("just inserted");
        set_default(ru, "partition", json!(0));
    }
    default_template(spec);
}

/// The defaults of a Job.
pub fn job(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    default_job_spec(spec);
}

/// The defaults of a CronJob.
pub fn cron_job(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(jt) = child(spec, "jobTemplate")
        && let Some(js) = child(jt, "spec")
    {
        default_job_spec(js);
    }
}

/// The defaults of a Service.
pub fn service(object: &mut Value) {
    let Some(spec) = spec_of(object) else {
        return;
    };
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    for port in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.as_object_mut() {
            set_default(p, "protocol", json!("TCP"));
            if let Some(number) = p.get("port").cloned() {
                set_default(p, "targetPort", number);
            }
        }
    }
}

/// The defaults of a Secret.
pub fn secret(object: &mut Value) {
    let Some(root) = object.as_object_mut() else {
        return;
    };
    set_default(root, "type", json!("Opaque"));
    // stringData is write-only: it is folded into data.
    if let Some(Value::Object(string_data)) = root.remove("stringData") {
        use base64::Engine as _;
        let data = child(root, "data").expect("just inserted");
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// The defaults of a Namespace.
pub fn namespace(object: &mut Value) {
    let Some(root) = object.as_object_mut() else {
        return;
    };
    let spec = child(root, "spec").expect("just inserted");
    set_default(spec, "finalizers", json!(["kubernetes"]));
}

/// The defaults of a ReplicationController (upstream's
/// SetDefaults_ReplicationController): the selector and, when it has none,
/// the object's labels come from the template's labels; one replica.
pub fn replication_controller(object: &mut Value) {
    let Some(root) = object.as_object_mut() else {
        return;
    };
    let Some(spec) = child(root, "spec") else {
        return;
    };
    let template_labels = spec
        .get("template")
        .and_then(|t| t.pointer("/metadata/labels"))
        .filter(|l| l.is_object())
        .cloned();
    let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
    if let Some(labels) = &template_labels
        && empty(spec.get("selector"))
    {
        spec.insert("selector".into(), labels.clone());
    }
    set_default(spec, "replicas", json!(1));
    if spec.get("template").is_some_and(|t| !t.is_null()) {
        default_template(spec);
    }
    if let Some(labels) = template_labels {
        let meta = child(root, "metadata").expect("just inserted");
        if empty(meta.get("labels")) {
            meta.insert("labels".into(), labels);
        }
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    let has_completions = spec.get("completions").is_some_and(|v| !v.is_null());
    let has_parallelism = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !has_completions && !has_parallelism {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    default_template(spec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("localhost:5000/busybox", "Always"),
            ("localhost:5000/busybox:v1", "IfNotPresent"),
            ("busybox@sha256:abc", "IfNotPresent"),
        ] {
            assert_eq!(image_pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn deployment_defaults_match_upstream() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80}]}]}}}});
        deployment(&mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn recreate_strategy_gets_no_rolling_update() {
        let mut d = json!({"spec": {"strategy": {"type": "Recreate"}}});
        deployment(&mut d);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn service_defaults_and_target_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        service(&mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut s = json!({"stringData": {"user": "admin"}});
        secret(&mut s);
        assert_eq!(s, json!({"type": "Opaque", "data": {"user": "YWRtaW4="}}));
    }
}
