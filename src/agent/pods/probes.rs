//! Probes: startup, liveness and readiness, each run in a task of its own;
//! their results counted against thresholds, and what that means for the
//! container (ready, or stopped to restart).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::runtime::PodRuntime;
use super::start::pod_address;
use super::teardown::{pod_grace, stop_instance};
use super::{AbortOnDrop, Kubelet, WorkerState, event};
use crate::runtime::shim::ContainerState;

/// One container instance's probes.
#[derive(Default)]
pub(super) struct Probes {
    /// When the worker first saw it running.
    pub(super) since: Option<tokio::time::Instant>,
    /// The startup probe passed (or there is none).
    pub(super) started: bool,
    /// The readiness probe's verdict (true without one, once started).
    pub(super) ready: bool,
    pub(super) next: HashMap<&'static str, tokio::time::Instant>,
    pub(super) successes: HashMap<&'static str, u32>,
    pub(super) failures: HashMap<&'static str, u32>,
    /// A liveness or startup failure asked for a restart.
    pub(super) killed: bool,
    /// The probes running now, by kind.
    pub(super) running: HashMap<&'static str, AbortOnDrop>,
}

/// A probe's result, handed from its task to the pod's worker.
pub(super) struct ProbeDone {
    id: String,
    kind: &'static str,
    result: Result<(), String>,
}

/// Start the probes that are due for the running app containers
/// (startup first; then liveness and readiness), each in a task of its own
/// so a slow probe holds up neither the pod's status nor its restarts, and
/// act on the verdicts that came back: readiness, and stopping a container
/// whose liveness or startup probe failed (it restarts by policy).
pub(super) async fn run_probes(
    k: &Kubelet,
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    state: &mut WorkerState,
) {
    let now = tokio::time::Instant::now();
    // The earliest probe that falls due after this sync.
    let mut wake: Option<tokio::time::Instant> = None;
    let live: std::collections::HashSet<String> =
        instances.values().map(|(_, s)| s.id.clone()).collect();
    // A gone instance's running probes are aborted with it.
    state.probes.retain(|id, _| live.contains(id));
    let pod_ip = pod_address(k, pod, state.pod_ip);
    let mut done: HashMap<(String, &'static str), Result<(), String>> = HashMap::new();
    for d in std::mem::take(&mut *state.probe_results.lock().expect("not poisoned")) {
        done.insert((d.id, d.kind), d.result);
    }
    let sidecars = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always");
    for c in pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(sidecars)
    {
        let name = c["name"].as_str().unwrap_or_default();
        let Some((_, cs)) = instances.get(name) else {
            continue;
        };
        if cs.status != "running" {
            continue;
        }
        let p = state.probes.entry(cs.id.clone()).or_default();
        p.since.get_or_insert(now);
        if c.get("startupProbe").is_none() {
            p.started = true;
        }
        act_on_results(k, pod, c, &cs.id, p, &mut done, pod_ip.as_deref()).await;
        if c.get("readinessProbe").is_none() && p.started {
            p.ready = true;
        }
        if p.killed {
            continue;
        }
        let target = Target {
            uid: pod["metadata"]["uid"].as_str().unwrap_or_default(),
            id: &cs.id,
            container: c,
            pod_ip: pod_ip.as_deref(),
        };
        let (results, events) = (state.probe_results.clone(), state.shim_events.clone());
        if let Some(due) = start_due(k, &target, p, now, &results, &events) {
            wake = Some(wake.map_or(due, |w: tokio::time::Instant| w.min(due)));
        }
    }
    if let Some(w) = wake {
        state.wake_at(w);
    }
}

/// Count the results that came back for instance `id` and act on them:
/// events for failures, and a stop for a failed liveness or startup probe.
async fn act_on_results(
    k: &Kubelet,
    pod: &Value,
    c: &Value,
    id: &str,
    p: &mut Probes,
    done: &mut HashMap<(String, &'static str), Result<(), String>>,
    pod_ip: Option<&str>,
) {
    let name = c["name"].as_str().unwrap_or_default();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let (Some(result), Some(probe)) = (
            done.remove(&(id.to_owned(), kind)),
            c.get(kind).filter(|v| v.is_object()),
        ) else {
            continue;
        };
        p.running.remove(kind);
        let verdict = verdict(p, kind, probe, result);
        let what = match kind {
            "livenessProbe" => "Liveness",
            "readinessProbe" => "Readiness",
            _ => "Startup",
        };
        if let Some(why) = verdict.report {
            event(
                k,
                pod,
                "Warning",
                "Unhealthy",
                format!("{what} probe failed: {}", why.trim()),
            );
        }
        if verdict.kill {
            tracing::info!(pod = %pod["metadata"]["name"], container = name, probe = kind, "probe failed, restarting the container");
            let what = what.to_lowercase();
            event(
                k,
                pod,
                "Normal",
                "Killing",
                format!("Container {name} failed {what} probe, will be restarted"),
            );
            // The probe's own grace period, if it has one.
            let grace = probe["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or_else(|| pod_grace(pod));
            stop_instance(k, uid, id, c, pod_ip.map(str::to_owned), grace).await;
        }
    }
}

/// Start the probes of `target` that are due, each in a task that hands
/// its result back through `results` and rings `events`; when the next
/// one not yet due falls due.
fn start_due(
    k: &Kubelet,
    target: &Target<'_>,
    p: &mut Probes,
    now: tokio::time::Instant,
    results: &Arc<std::sync::Mutex<Vec<ProbeDone>>>,
    events: &Arc<tokio::sync::Notify>,
) -> Option<tokio::time::Instant> {
    let mut wake: Option<tokio::time::Instant> = None;
    let since = p.since.unwrap_or(now);
    // Liveness and readiness take over as soon as startup passes.
    let kinds: &[&'static str] = if p.started {
        &["livenessProbe", "readinessProbe"]
    } else {
        &["startupProbe"]
    };
    for &kind in kinds {
        let Some(probe) = target.container.get(kind).filter(|v| v.is_object()) else {
            continue;
        };
        if p.running.contains_key(kind) {
            // Its verdict wakes the worker.
            continue;
        }
        let secs = |f: &str, d: u64| probe[f].as_u64().unwrap_or(d);
        let first = since + Duration::from_secs(secs("initialDelaySeconds", 0));
        let due = p.next.get(kind).copied().unwrap_or(first).max(first);
        if now < due {
            wake = Some(wake.map_or(due, |w| w.min(due)));
            continue;
        }
        let next = now + Duration::from_secs(secs("periodSeconds", 10).max(1));
        p.next.insert(kind, next);
        let rt = k.runtime.clone();
        let (uid, id, probe, c, pod_ip) = (
            target.uid.to_owned(),
            target.id.to_owned(),
            probe.clone(),
            target.container.clone(),
            target.pod_ip.map(str::to_owned),
        );
        let (results, events) = (results.clone(), events.clone());
        let task = tokio::spawn(async move {
            let target = Target {
                uid: &uid,
                id: &id,
                container: &c,
                pod_ip: pod_ip.as_deref(),
            };
            let result = probe_once(&*rt, &target, &probe).await;
            results.lock().expect("not poisoned").push(ProbeDone {
                id: id.clone(),
                kind,
                result,
            });
            events.notify_one();
        });
        p.running.insert(kind, AbortOnDrop(task));
    }
    wake
}

/// What one probe result means for its container.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Verdict {
    /// Report this failure (once per run of failures: the kubelet's
    /// recorder folds repeats into one event with a count).
    report: Option<String>,
    /// The failure threshold of a liveness or startup probe was reached:
    /// stop the container.
    kill: bool,
}

/// Count one result of probe `kind` against its thresholds.
pub(super) fn verdict(
    p: &mut Probes,
    kind: &'static str,
    probe: &Value,
    result: Result<(), String>,
) -> Verdict {
    let secs = |f: &str, d: u64| probe[f].as_u64().unwrap_or(d);
    let (success_threshold, failure_threshold) = (
        secs("successThreshold", 1).max(1) as u32,
        secs("failureThreshold", 3).max(1) as u32,
    );
    let mut v = Verdict::default();
    match result {
        Ok(()) => {
            p.failures.insert(kind, 0);
            let n = p.successes.entry(kind).or_default();
            *n += 1;
            if *n >= success_threshold {
                match kind {
                    "startupProbe" => p.started = true,
                    "readinessProbe" => p.ready = true,
                    _ => {}
                }
            }
        }
        Err(why) => {
            p.successes.insert(kind, 0);
            let n = p.failures.entry(kind).or_default();
            if *n == 0 {
                v.report = Some(why);
            }
            *n += 1;
            if *n >= failure_threshold {
                match kind {
                    "readinessProbe" => p.ready = false,
                    _ if !p.killed => {
                        p.killed = true;
                        p.ready = false;
                        v.kill = true;
                    }
                    _ => {}
                }
            }
        }
    }
    v
}

/// A named or numbered container port.
pub(super) fn probe_port(port: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// What a probe or hook runs against: a container instance of a pod,
/// and the pod's address.
pub(super) struct Target<'a> {
    pub uid: &'a str,
    pub id: &'a str,
    pub container: &'a Value,
    pub pod_ip: Option<&'a str>,
}

/// Run one probe (or hook): an exec through the runtime, an httpGet or
/// tcpSocket from the node to the probe's `host` or else the pod's
/// address, as the kubelet does.
pub(super) async fn probe_once(
    rt: &dyn PodRuntime,
    target: &Target<'_>,
    probe: &Value,
) -> Result<(), String> {
    let (id, container, pod_ip) = (target.id, target.container, target.pod_ip);
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    let host = |spec: &Value| -> Result<String, String> {
        match spec["host"].as_str().filter(|h| !h.is_empty()) {
            Some(h) => Ok(h.to_owned()),
            None => pod_ip
                .map(str::to_owned)
                .ok_or_else(|| "the pod has no IP address yet".to_owned()),
        }
    };
    let result = if let Some(cmd) = probe.pointer("/exec/command").and_then(Value::as_array) {
        let args = cmd
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        rt.exec(target.uid, id, args, timeout).await
    } else if let Some(tcp) = probe.get("tcpSocket") {
        let Some(port) = probe_port(&tcp["port"], container) else {
            return Err(format!("no container port {}", tcp["port"]));
        };
        crate::agent::probe::tcp(&host(tcp)?, port, timeout).await
    } else if let Some(http) = probe.get("httpGet") {
        let Some(port) = probe_port(&http["port"], container) else {
            return Err(format!("no container port {}", http["port"]));
        };
        let get = crate::agent::probe::HttpGet {
            https: http["scheme"] == "HTTPS",
            host: host(http)?,
            port,
            path: http["path"].as_str().unwrap_or("/").to_owned(),
            headers: http["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| {
                    Some((
                        h["name"].as_str()?.to_owned(),
                        h["value"].as_str()?.to_owned(),
                    ))
                })
                .collect(),
        };
        crate::agent::probe::http(&get, timeout).await
    } else if let Some(g) = probe.get("grpc") {
        let Some(port) = g["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            return Err(format!("no port {}", g["port"]));
        };
        // gRPC probes have no host field: always the pod's address.
        let host = pod_ip.ok_or("the pod has no IP address yet")?;
        crate::agent::probe::grpc(host, port, g["service"].as_str().unwrap_or(""), timeout).await
    } else {
        return Err("the probe names no handler (exec, httpGet, tcpSocket or grpc)".into());
    };
    if let Err(e) = &result {
        tracing::debug!(container = id, message = %e, "probe failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probe_results_count_against_their_thresholds() {
        let mut p = Probes::default();
        let probe = json!({"failureThreshold": 2, "successThreshold": 2});
        let fail = || Err::<(), _>("down".to_owned());
        // Readiness: two successes make it ready, two failures unready;
        // only the first failure of a run is reported.
        assert_eq!(
            verdict(&mut p, "readinessProbe", &probe, Ok(())),
            Verdict::default()
        );
        assert!(!p.ready);
        verdict(&mut p, "readinessProbe", &probe, Ok(()));
        assert!(p.ready);
        let first = verdict(&mut p, "readinessProbe", &probe, fail());
        assert_eq!(first.report.as_deref(), Some("down"));
        assert!(p.ready && !first.kill);
        let second = verdict(&mut p, "readinessProbe", &probe, fail());
        assert_eq!(second, Verdict::default());
        assert!(!p.ready);
        // Liveness: the threshold kills once, however many failures follow.
        verdict(&mut p, "livenessProbe", &probe, fail());
        assert!(verdict(&mut p, "livenessProbe", &probe, fail()).kill);
        assert!(!verdict(&mut p, "livenessProbe", &probe, fail()).kill);
        // Startup: one success (the default threshold) marks it started.
        let mut p = Probes::default();
        verdict(&mut p, "startupProbe", &json!({}), Ok(()));
        assert!(p.started);
    }

    #[test]
    fn liveness_failures_stop_the_container_and_readiness_failures_only_unready_it() {
        let fail = || Err::<(), _>("down".to_owned());
        // kind, results in order → (a kill asked for, ready, started).
        for (kind, results, want) in [
            ("livenessProbe", vec![fail(), fail()], (false, true, true)),
            (
                "livenessProbe",
                vec![fail(), fail(), fail()],
                (true, false, true),
            ),
            (
                "livenessProbe",
                vec![fail(), fail(), Ok(()), fail(), fail()],
                (false, true, true),
            ),
            (
                "readinessProbe",
                vec![fail(), fail(), fail(), fail()],
                (false, false, true),
            ),
            (
                "readinessProbe",
                vec![fail(), fail(), fail(), Ok(())],
                (false, true, true),
            ),
            (
                "startupProbe",
                vec![fail(), fail(), fail()],
                (true, false, false),
            ),
        ] {
            let mut p = Probes {
                started: kind != "startupProbe",
                ready: kind != "startupProbe",
                ..Probes::default()
            };
            let n = results.len();
            // Every result counts (no short cut): each one moves the counters.
            let mut kill = false;
            for r in results {
                kill |= verdict(&mut p, kind, &json!({}), r).kill;
            }
            assert_eq!((kill, p.ready, p.started), want, "{kind} after {n} results");
        }
    }

    #[tokio::test]
    async fn exec_probes_run_in_the_container_through_the_runtime() {
        use super::super::fake::{Call, FakeRuntime};
        let rt = FakeRuntime::default();
        let container = json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]});
        let target = Target {
            uid: "u-1",
            id: "web.2",
            container: &container,
            pod_ip: None,
        };
        let probe = json!({"exec": {"command": ["cat", "/tmp/healthy"]}});
        assert_eq!(probe_once(&rt, &target, &probe).await, Ok(()));
        rt.exec_returns("web.2", Err("no such file".into()), Duration::ZERO);
        assert_eq!(
            probe_once(&rt, &target, &probe).await,
            Err("no such file".to_owned())
        );
        let exec = Call::Exec("web.2".into(), vec!["cat".into(), "/tmp/healthy".into()]);
        assert_eq!(rt.calls(), [exec.clone(), exec]);
        // Without an address a network probe fails before dialling.
        let tcp = json!({"tcpSocket": {"port": "http"}});
        assert_eq!(
            probe_once(&rt, &target, &tcp).await,
            Err("the pod has no IP address yet".to_owned())
        );
        assert_eq!(probe_port(&json!("http"), &container), Some(8080));
        assert_eq!(
            probe_once(&rt, &target, &json!({})).await,
            Err("the probe names no handler (exec, httpGet, tcpSocket or grpc)".to_owned())
        );
    }
}
