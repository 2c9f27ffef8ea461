//! Table output (`as=Table;g=meta.k8s.io;v=v1`): the columns `kubectl get`
//! prints, computed by the server for each kind as upstream's printers do.

use serde_json::{Value, json};

/// One column definition.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0 for always shown, 1 for `-o wide` only.
    pub priority: u8,
}

const fn col(name: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description: NAME_DESCRIPTION,
        priority,
    }
}

/// The Name column's description (ObjectMeta's `name`).
pub const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: NAME_DESCRIPTION,
    priority: 0,
};

/// The Age column's description (ObjectMeta's `creationTimestamp`).
pub const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    description: AGE_DESCRIPTION,
    priority: 0,
};

/// Which of upstream's printers a kind's rows come from. A kind's strategy
/// names its printer; kinds without one (and kinds added at run time, until
/// they bring printer columns of their own) get [`Printer::Default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printer {
    Pod,
    Namespace,
    Node,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
    ServiceAccount,
    /// core/v1 and events.k8s.io/v1 Events.
    Event,
    Lease,
    Deployment,
    ReplicaSet,
    ReplicationController,
    DaemonSet,
    StatefulSet,
    ControllerRevision,
    Job,
    CronJob,
    EndpointSlice,
    RoleBinding,
    ClusterRoleBinding,
    CertificateSigningRequest,
    /// Name and creation time.
    Default,
}

/// The columns of a printer.
pub fn columns(printer: Printer) -> Vec<Column> {
    match printer {
        Printer::Pod => vec![
            NAME,
            col("Ready", 0),
            col("Status", 0),
            col("Restarts", 0),
            AGE,
            col("IP", 1),
            col("Node", 1),
            col("Nominated Node", 1),
            col("Readiness Gates", 1),
        ],
        Printer::Namespace => vec![NAME, col("Status", 0), AGE],
        Printer::Node => vec![
            NAME,
            col("Status", 0),
            col("Roles", 0),
            AGE,
            col("Version", 0),
            col("Internal-IP", 1),
            col("External-IP", 1),
            col("OS-Image", 1),
            col("Kernel-Version", 1),
            col("Container-Runtime", 1),
        ],
        Printer::Service => vec![
            NAME,
            col("Type", 0),
            col("Cluster-IP", 0),
            col("External-IP", 0),
            col("Port(s)", 0),
            AGE,
            col("Selector", 1),
        ],
        Printer::Endpoints => vec![NAME, col("Endpoints", 0), AGE],
        Printer::ConfigMap => vec![NAME, col("Data", 0), AGE],
        Printer::Secret => vec![NAME, col("Type", 0), col("Data", 0), AGE],
        Printer::ServiceAccount => vec![NAME, col("Secrets", 0), AGE],
        Printer::Event => vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Subobject", 1),
            col("Source", 1),
            col("Message", 0),
            col("First Seen", 1),
            col("Count", 1),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        Printer::Lease => vec![NAME, col("Holder", 0), AGE],
        Printer::Deployment => vec![
            NAME,
            col("Ready", 0),
            col("Up-to-date", 0),
            col("Available", 0),
            AGE,
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        Printer::ReplicaSet | Printer::ReplicationController => vec![
            NAME,
            col("Desired", 0),
            col("Current", 0),
            col("Ready", 0),
            AGE,
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        Printer::DaemonSet => vec![
            NAME,
            col("Desired", 0),
            col("Current", 0),
            col("Ready", 0),
            col("Up-to-date", 0),
            col("Available", 0),
            col("Node Selector", 0),
            AGE,
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        Printer::StatefulSet => vec![
            NAME,
            col("Ready", 0),
            AGE,
            col("Containers", 1),
            col("Images", 1),
        ],
        Printer::ControllerRevision => {
            vec![NAME, col("Controller", 0), col("Revision", 0), AGE]
        }
        Printer::Job => vec![
            NAME,
            col("Status", 0),
            col("Completions", 0),
            col("Duration", 0),
            AGE,
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        Printer::CronJob => vec![
            NAME,
            col("Schedule", 0),
            col("Timezone", 0),
            col("Suspend", 0),
            col("Active", 0),
            col("Last Schedule", 0),
            AGE,
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        Printer::EndpointSlice => vec![
            NAME,
            col("AddressType", 0),
            col("Ports", 0),
            col("Endpoints", 0),
            AGE,
        ],
        Printer::RoleBinding | Printer::ClusterRoleBinding => {
            let (role, users, groups, accounts) = if printer == Printer::RoleBinding {
                (
                    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error.",
                    "Users in the roleBinding",
                    "Groups in the roleBinding",
                    "ServiceAccounts in the roleBinding",
                )
            } else {
                (
                    "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error.",
                    "Users in the clusterRoleBinding",
                    "Groups in the clusterRoleBinding",
                    "ServiceAccounts in the clusterRoleBinding",
                )
            };
            let described = |name: &'static str, description: &'static str, priority: u8| Column {
                description,
                ..col(name, priority)
            };
            vec![
                NAME,
                described("Role", role, 0),
                AGE,
                described("Users", users, 1),
                described("Groups", groups, 1),
                described("ServiceAccounts", accounts, 1),
            ]
        }
        Printer::CertificateSigningRequest => vec![
            NAME,
            AGE,
            col("SignerName", 0),
            col("Requestor", 0),
            col("RequestedDuration", 0),
            col("Condition", 0),
        ],
        Printer::Default => vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                format: "",
                description: "",
                priority: 0,
            },
        ],
    }
}

/// `columnDefinitions` of a Table.
pub fn column_definitions(printer: Printer) -> Value {
    Value::Array(
        columns(printer)
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.kind,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

/// Upstream's short human duration (`5m`, `3h12m`, `2d`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Seconds since an RFC 3339 timestamp, or `None`.
fn since(ts: Option<&Value>, now: jiff::Timestamp) -> Option<i64> {
    let t: jiff::Timestamp = ts?.as_str()?.parse().ok()?;
    Some(now.as_second() - t.as_second())
}

fn age(obj: &Value, now: jiff::Timestamp) -> Value {
    match since(obj.pointer("/metadata/creationTimestamp"), now) {
        Some(s) => json!(human_duration(s)),
        None => json!("<unknown>"),
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// A binding's row: its role as `Kind/name`, then (wide) the names of its
/// users, groups and service accounts (`namespace/name`); subjects of
/// another kind are left out.
fn binding_cells(obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let role = format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"));
    let (mut users, mut groups, mut accounts) = (Vec::new(), Vec::new(), Vec::new());
    for subject in obj
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = s(subject, "/name");
        match s(subject, "/kind") {
            "User" => users.push(name.to_owned()),
            "Group" => groups.push(name.to_owned()),
            "ServiceAccount" => accounts.push(format!("{}/{name}", s(subject, "/namespace"))),
            _ => {}
        }
    }
    vec![
        name(obj),
        json!(role),
        age(obj, now),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(accounts.join(", ")),
    ]
}

/// A CertificateSigningRequest's row, as upstream prints it: the
/// condition is Denied, Approved or Pending, then `,Failed` and `,Issued`.
fn csr_cells(obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let has = |ty: &str| {
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty))
    };
    let mut condition = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_owned();
    if has("Failed") {
        condition.push_str(",Failed");
    }
    if !s(obj, "/status/certificate").is_empty() {
        condition.push_str(",Issued");
    }
    let duration = match obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
    {
        Some(secs) => json!(human_duration(secs)),
        None => json!("<none>"),
    };
    vec![
        name(obj),
        age(obj, now),
        json!(s(obj, "/spec/signerName")),
        json!(s(obj, "/spec/username")),
        duration,
        json!(condition),
    ]
}

fn name(obj: &Value) -> Value {
    json!(s(obj, "/metadata/name"))
}

fn or_none(text: String) -> Value {
    json!(if text.is_empty() {
        "<none>".to_owned()
    } else {
        text
    })
}

fn containers_and_images(template_spec: Option<&Value>) -> (Value, Value) {
    let cs = template_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (json!(names.join(",")), json!(images.join(",")))
}

/// A `metav1.LabelSelector` as text (`app=web,tier in (a,b)`).
fn selector_text(sel: Option<&Value>) -> Value {
    let Some(sel) = sel else {
        return json!("<none>");
    };
    match crate::api::selector::LabelSelector::from_label_selector(sel) {
        Ok(parsed) if !parsed.is_empty() => {
            // Sorted like upstream's metav1.FormatLabelSelector.
            let mut parts: Vec<String> =
                parsed.requirements.iter().map(|r| r.to_string()).collect();
            parts.sort();
            json!(parts.join(","))
        }
        _ => json!("<none>"),
    }
}

fn map_text(m: Option<&Value>) -> String {
    m.and_then(Value::as_object)
        .map(|m| {
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            parts.sort();
            parts.join(",")
        })
        .unwrap_or_default()
}

/// The cells of one row, in column order.
pub fn cells(printer: Printer, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    match printer {
        Printer::Pod => pod_cells(obj, now),
        Printer::Namespace => vec![name(obj), json!(s(obj, "/status/phase")), age(obj, now)],
        Printer::Node => node_cells(obj, now),
        Printer::Service => service_cells(obj, now),
        Printer::Endpoints => {
            let mut eps = Vec::new();
            for subset in obj
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| n(p, "/port"))
                    .collect();
                for a in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ip = s(a, "/ip");
                    if ports.is_empty() {
                        eps.push(ip.to_owned());
                    }
                    for p in &ports {
                        eps.push(format!("{ip}:{p}"));
                    }
                }
            }
            let text = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name(obj), or_none(text), age(obj, now)]
        }
        Printer::ConfigMap => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|f| {
                    obj.get(*f)
                        .and_then(Value::as_object)
                        .map_or(0, |m| m.len())
                })
                .sum::<usize>();
            vec![name(obj), json!(count), age(obj, now)]
        }
        Printer::Secret => {
            let count = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![
                name(obj),
                json!(s(obj, "/type")),
                json!(count),
                age(obj, now),
            ]
        }
        Printer::ServiceAccount => {
            let count = obj
                .get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name(obj), json!(count), age(obj, now)]
        }
        Printer::Event => event_cells(obj, now),
        Printer::Lease => vec![
            name(obj),
            json!(s(obj, "/spec/holderIdentity")),
            age(obj, now),
        ],
        Printer::Deployment => {
            let (c, i) = containers_and_images(obj.pointer("/spec/template/spec"));
            vec![
                name(obj),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                age(obj, now),
                c,
                i,
                selector_text(obj.pointer("/spec/selector")),
            ]
        }
        Printer::ReplicationController => {
            let (c, i) = containers_and_images(obj.pointer("/spec/template/spec"));
            vec![
                name(obj),
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                age(obj, now),
                c,
                i,
                or_none(map_text(obj.pointer("/spec/selector"))),
            ]
        }
        Printer::ReplicaSet => {
            let (c, i) = containers_and_images(obj.pointer("/spec/template/spec"));
            vec![
                name(obj),
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                age(obj, now),
                c,
                i,
                selector_text(obj.pointer("/spec/selector")),
            ]
        }
        Printer::DaemonSet => {
            let (c, i) = containers_and_images(obj.pointer("/spec/template/spec"));
            vec![
                name(obj),
                json!(n(obj, "/status/desiredNumberScheduled")),
                json!(n(obj, "/status/currentNumberScheduled")),
                json!(n(obj, "/status/numberReady")),
                json!(n(obj, "/status/updatedNumberScheduled")),
                json!(n(obj, "/status/numberAvailable")),
                or_none(map_text(obj.pointer("/spec/template/spec/nodeSelector"))),
                age(obj, now),
                c,
                i,
                selector_text(obj.pointer("/spec/selector")),
            ]
        }
        Printer::StatefulSet => {
            let (c, i) = containers_and_images(obj.pointer("/spec/template/spec"));
            vec![
                name(obj),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                age(obj, now),
                c,
                i,
            ]
        }
        Printer::ControllerRevision => {
            let owner = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|o| o.iter().find(|r| r.get("controller") == Some(&json!(true))))
                .map(|r| {
                    let group = s(r, "/apiVersion")
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    format!("{}.{group}/{}", s(r, "/kind").to_lowercase(), s(r, "/name"))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name(obj),
                json!(owner),
                json!(n(obj, "/revision")),
                age(obj, now),
            ]
        }
        Printer::Job => job_cells(obj, now),
        Printer::CronJob => {
            let (c, i) = containers_and_images(obj.pointer("/spec/jobTemplate/spec/template/spec"));
            let last = match since(obj.pointer("/status/lastScheduleTime"), now) {
                Some(secs) => human_duration(secs),
                None => "<none>".into(),
            };
            let tz = s(obj, "/spec/timeZone");
            vec![
                name(obj),
                json!(s(obj, "/spec/schedule")),
                json!(if tz.is_empty() { "<none>" } else { tz }),
                json!(if obj.pointer("/spec/suspend") == Some(&json!(true)) {
                    "True"
                } else {
                    "False"
                }),
                json!(
                    obj.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                ),
                json!(last),
                age(obj, now),
                c,
                i,
                selector_text(obj.pointer("/spec/jobTemplate/spec/selector")),
            ]
        }
        Printer::EndpointSlice => {
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| n(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .collect();
            let addr_text = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                name(obj),
                json!(s(obj, "/addressType")),
                or_none(ports.join(",")),
                or_none(addr_text),
                age(obj, now),
            ]
        }
        Printer::RoleBinding | Printer::ClusterRoleBinding => binding_cells(obj, now),
        Printer::CertificateSigningRequest => csr_cells(obj, now),
        Printer::Default => vec![name(obj), json!(s(obj, "/metadata/creationTimestamp"))],
    }
}

fn pod_cells(pod: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = s(pod, "/status/phase").to_owned();
    if let Some(r) = pod.pointer("/status/reason").and_then(Value::as_str) {
        reason = r.to_owned();
    }
    let mut restarts = 0;
    let mut last_restart: Option<i64> = None;
    let mut ready = 0;
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Init containers first: a pod still initialising says so.
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, st) in pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        restarts += n(st, "/restartCount");
        if s(st, "/state/terminated/reason") == "Completed"
            || (st.pointer("/state/terminated").is_some()
                && n(st, "/state/terminated/exitCode") == 0)
        {
            continue;
        }
        if st.pointer("/started") == Some(&json!(true)) && st.pointer("/state/running").is_some() {
            // A sidecar (restartable init container) that is running.
            continue;
        }
        initializing = true;
        reason = if let Some(r) = st
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            format!("Init:{r}")
        } else if st.pointer("/state/terminated").is_some() {
            format!("Init:ExitCode:{}", n(st, "/state/terminated/exitCode"))
        } else if let Some(r) = st
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for st in statuses.iter().rev() {
            restarts += n(st, "/restartCount");
            if let Some(t) = since(st.pointer("/lastState/terminated/finishedAt"), now) {
                last_restart = Some(last_restart.map_or(t, |l: i64| l.min(t)));
            }
            if let Some(r) = st
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = r.to_owned();
            } else if let Some(r) = st
                .pointer("/state/terminated/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = r.to_owned();
            } else if st.pointer("/state/terminated").is_some() {
                let sig = n(st, "/state/terminated/signal");
                reason = if sig != 0 {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", n(st, "/state/terminated/exitCode"))
                };
            } else if st.pointer("/ready") == Some(&json!(true))
                && st.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    if reason.is_empty() {
        reason = "Pending".into();
    }
    let restarts_text = match last_restart {
        Some(ago) if restarts > 0 => format!("{restarts} ({} ago)", human_duration(ago)),
        _ => restarts.to_string(),
    };
    let ip = s(pod, "/status/podIP");
    let node = s(pod, "/spec/nodeName");
    let nominated = s(pod, "/status/nominatedNodeName");
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    vec![
        name(pod),
        json!(format!("{ready}/{containers}")),
        json!(reason),
        json!(restarts_text),
        age(pod, now),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!(if nominated.is_empty() {
            "<none>"
        } else {
            nominated
        }),
        json!(if gates == 0 {
            "<none>".to_owned()
        } else {
            format!("0/{gates}")
        }),
    ]
}

fn node_cells(node: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut status = Vec::new();
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| s(c, "/type") == "Ready"));
    match ready {
        Some(c) if s(c, "/status") == "True" => status.push("Ready"),
        Some(_) => status.push("NotReady"),
        None => status.push("Unknown"),
    }
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_owned)
                .or_else(|| {
                    (k == "kubernetes.io/role").then(|| v.as_str().unwrap_or_default().to_owned())
                })
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let addr = |t: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| s(x, "/type") == t))
            .map(|x| s(x, "/address").to_owned())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        name(node),
        json!(status.join(",")),
        or_none(roles.join(",")),
        age(node, now),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(node, "/status/nodeInfo/osImage")),
        json!(s(node, "/status/nodeInfo/kernelVersion")),
        json!(s(node, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn service_cells(svc: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let kind = s(svc, "/spec/type");
    let cluster_ip = s(svc, "/spec/clusterIP");
    let mut external: Vec<String> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let external_text = match kind {
        "ExternalName" => s(svc, "/spec/externalName").to_owned(),
        "LoadBalancer" => {
            for ing in svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = s(ing, "/ip");
                external.push(if ip.is_empty() {
                    s(ing, "/hostname").to_owned()
                } else {
                    ip.to_owned()
                });
            }
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        _ => {
            if external.is_empty() {
                "<none>".into()
            } else {
                external.join(",")
            }
        }
    };
    let ports: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let np = n(p, "/nodePort");
            let proto = s(p, "/protocol");
            if np > 0 {
                format!("{}:{np}/{proto}", n(p, "/port"))
            } else {
                format!("{}/{proto}", n(p, "/port"))
            }
        })
        .collect();
    vec![
        name(svc),
        json!(kind),
        json!(if cluster_ip.is_empty() {
            "<none>"
        } else {
            cluster_ip
        }),
        json!(external_text),
        or_none(ports.join(",")),
        age(svc, now),
        or_none(map_text(svc.pointer("/spec/selector"))),
    ]
}

fn event_cells(ev: &Value, now: jiff::Timestamp) -> Vec<Value> {
    // core/v1 and events.k8s.io/v1 name the same things differently.
    let obj = ev
        .get("involvedObject")
        .or_else(|| ev.get("regarding"))
        .cloned()
        .unwrap_or(Value::Null);
    let first = ev
        .get("firstTimestamp")
        .filter(|v| !v.is_null())
        .or_else(|| ev.get("eventTime"))
        .or_else(|| ev.pointer("/metadata/creationTimestamp"));
    let last = ev
        .get("lastTimestamp")
        .filter(|v| !v.is_null())
        .or_else(|| ev.pointer("/series/lastObservedTime"))
        .or(first);
    let fmt =
        |t: Option<&Value>| since(t, now).map_or_else(|| "<unknown>".to_owned(), human_duration);
    let source = {
        let component = s(ev, "/source/component");
        let component = if component.is_empty() {
            s(ev, "/reportingController")
        } else {
            component
        };
        let host = s(ev, "/source/host");
        if host.is_empty() {
            component.to_owned()
        } else {
            format!("{component}, {host}")
        }
    };
    let message = ev
        .get("message")
        .or_else(|| ev.get("note"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let count = ev
        .get("count")
        .and_then(Value::as_i64)
        .or_else(|| ev.pointer("/series/count").and_then(Value::as_i64))
        .unwrap_or(1);
    vec![
        json!(fmt(last)),
        json!(s(ev, "/type")),
        json!(s(ev, "/reason")),
        json!(format!(
            "{}/{}",
            s(&obj, "/kind").to_lowercase(),
            s(&obj, "/name")
        )),
        json!(s(&obj, "/fieldPath")),
        json!(source),
        json!(message.trim()),
        json!(fmt(first)),
        json!(count),
        name(ev),
    ]
}

fn job_cells(job: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let (c, i) = containers_and_images(job.pointer("/spec/template/spec"));
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(total) => format!("{}/{total}", n(job, "/status/succeeded")),
        None => {
            let parallelism = n(job, "/spec/parallelism");
            if parallelism > 1 {
                format!("{}/1 of {parallelism}", n(job, "/status/succeeded"))
            } else {
                format!("{}/1", n(job, "/status/succeeded"))
            }
        }
    };
    let conditions = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .any(|x| s(x, "/type") == t && s(x, "/status") == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let duration = match (
        job.pointer("/status/startTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
        job.pointer("/status/completionTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
    ) {
        (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
        (Some(start), None) => human_duration(now.as_second() - start.as_second()),
        _ => String::new(),
    };
    vec![
        name(job),
        json!(status),
        json!(completions),
        json!(duration),
        age(job, now),
        c,
        i,
        selector_text(job.pointer("/spec/selector")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn human_durations_match_upstream() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 600, "3h10m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (20 * 86400, "20d"),
            (3 * 365 * 86400 + 5 * 86400, "3y5d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn columns_and_cells_line_up_for_every_kind() {
        let now = at("2026-01-01T00:10:00Z");
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for p in [
            Printer::Pod,
            Printer::Namespace,
            Printer::Node,
            Printer::Service,
            Printer::Endpoints,
            Printer::ConfigMap,
            Printer::Secret,
            Printer::ServiceAccount,
            Printer::Event,
            Printer::Lease,
            Printer::Deployment,
            Printer::ReplicaSet,
            Printer::ReplicationController,
            Printer::DaemonSet,
            Printer::StatefulSet,
            Printer::ControllerRevision,
            Printer::Job,
            Printer::CronJob,
            Printer::EndpointSlice,
            Printer::RoleBinding,
            Printer::ClusterRoleBinding,
            Printer::CertificateSigningRequest,
            Printer::Default,
        ] {
            assert_eq!(columns(p).len(), cells(p, &obj, now).len(), "{p:?}");
        }
    }

    #[test]
    fn pod_row_shows_readiness_status_and_restarts() {
        let now = at("2026-01-01T01:00:00Z");
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"finishedAt": "2026-01-01T00:58:00Z"}}}
            ]}
        });
        let row = cells(Printer::Pod, &pod, now);
        assert_eq!(
            row[..6],
            [
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3 (2m ago)"),
                json!("60m"),
                json!("10.42.0.5")
            ]
        );
        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(cells(Printer::Pod, &pending, now)[2], "Pending");
    }

    #[test]
    fn deployment_row() {
        let now = at("2026-01-01T00:00:30Z");
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            cells(Printer::Deployment, &d, now),
            [
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("30s"),
                json!("nginx"),
                json!("nginx:1"),
                json!("app=web")
            ]
        );
    }

    #[test]
    fn replication_controller_row_prints_its_map_selector() {
        let now = at("2026-01-01T00:00:30Z");
        let rc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "selector": {"tier": "front", "app": "web"},
                     "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2}
        });
        let names: Vec<&str> = columns(Printer::ReplicationController)
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            cells(Printer::ReplicationController, &rc, now),
            [
                json!("web"),
                json!(3),
                json!(3),
                json!(2),
                json!("30s"),
                json!("nginx"),
                json!("nginx:1"),
                json!("app=web,tier=front")
            ]
        );
    }
}
