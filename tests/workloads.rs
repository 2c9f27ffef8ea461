//! Workload controllers and node lifecycle with simulated nodes, driven by
//! kubectl: DaemonSets land on every node and follow new ones, Jobs
//! complete or fail, CronJobs fire, StatefulSets keep their order, and the
//! pods of a node that stops heartbeating move elsewhere.

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;
use support::{Cluster, wait};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"))
}

async fn client(server: &Cluster) -> Client {
    let kc = Kubeconfig::read_from(&server.kubeconfig).unwrap();
    Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn live(pods: &Value) -> Vec<Value> {
    items(pods)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - {name: agent, image: \"agent:1\"}
";

#[test]
fn daemonset_lands_on_every_node_follows_new_ones_and_rolls_back() {
    let server = Cluster::start();
    let _first = server.simulate("ds", 2, &[]);
    let file = server.write("ds.yaml", DAEMONSET);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let out = server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = server.wait_json(
        &["get", "pods", "-l", "app=agent"],
        30,
        "a daemon on each node",
        |v| live(v).len() == 2,
    );
    let mut nodes: Vec<String> = live(&pods).iter().map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["ds-sim-0", "ds-sim-1"]);

    // A node joining gets its daemon.
    let _second = server.simulate("late", 1, &[]);
    server.wait_json(
        &["get", "pods", "-l", "app=agent"],
        30,
        "a daemon on the new node",
        |v| {
            live(v)
                .iter()
                .any(|p| node_of(p) == "late-sim-0" && p["status"]["phase"] == "Running")
        },
    );
    let ds = server.wait_json(
        &["get", "ds", "agent"],
        30,
        "status counting 3 nodes",
        |v| v["status"]["numberReady"] == 3 && v["status"]["desiredNumberScheduled"] == 3,
    );
    assert_eq!(ds["status"]["updatedNumberScheduled"], 3, "{ds}");

    // Daemons follow the node selector: only labelled nodes keep one.
    server.ok(
        "1.33",
        &[
            "patch",
            "ds",
            "agent",
            "-p",
            r#"{"spec":{"template":{"spec":{"nodeSelector":{"role":"edge"}}}}}"#,
        ],
    );
    server.ok(
        "1.33",
        &["label", "node", "ds-sim-0", "ds-sim-1", "role=edge"],
    );
    server.wait_json(
        &["get", "pods", "-l", "app=agent"],
        30,
        "daemons only on role=edge nodes",
        |v| {
            let mut n: Vec<String> = live(v).iter().map(node_of).collect();
            n.sort();
            n == ["ds-sim-0", "ds-sim-1"]
        },
    );

    // Image update rolls node by node; history has both; undo goes back.
    server.ok("1.33", &["set", "image", "ds/agent", "agent=agent:2"]);
    let out = server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = server.wait_json(
        &["get", "pods", "-l", "app=agent"],
        30,
        "agent:2 everywhere",
        |v| {
            let l = live(v);
            l.len() == 2
                && l.iter()
                    .all(|p| p["spec"]["containers"][0]["image"] == "agent:2")
        },
    );
    assert!(
        live(&pods)
            .iter()
            .all(|p| p["metadata"]["labels"]["controller-revision-hash"].is_string())
    );
    let history = server.ok("1.33", &["rollout", "history", "ds/agent"]);
    assert!(
        history
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count()
            >= 2,
        "{history}"
    );
    server.ok("1.33", &["rollout", "undo", "ds/agent"]);
    server.wait_json(
        &["get", "pods", "-l", "app=agent"],
        60,
        "agent:1 back after undo",
        |v| {
            let l = live(v);
            l.len() == 2
                && l.iter()
                    .all(|p| p["spec"]["containers"][0]["image"] == "agent:1")
        },
    );
    // Deleting the DaemonSet takes its pods and revisions.
    server.ok("1.33", &["delete", "ds", "agent"]);
    server.wait_json(
        &["get", "pods,controllerrevisions", "-l", "app=agent"],
        30,
        "pods and revisions gone",
        |v| items(v).is_empty(),
    );
}

#[test]
fn jobs_complete_or_fail_and_finished_jobs_expire() {
    let server = Cluster::start_with(&["--terminated-pod-gc-threshold", "2"]);
    let _nodes = server.simulate("job", 2, &[]);
    let file = server.write(
        "jobs.yaml",
        "apiVersion: batch/v1
kind: Job
metadata: {name: ok}
spec:
  completions: 4
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [\"true\"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: doomed}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [\"false\"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: brief}
spec:
  ttlSecondsAfterFinished: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [\"true\"]}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/ok",
            "--timeout=60s",
        ],
    );
    let job = json(&server.ok("1.33", &["get", "job", "ok", "-o", "json"]));
    assert_eq!(job["status"]["succeeded"], 4, "{job}");
    assert!(job["status"]["completionTime"].is_string(), "{job}");
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=failed",
            "job/doomed",
            "--timeout=60s",
        ],
    );
    let job = json(&server.ok("1.33", &["get", "job", "doomed", "-o", "json"]));
    let failed = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{job}");
    assert_eq!(job["status"]["failed"], 1, "{job}");
    let describe = server.ok("1.33", &["describe", "job", "ok"]);
    assert!(describe.contains("4 Succeeded"), "{describe}");
    // ttlSecondsAfterFinished: the Job and its pod go.
    server.wait_json(
        &["get", "jobs"],
        30,
        "the brief job deleted after its TTL",
        |v| items(v).iter().all(|j| j["metadata"]["name"] != "brief"),
    );
    // Pod GC keeps 2 terminated pods; the Job's counts survive it.
    server.wait_json(
        &["get", "pods"],
        30,
        "terminated pods down to the threshold",
        |v| live(v).len() <= 2,
    );
    let job = json(&server.ok("1.33", &["get", "job", "ok", "-o", "json"]));
    assert_eq!(
        job["status"]["succeeded"], 4,
        "counts survive pod GC: {job}"
    );
}

#[test]
fn cronjobs_fire_on_schedule_and_keep_their_history() {
    let server = Cluster::start();
    let _nodes = server.simulate("cron", 1, &[]);
    // Bad schedules and zones are refused with the field named.
    let bad = server.write(
        "bad.yaml",
        "apiVersion: batch/v1
kind: CronJob
metadata: {name: bad}
spec:
  schedule: \"61 * * * *\"
  timeZone: Mars/Olympus_Mons
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: [\"true\"]}]
",
    );
    let err = server.fails("1.33", &["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("spec.schedule"), "{err}");
    assert!(err.contains("spec.timeZone"), "{err}");

    let file = server.write(
        "tick.yaml",
        "apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: \"@every 2s\"
  timeZone: Europe/Berlin
  successfulJobsHistoryLimit: 2
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: [\"true\"]}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let cj = server.wait_json(&["get", "cronjob", "tick"], 30, "lastSuccessfulTime", |v| {
        v["status"]["lastSuccessfulTime"].is_string()
    });
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
    // Several runs later (the first ones trimmed away), only two finished
    // Jobs are kept.
    let uids = |v: &Value| -> Vec<String> {
        items(v)
            .iter()
            .map(|j| j["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let first_runs = uids(&json(&server.ok("1.33", &["get", "jobs", "-o", "json"])));
    let jobs = server.wait_json(
        &["get", "jobs"],
        30,
        "history trimmed to 2, the first runs gone",
        |v| {
            let now = uids(v);
            first_runs.iter().all(|u| !now.contains(u))
                && items(v)
                    .iter()
                    .filter(|j| j["status"]["succeeded"] == 1)
                    .count()
                    == 2
        },
    );
    for j in items(&jobs) {
        let name = j["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("tick-"), "{name}");
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    }
    // Suspended: no new Jobs.
    server.ok(
        "1.33",
        &[
            "patch",
            "cronjob",
            "tick",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
    );
    // A run the controller scheduled before it saw the patch may still
    // appear; none scheduled after it may, for several periods.
    let suspended_at = jiff::Timestamp::now();
    let scheduled_after_suspend = || -> Vec<String> {
        let jobs = json(&server.ok("1.33", &["get", "jobs", "-o", "json"]));
        items(&jobs)
            .iter()
            .filter(|j| {
                let at =
                    j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                        .as_str()
                        .expect("a CronJob's Job names its scheduled time");
                at.parse::<jiff::Timestamp>().expect("an RFC 3339 time") > suspended_at
            })
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    wait::holds(
        Duration::from_secs(7),
        "a suspended CronJob starts no Job",
        || scheduled_after_suspend().is_empty(),
    );
    // Forbid: while a run is active (these pods never finish) no other
    // starts; Replace: each run replaces the active one.
    let busy = server.write(
        "busy.yaml",
        "apiVersion: batch/v1
kind: CronJob
metadata: {name: forbid}
spec:
  schedule: \"@every 1s\"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: [sleep, \"3600\"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: replace}
spec:
  schedule: \"@every 1s\"
  concurrencyPolicy: Replace
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: [sleep, \"3600\"]}]
",
    );
    server.ok("1.33", &["apply", "-f", busy.to_str().unwrap()]);
    let owned_by = |jobs: &Value, cj: &str| -> Vec<String> {
        items(jobs)
            .into_iter()
            .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == cj)
            .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
            .map(|j| j["metadata"]["uid"].as_str().unwrap().to_owned())
            .collect()
    };
    let first_replace = owned_by(
        &server.wait_json(&["get", "jobs"], 30, "a replace run", |v| {
            !owned_by(v, "replace").is_empty()
        }),
        "replace",
    );
    // Several 1 s periods: Forbid never runs a second Job meanwhile.
    wait::holds(
        Duration::from_secs(4),
        "Forbid runs one Job at a time",
        || {
            let jobs = json(&server.ok("1.33", &["get", "jobs", "-o", "json"]));
            owned_by(&jobs, "forbid").len() <= 1
        },
    );
    let jobs = json(&server.ok("1.33", &["get", "jobs", "-o", "json"]));
    assert_eq!(
        owned_by(&jobs, "forbid").len(),
        1,
        "Forbid ran concurrently: {jobs}"
    );
    let replace_now = owned_by(&jobs, "replace");
    assert_eq!(replace_now.len(), 1, "Replace left several runs: {jobs}");
    assert_ne!(
        replace_now, first_replace,
        "Replace never replaced the first run"
    );
    server.ok("1.33", &["delete", "cronjob", "forbid", "replace"]);

    // kubectl create job --from works on it.
    server.ok("1.33", &["create", "job", "manual", "--from=cronjob/tick"]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/manual",
            "--timeout=60s",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_creates_in_order_scales_down_in_reverse_and_respects_partition() {
    let server = Cluster::start();
    let _nodes = server.simulate("sts", 2, &[]);
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "default");
    let rv = server.ok(
        "1.33",
        &["get", "pods", "-o", "jsonpath={.metadata.resourceVersion}"],
    );
    let mut events = pods
        .watch(&WatchParams::default().labels("app=db").timeout(120), &rv)
        .await
        .unwrap()
        .boxed();
    let file = server.write(
        "db.yaml",
        "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: \"db:1\"}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let out = server.ok("1.33", &["rollout", "status", "sts/db", "--timeout=60s"]);
    assert!(out.contains("roll"), "{out}");
    // Each pod was created only once the one before was Running and Ready.
    let mut added = Vec::new();
    let mut ready: Vec<String> = Vec::new();
    while added.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Ok(WatchEvent::Added(p)))) => {
                let name = p.metadata.name.unwrap();
                assert_eq!(
                    ready.len(),
                    added.len(),
                    "{name} was created before {:?} was ready",
                    added.last()
                );
                added.push(name);
            }
            Ok(Some(Ok(WatchEvent::Modified(p)))) => {
                let is_ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let name = p.metadata.name.unwrap();
                if is_ready && !ready.contains(&name) {
                    ready.push(name);
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("watch ended early: {other:?}"),
        }
    }
    assert_eq!(added, ["db-0", "db-1", "db-2"]);
    let pod = json(&server.ok("1.33", &["get", "pod", "db-1", "-o", "json"]));
    assert_eq!(pod["spec"]["hostname"], "db-1");
    assert_eq!(pod["spec"]["subdomain"], "db");
    assert_eq!(
        pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );

    // A partitioned update touches only ordinals >= partition.
    server.ok(
        "1.33",
        &[
            "patch",
            "sts",
            "db",
            "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":1}}}}"#,
        ],
    );
    server.ok("1.33", &["set", "image", "sts/db", "db=db:2"]);
    let out = server.ok("1.33", &["rollout", "status", "sts/db", "--timeout=60s"]);
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let images = |server: &Cluster| -> Vec<(String, String)> {
        let list = json(&server.ok("1.33", &["get", "pods", "-l", "app=db", "-o", "json"]));
        let mut v: Vec<(String, String)> = live(&list)
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        images(&server),
        [
            ("db-0".to_owned(), "db:1".to_owned()),
            ("db-1".to_owned(), "db:2".to_owned()),
            ("db-2".to_owned(), "db:2".to_owned())
        ]
    );
    // A deleted pod below the partition comes back at the old revision.
    // (No --wait: the simulated node finishes the pod at once and the
    // new db-0 can appear before kubectl's deletion watch starts.)
    let old_uid = server.ok(
        "1.33",
        &["get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}"],
    );
    server.ok("1.33", &["delete", "pod", "db-0", "--wait=false"]);
    server.wait_json(&["get", "pod", "db-0"], 30, "db-0 back", |v| {
        v["status"]["phase"] == "Running" && v["metadata"]["uid"] != old_uid.as_str()
    });
    assert_eq!(images(&server)[0].1, "db:1");

    // Scale down: highest ordinal first.
    let rv = server.ok(
        "1.33",
        &["get", "pods", "-o", "jsonpath={.metadata.resourceVersion}"],
    );
    let mut events = pods
        .watch(&WatchParams::default().labels("app=db").timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    server.ok("1.33", &["scale", "sts/db", "--replicas=1"]);
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Ok(WatchEvent::Deleted(p)))) => deleted.push(p.metadata.name.unwrap()),
            Ok(Some(Ok(_))) => {}
            other => panic!("watch ended early: {other:?}"),
        }
    }
    assert_eq!(deleted, ["db-2", "db-1"]);
    let sts = server.wait_json(&["get", "sts", "db"], 30, "status of one replica", |v| {
        v["status"]["replicas"] == 1 && v["status"]["readyReplicas"] == 1
    });
    assert!(sts["status"]["currentRevision"].is_string(), "{sts}");
}

#[test]
fn a_silent_node_goes_unknown_its_pods_move_and_it_recovers() {
    let server = Cluster::start_with(&[
        "--node-monitor-grace-period",
        "3",
        "--default-unreachable-toleration-seconds",
        "2",
    ]);
    let _stay = server.simulate("stay", 1, &["--sim-heartbeat", "1"]);
    let lost = server.simulate("lost", 1, &["--sim-heartbeat", "1"]);
    let file = server.write(
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let ds = server.write("ds.yaml", DAEMONSET);
    server.ok("1.33", &["apply", "-f", ds.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/web", "--timeout=60s"],
    );
    server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=60s"]);
    let pods = json(&server.ok("1.33", &["get", "pods", "-l", "app=web", "-o", "json"]));
    let on_lost: Vec<String> = live(&pods)
        .iter()
        .filter(|p| node_of(p) == "lost-sim-0")
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !on_lost.is_empty(),
        "spreading put no pod on the second node"
    );
    // The toleration every pod got honours the flag.
    let pod = &live(&pods)[0];
    let tol = pod["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == "node.kubernetes.io/unreachable")
        .cloned()
        .unwrap();
    assert_eq!(tol["tolerationSeconds"], 2);

    drop(lost);
    let node = server.wait_json(
        &["get", "node", "lost-sim-0"],
        30,
        "Ready=Unknown and unreachable taints",
        |n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .cloned();
            let taints: Vec<(String, String)> = n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (
                        t["key"].as_str().unwrap_or_default().to_owned(),
                        t["effect"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            ready.is_some_and(|c| c["status"] == "Unknown")
                && taints.contains(&("node.kubernetes.io/unreachable".into(), "NoSchedule".into()))
                && taints.contains(&("node.kubernetes.io/unreachable".into(), "NoExecute".into()))
        },
    );
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    // After the toleration, the Deployment's pods run on the other node;
    // the daemon on the lost node stays (it tolerates unreachable).
    server.wait_json(
        &["get", "pods", "-l", "app=web"],
        30,
        "4 web pods running on stay-sim-0",
        |v| {
            live(v)
                .iter()
                .filter(|p| node_of(p) == "stay-sim-0" && p["status"]["phase"] == "Running")
                .count()
                == 4
        },
    );
    let evicted = json(&server.ok("1.33", &["get", "pod", &on_lost[0], "-o", "json"]));
    assert!(
        evicted["metadata"]["deletionTimestamp"].is_string(),
        "{evicted}"
    );
    let daemons = json(&server.ok("1.33", &["get", "pods", "-l", "app=agent", "-o", "json"]));
    assert!(
        live(&daemons).iter().any(|p| node_of(p) == "lost-sim-0"),
        "the daemon on the lost node was evicted: {daemons}"
    );
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={}", on_lost[0]),
        ],
    );
    assert!(events.contains("TaintManagerEviction"), "{events}");

    // The node comes back: Ready, taints gone, schedulable again.
    let _back = server.simulate("lost", 1, &["--sim-heartbeat", "1"]);
    server.wait_json(
        &["get", "node", "lost-sim-0"],
        30,
        "Ready again without taints",
        |n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready && n["spec"]["taints"].as_array().is_none_or(Vec::is_empty)
        },
    );
    // Terminating pods of a deleted node are collected.
    drop(_back);
    server.ok("1.33", &["delete", "node", "lost-sim-0"]);
    server.wait_json(
        &["get", "pods", "-A"],
        30,
        "no pods left bound to the deleted node",
        |v| items(v).iter().all(|p| node_of(p) != "lost-sim-0"),
    );
}
