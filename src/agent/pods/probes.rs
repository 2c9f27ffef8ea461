//! Probes: startup, liveness and readiness, each run in a task of its own;
//! their results counted against thresholds, and what that means for the
//! container (ready, or stopped to restart).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::start::pod_address;
use super::teardown::{pod_grace, stop_instance};
use super::{AbortOnDrop, Kubelet, WorkerState, blocking, event};
use crate::runtime::shim::{self, ContainerState};

/// One container instance's probes.
#[derive(Default)]
pub(super) struct Probes {
    /// When the worker first saw it running.
    since: Option<tokio::time::Instant>,
    /// The startup probe passed (or there is none).
    pub(super) started: bool,
    /// The readiness probe's verdict (true without one, once started).
    pub(super) ready: bool,
    next: HashMap<&'static str, tokio::time::Instant>,
    successes: HashMap<&'static str, u32>,
    failures: HashMap<&'static str, u32>,
    /// A liveness or startup failure asked for a restart.
    killed: bool,
    /// The probes running now, by kind.
    running: HashMap<&'static str, AbortOnDrop>,
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
    socket: &Path,
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
        let since = *p.since.get_or_insert(now);
        if c.get("startupProbe").is_none() {
            p.started = true;
        }
        for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let (Some(result), Some(probe)) = (
                done.remove(&(cs.id.clone(), kind)),
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
                stop_instance(socket, &cs.id, c, pod_ip.clone(), grace).await;
            }
        }
        if c.get("readinessProbe").is_none() && p.started {
            p.ready = true;
        }
        if p.killed {
            continue;
        }
        // Liveness and readiness take over as soon as startup passes.
        let kinds: &[&'static str] = if p.started {
            &["livenessProbe", "readinessProbe"]
        } else {
            &["startupProbe"]
        };
        for &kind in kinds {
            let Some(probe) = c.get(kind).filter(|v| v.is_object()) else {
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
                wake = Some(wake.map_or(due, |w: tokio::time::Instant| w.min(due)));
                continue;
            }
            let next = now + Duration::from_secs(secs("periodSeconds", 10).max(1));
            p.next.insert(kind, next);
            let (socket, id, probe, c, pod_ip) = (
                socket.to_owned(),
                cs.id.clone(),
                probe.clone(),
                c.clone(),
                pod_ip.clone(),
            );
            let (results, events) = (state.probe_results.clone(), state.shim_events.clone());
            let task = tokio::spawn(async move {
                let result = probe_once(&socket, &id, &probe, &c, pod_ip.as_deref()).await;
                results
                    .lock()
                    .expect("not poisoned")
                    .push(ProbeDone { id, kind, result });
                events.notify_one();
            });
            p.running.insert(kind, AbortOnDrop(task));
        }
    }
    if let Some(w) = wake {
        state.wake_at(w);
    }
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

/// Run one probe (or hook): an exec through the shim, an httpGet or
/// tcpSocket from the node to the probe's `host` or else `pod_ip`, as the
/// kubelet does.
pub(super) async fn probe_once(
    socket: &Path,
    id: &str,
    probe: &Value,
    container: &Value,
    pod_ip: Option<&str>,
) -> Result<(), String> {
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
        exec_probe(socket, id, args, timeout).await
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

/// An exec probe or hook: the command runs as a streaming exec, so the
/// shim goes on serving the pod while it runs; here it is waited for up
/// to `timeout`, and killed (the shim sees us hang up) when it overruns.
/// Its output (the first 10 KiB) is the failure message.
pub(super) async fn exec_probe(
    socket: &Path,
    id: &str,
    args: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    const KEEP: u64 = 10 * 1024;
    let (socket, id) = (socket.to_owned(), id.to_owned());
    blocking(move || {
        let mut session = shim::exec_stream(&socket, &id, args, false, false, None, true)
            .map_err(|e| e.to_string())?;
        let readers: Vec<_> = std::mem::take(&mut session.fds)
            .into_iter()
            .map(|fd| {
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut out = Vec::new();
                    let mut f = std::fs::File::from(fd);
                    let _ = (&mut f).take(KEEP).read_to_end(&mut out);
                    // Drain the rest so the command never blocks on a full pipe.
                    let _ = std::io::copy(&mut f, &mut std::io::sink());
                    out
                })
            })
            .collect();
        match session.wait_for(timeout).map_err(|e| e.to_string())? {
            Some(code) => {
                let output: Vec<u8> = readers
                    .into_iter()
                    .filter_map(|r| r.join().ok())
                    .flatten()
                    .collect();
                if code == 0 {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(&output).trim_end().to_owned();
                    Err(if text.is_empty() {
                        format!("command exited with {code}")
                    } else {
                        text
                    })
                }
            }
            // Dropping the session hangs up: the shim kills the command.
            None => Err(format!(
                "command timed out after {}s",
                timeout.as_secs_f32()
            )),
        }
    })
    .await
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
}
