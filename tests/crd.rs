//! CustomResourceDefinitions (issue #23), as far as they go today: the
//! definitions are defaulted and validated as upstream does, their names
//! accepted or refused, and their objects served (create, get, list,
//! watch, patch, delete, printer columns, status) until the definition
//! goes, taking its objects with it.

mod support;

use serde_json::Value;
use support::Cluster;
use support::wait::{secs, until_true};

/// The CronTab example of the Kubernetes documentation, unchanged.
const CRONTAB: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  # name must match the spec fields below, and be in the form: <plural>.<group>
  name: crontabs.stable.example.com
spec:
  # group name to use for REST API: /apis/<group>/<version>
  group: stable.example.com
  # list of versions supported by this CustomResourceDefinition
  versions:
    - name: v1
      # Each version can be enabled/disabled by Served flag.
      served: true
      # One and only one version must be marked as the storage version.
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                cronSpec:
                  type: string
                image:
                  type: string
                replicas:
                  type: integer
  # either Namespaced or Cluster
  scope: Namespaced
  names:
    # plural name to be used in the URL: /apis/<group>/<version>/<plural>
    plural: crontabs
    # singular name to be used as an alias on the CLI and for display
    singular: crontab
    # kind is normally the CamelCased singular type. Your resource manifests use this.
    kind: CronTab
    # shortNames allow shorter string to match your resource on the CLI
    shortNames:
    - ct
"#;

/// Apply the definition `yaml` (written to `file`) and wait until `crd`
/// is established.
fn install(server: &Cluster, file: &str, yaml: &str, crd: &str) {
    let file = server.write(file, yaml);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=established",
            "--timeout=10s",
            &format!("crd/{crd}"),
        ],
    );
}

fn crd(server: &Cluster, name: &str) -> Value {
    serde_json::from_str(&server.ok("1.33", &["get", "crd", name, "-o", "json"])).unwrap()
}

fn condition<'a>(crd: &'a Value, ty: &str) -> &'a Value {
    crd["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

#[test]
fn definitions_are_defaulted_validated_and_their_names_accepted() {
    let server = Cluster::start();
    let resources = server.ok(
        "1.33",
        &["api-resources", "--api-group=apiextensions.k8s.io"],
    );
    assert!(
        resources.contains("customresourcedefinitions   crd,crds     apiextensions.k8s.io/v1   false        CustomResourceDefinition"),
        "{resources}"
    );
    let file = server.write("crontab.yaml", CRONTAB);
    let out = server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(
        out.trim(),
        "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created"
    );
    let table = server.ok("1.33", &["get", "crds"]);
    assert!(
        table.starts_with(
            "NAME                          CREATED AT\ncrontabs.stable.example.com   20"
        ),
        "{table}"
    );

    // v1's defaults, and what the server keeps.
    let name = "crontabs.stable.example.com";
    let got = server.wait_json(&["get", "crd", name], 10, "names accepted", |c| {
        condition(c, "NamesAccepted")["status"] == "True"
    });
    assert_eq!(got["spec"]["names"]["listKind"], "CronTabList");
    assert_eq!(got["spec"]["conversion"]["strategy"], "None");
    assert_eq!(got["metadata"]["generation"], 1);
    assert_eq!(got["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        got["status"]["acceptedNames"]["shortNames"],
        serde_json::json!(["ct"])
    );
    assert_eq!(got["status"]["acceptedNames"]["kind"], "CronTab");
    let accepted = condition(&got, "NamesAccepted");
    assert_eq!(
        (&accepted["reason"], &accepted["message"]),
        (&"NoConflicts".into(), &"no conflicts found".into())
    );
    let established = server.wait_json(&["get", "crd", name], 10, "established", |c| {
        condition(c, "Established")["status"] == "True"
    });
    assert_eq!(
        condition(&established, "Established")["reason"],
        "InitialNamesAccepted"
    );

    // A second definition of the group asking for taken names keeps what
    // it could get, and gets the rest once they are freed.
    let other = server.write(
        "other.yaml",
        &CRONTAB
            .replace("name: crontabs.stable", "name: others.stable")
            .replace("plural: crontabs", "plural: others")
            .replace("singular: crontab", "singular: other")
            .replace("kind: CronTab", "kind: CronTab\n    listKind: OtherList")
            .replace("- ct", "- ot"),
    );
    server.ok("1.33", &["apply", "-f", other.to_str().unwrap()]);
    let other_name = "others.stable.example.com";
    let refused = server.wait_json(&["get", "crd", other_name], 10, "a conflict", |c| {
        condition(c, "NamesAccepted")["status"] == "False"
    });
    let names = condition(&refused, "NamesAccepted");
    assert_eq!(names["reason"], "KindConflict");
    assert_eq!(names["message"], "\"CronTab\" is already in use");
    assert_eq!(refused["status"]["acceptedNames"]["plural"], "others");
    assert_eq!(refused["status"]["acceptedNames"]["kind"], "");
    assert_eq!(condition(&refused, "Established")["reason"], "NotAccepted");
    server.ok("1.33", &["delete", "crd", name]);
    let freed = server.wait_json(&["get", "crd", other_name], 10, "names freed", |c| {
        condition(c, "NamesAccepted")["status"] == "True"
    });
    assert_eq!(freed["status"]["acceptedNames"]["kind"], "CronTab");

    // Group and plural never change.
    let err = server.fails(
        "1.33",
        &[
            "patch",
            "crd",
            other_name,
            "--type=merge",
            "-p",
            r#"{"spec":{"group":"other.example.com"}}"#,
        ],
    );
    assert!(
        err.contains("spec.group: Invalid value: \"other.example.com\": field is immutable"),
        "{err}"
    );
    assert_eq!(
        crd(&server, other_name)["spec"]["group"],
        "stable.example.com"
    );
    // A new storage version is added to storedVersions.
    server.ok(
        "1.33",
        &[
            "patch",
            "crd",
            other_name,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/versions/0/storage","value":false},
                {"op":"add","path":"/spec/versions/-","value":{"name":"v2","served":true,"storage":true,
                 "schema":{"openAPIV3Schema":{"type":"object"}}}}]"#,
        ],
    );
    let two = crd(&server, other_name);
    assert_eq!(
        two["status"]["storedVersions"],
        serde_json::json!(["v1", "v2"])
    );
    assert_eq!(two["metadata"]["generation"], 2);
}

#[test]
fn a_bad_definition_gets_422_naming_every_field() {
    let server = Cluster::start();
    let file = server.write(
        "bad.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example}
spec:
  group: example
  scope: Global
  names: {plural: widgets, kind: Widget, listKind: Widget}
  versions:
  - {name: V1, served: true, storage: false}
  - name: v2
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object}}
    additionalPrinterColumns: [{name: Age, type: time, jsonPath: .metadata.creationTimestamp}]
  - name: v3
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, properties: {spec: {properties: {size: {type: integer}}}}}}
",
    );
    let err = server.fails("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let dns1035 = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
    for line in [
        "The CustomResourceDefinition \"widgets.example\" is invalid: ".to_owned(),
        "* spec.group: Invalid value: \"example\": should be a domain with at least one dot".to_owned(),
        "* spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"".to_owned(),
        "* spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required".to_owned(),
        format!("* spec.versions[0].name: Invalid value: \"V1\": {dns1035}"),
        "must have exactly one version marked as storage version".to_owned(),
        format!("* spec.version: Invalid value: \"V1\": {dns1035}"),
        "* spec.names.listKind: Invalid value: \"Widget\": kind and listKind may not be the same".to_owned(),
        "* spec.versions[1].additionalPrinterColumns[0].type: Invalid value: \"time\": must be one of boolean,date,integer,number,string".to_owned(),
        "* spec.versions[2].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields".to_owned(),
    ] {
        assert!(err.contains(&line), "missing {line:?} in\n{err}");
    }
    assert!(
        !server
            .kubectl("1.33", &["get", "crd", "widgets.example"])
            .status
            .success()
    );
}

const WIDGETS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.count, statusReplicasPath: .status.count}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color, priority: 1}
    - {name: Ready, type: boolean, jsonPath: .status.ready}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
  - name: v1beta1
    served: true
    storage: false
    deprecated: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

#[test]
fn custom_objects_are_served_until_their_definition_goes() {
    let server = Cluster::start();
    let file = server.write("widgets.yaml", WIDGETS);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=10s",
            "crd/widgets.example.com",
        ],
    );
    let resources = server.ok("1.33", &["api-resources", "--api-group=example.com"]);
    assert!(
        resources.contains("widgets   wd           example.com/v1   true         Widget"),
        "{resources}"
    );
    let objects = server.write(
        "w.yaml",
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: one}
spec: {size: 3, color: blue}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: two, labels: {tier: b}}
spec: {size: 5}
",
    );
    let out = server.ok("1.33", &["apply", "-f", objects.to_str().unwrap()]);
    assert!(out.contains("widget.example.com/one created"), "{out}");
    // Printer columns (priority 1 only with -o wide), short names and the
    // `all` category.
    let table = server.ok("1.33", &["get", "wd"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "SIZE", "READY", "AGE"], "{table}");
    // No status yet: READY is empty (a null cell), as upstream's.
    assert_eq!(rows[1].len(), 3, "{table}");
    assert_eq!(rows[1][..2], ["one", "3"], "{table}");
    let wide = server.ok("1.33", &["get", "widgets", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("COLOR"), "{wide}");
    assert!(wide.contains("blue"), "{wide}");
    let all = server.ok("1.33", &["get", "all"]);
    assert!(all.contains("widget.example.com/one"), "{all}");
    // Label selectors, merge and JSON patches; a strategic merge patch is
    // refused as upstream refuses it.
    let selected = server.ok("1.33", &["get", "widgets", "-l", "tier=b", "-o", "name"]);
    assert_eq!(selected.trim(), "widget.example.com/two");
    server.ok(
        "1.33",
        &[
            "patch",
            "widget",
            "one",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":4}}"#,
        ],
    );
    let err = server.fails(
        "1.33",
        &["patch", "widget", "one", "-p", r#"{"spec":{"size":5}}"#],
    );
    assert!(
        err.contains("accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
        "{err}"
    );
    // The status subresource: the main resource ignores status, /status
    // changes only it, and only spec changes move the generation.
    let one: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "widget", "one", "-o", "json"])).unwrap();
    assert_eq!(one["spec"]["size"], 4);
    assert_eq!(one["metadata"]["generation"], 2);
    server.ok(
        "1.33",
        &[
            "patch",
            "widget",
            "one",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":true},"spec":{"size":9}}"#,
        ],
    );
    server.ok(
        "1.33",
        &[
            "patch",
            "widget",
            "one",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":false}}"#,
        ],
    );
    let one: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "widget", "one", "-o", "json"])).unwrap();
    assert_eq!(one["status"]["ready"], true);
    assert_eq!(one["spec"]["size"], 4);
    assert_eq!(one["metadata"]["generation"], 2);
    let table = server.ok("1.33", &["get", "widget", "one", "--no-headers"]);
    assert!(table.contains("true"), "{table}");
    // Scale through the definition's paths.
    server.ok("1.33", &["scale", "widget", "one", "--replicas=7"]);
    let one: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "widget", "one", "-o", "json"])).unwrap();
    assert_eq!(one["spec"]["count"], 7);
    let scale = server.ok(
        "1.33",
        &[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets/one/scale",
        ],
    );
    let scale: Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["spec"]["replicas"], 7);
    assert_eq!(scale["status"]["replicas"], 0);
    // A deprecated version is served too, and says so.
    let beta = server.kubectl("1.33", &["get", "widgets.v1beta1.example.com", "one"]);
    assert!(beta.status.success());
    let warned = String::from_utf8_lossy(&beta.stderr);
    assert!(
        warned.contains("Warning: example.com/v1beta1 Widget is deprecated"),
        "{warned}"
    );

    // Deleting the definition deletes its objects first, and it is no
    // longer served; made again, it starts empty.
    server.ok(
        "1.33",
        &["delete", "crd", "widgets.example.com", "--wait=true"],
    );
    let gone = server.kubectl(
        "1.33",
        &[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets",
        ],
    );
    assert!(!gone.status.success());
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=10s",
            "crd/widgets.example.com",
        ],
    );
    let list = server.ok(
        "1.33",
        &[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets",
        ],
    );
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["kind"], "WidgetList");
    assert_eq!(list["items"], serde_json::json!([]));
}

#[test]
fn custom_objects_are_pruned_defaulted_and_validated_by_their_schema() {
    let server = Cluster::start();
    let file = server.write(
        "db.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: databases.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: databases, singular: database, kind: Database}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [engine]
            properties:
              engine: {type: string, enum: [postgres, mysql]}
              replicas: {type: integer, minimum: 1, maximum: 5, default: 1}
              size: {type: string, pattern: '^[0-9]+Gi$'}
"#,
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=10s",
            "crd/databases.example.com",
        ],
    );
    let bad = server.write(
        "bad-db.yaml",
        "apiVersion: example.com/v1
kind: Database
metadata: {name: bad}
spec: {engine: oracle, replicas: 9, size: big}
",
    );
    let err = server.fails("1.33", &["apply", "-f", bad.to_str().unwrap()]);
    for line in [
        "The Database \"bad\" is invalid: ",
        "* spec.engine: Unsupported value: \"oracle\": supported values: \"postgres\", \"mysql\"",
        "* spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5",
        "* spec.size: Invalid value: \"big\": spec.size in body should match '^[0-9]+Gi$'",
    ] {
        assert!(err.contains(line), "missing {line:?} in\n{err}");
    }
    let missing = server.write(
        "missing-db.yaml",
        "apiVersion: example.com/v1
kind: Database
metadata: {name: missing}
spec: {replicas: 2}
",
    );
    let err = server.fails("1.33", &["apply", "-f", missing.to_str().unwrap()]);
    assert!(
        err.contains("The Database \"missing\" is invalid: spec.engine: Required value"),
        "{err}"
    );
    // Unknown fields: refused under kubectl's default Strict, dropped
    // without it.
    let extra = server.write(
        "extra-db.yaml",
        "apiVersion: example.com/v1
kind: Database
metadata: {name: good}
spec: {engine: postgres, color: red}
",
    );
    let err = server.fails("1.33", &["create", "-f", extra.to_str().unwrap()]);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.color\""),
        "{err}"
    );
    server.ok(
        "1.33",
        &["create", "--validate=false", "-f", extra.to_str().unwrap()],
    );
    let good: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "database", "good", "-o", "json"]))
            .unwrap();
    assert_eq!(
        good["spec"],
        serde_json::json!({"engine": "postgres", "replicas": 1}),
        "pruned and defaulted"
    );
}

const TWO_VERSIONS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, listKind: GadgetCollection}
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

#[test]
fn every_served_version_serves_the_same_objects() {
    let server = Cluster::start();
    install(&server, "gadgets.yaml", TWO_VERSIONS, "gadgets.example.com");
    // Written through v1beta1, stored as v1 and served as either.
    let objects = server.write(
        "g.yaml",
        "apiVersion: example.com/v1beta1\nkind: Gadget\nmetadata: {name: g}\nspec: {size: 1}\n",
    );
    server.ok("1.33", &["apply", "-f", objects.to_str().unwrap()]);
    let raw = |path: &str| -> Value {
        serde_json::from_str(&server.ok("1.33", &["get", "--raw", path])).unwrap()
    };
    let v1 = raw("/apis/example.com/v1/namespaces/default/gadgets/g");
    assert_eq!(v1["apiVersion"], "example.com/v1");
    assert_eq!(v1["spec"]["size"], 1);
    let beta = raw("/apis/example.com/v1beta1/namespaces/default/gadgets/g");
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    let list = raw("/apis/example.com/v1beta1/namespaces/default/gadgets");
    assert_eq!(list["kind"], "GadgetCollection");
    assert_eq!(list["apiVersion"], "example.com/v1beta1");
    assert_eq!(list["items"][0]["apiVersion"], "example.com/v1beta1");
    let list = raw("/apis/example.com/v1/gadgets");
    assert_eq!(list["items"][0]["apiVersion"], "example.com/v1");
    // Updates through either version keep one object.
    server.ok(
        "1.33",
        &[
            "patch",
            "gadgets.v1.example.com",
            "g",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":2}}"#,
        ],
    );
    let beta = raw("/apis/example.com/v1beta1/namespaces/default/gadgets/g");
    assert_eq!(beta["spec"]["size"], 2);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    let crd = crd(&server, "gadgets.example.com");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));

    // A definition converting by webhook is accepted; its storage version
    // is served, the others say why they are not.
    let webhook = TWO_VERSIONS
        .replace("gadgets", "gizmos")
        .replace("gadget", "gizmo")
        .replace("Gadget", "Gizmo")
        .replace(
            "  versions:\n",
            "  conversion:\n    strategy: Webhook\n    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {url: \"https://convert.example.com/\"}\n  versions:\n",
        );
    install(&server, "gizmos.yaml", &webhook, "gizmos.example.com");
    server.ok("1.33", &["get", "gizmos.v1.example.com"]);
    let err = server.fails("1.33", &["get", "gizmos.v1beta1.example.com"]);
    assert!(
        err.contains("conversion webhook for example.com/v1beta1, Kind=Gizmo failed: this server does not call conversion webhooks yet"),
        "{err}"
    );
}

#[test]
fn custom_kinds_are_in_openapi_v2_and_v3_for_explain() {
    let server = Cluster::start();
    install(
        &server,
        "crontab.yaml",
        CRONTAB,
        "crontabs.stable.example.com",
    );
    // kubectl explain reads OpenAPI v3.
    let explained = server.ok("1.33", &["explain", "crontab.spec"]);
    assert!(explained.contains("KIND:       CronTab"), "{explained}");
    assert!(explained.contains("cronSpec\t<string>"), "{explained}");
    assert!(explained.contains("replicas\t<integer>"), "{explained}");
    let top = server.ok("1.33", &["explain", "ct"]);
    assert!(top.contains("metadata\t<ObjectMeta>"), "{top}");
    // The v3 document of the group names the kind as upstream does.
    let index: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "--raw", "/openapi/v3"])).unwrap();
    let url = index["paths"]["apis/stable.example.com/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc: Value = serde_json::from_str(&server.ok("1.33", &["get", "--raw", &url])).unwrap();
    let schema = &doc["components"]["schemas"]["com.example.stable.v1.CronTab"];
    assert_eq!(
        schema["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "stable.example.com", "kind": "CronTab", "version": "v1"}])
    );
    assert_eq!(
        schema["properties"]["spec"]["properties"]["image"]["type"],
        "string"
    );
    assert!(
        doc["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}"]
            .is_object()
    );
    // And the v2 document (kubectl 1.27's validation, older clients).
    let v2: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "--raw", "/openapi/v2"])).unwrap();
    let def = &v2["definitions"]["com.example.stable.v1.CronTab"];
    assert_eq!(
        def["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(
        v2["definitions"]["com.example.stable.v1.CronTabList"]["x-kubernetes-group-version-kind"]
            [0]["kind"],
        "CronTabList"
    );
    // A changed schema changes the v3 document's hash (clients re-fetch).
    server.ok(
        "1.33",
        &["patch", "crd", "crontabs.stable.example.com", "--type=json", "-p",
          r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/owner","value":{"type":"string"}}]"#],
    );
    let index: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "--raw", "/openapi/v3"])).unwrap();
    assert_ne!(
        index["paths"]["apis/stable.example.com/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap(),
        url
    );
    let explained = server.ok("1.33", &["explain", "crontab.spec.owner"]);
    assert!(explained.contains("FIELD: owner <string>"), "{explained}");
}

const RULED: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scalers.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: scalers, singular: scaler, kind: Scaler}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.replicas"
              message: "replicas should be greater than or equal to minReplicas"
            - rule: "self.replicas <= self.maxReplicas"
              messageExpression: "'replicas ' + string(self.replicas) + ' is over the maximum of ' + string(self.maxReplicas)"
              reason: FieldValueForbidden
              fieldPath: .replicas
            - rule: "self.mode == oldSelf.mode"
              message: mode is immutable
            properties:
              replicas: {type: integer}
              minReplicas: {type: integer}
              maxReplicas: {type: integer, default: 10}
              mode: {type: string, default: fast}
              memory:
                type: string
                maxLength: 16
                x-kubernetes-validations:
                - rule: "quantity(self).isLessThan(quantity('1Gi'))"
                  message: memory must be under 1Gi
              network:
                type: string
                maxLength: 64
                x-kubernetes-validations:
                - rule: "isCIDR(self) && cidr(self).prefixLength() >= 16 && cidr(self) == cidr(self).masked()"
                  messageExpression: "'network ' + self + ' must be a /16 or smaller network address'"
              window:
                type: string
                format: duration
                maxLength: 16
                x-kubernetes-validations:
                - rule: "self <= duration('1h')"
                  messageExpression: "'window ' + string(self) + ' is over an hour'"
              tags:
                type: array
                maxItems: 8
                items: {type: string, maxLength: 32}
                x-kubernetes-validations:
                - rule: "self.all(t, t.matches('^[a-z]+$'))"
                  message: tags are lowercase words
"#;

#[test]
fn cel_rules_validate_custom_objects_as_upstream() {
    let server = Cluster::start();
    install(&server, "scalers.yaml", RULED, "scalers.example.com");
    let obj = |spec: &str| {
        server.write(
            "s.yaml",
            &format!(
                "apiVersion: example.com/v1\nkind: Scaler\nmetadata: {{name: s}}\nspec: {spec}\n"
            ),
        )
    };
    let bad = obj(
        "{replicas: 12, minReplicas: 13, tags: [ok, Not], memory: 2Gi, network: 10.1.2.3/16, window: 1h30m}",
    );
    let err = server.fails("1.33", &["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains(r#"The Scaler "s" is invalid: "#), "{err}");
    for expected in [
        r#"spec: Invalid value: "object": replicas should be greater than or equal to minReplicas"#,
        "spec.replicas: Forbidden: replicas 12 is over the maximum of 10",
        r#"spec.tags: Invalid value: "array": tags are lowercase words"#,
        r#"spec.memory: Invalid value: "string": memory must be under 1Gi"#,
        r#"spec.network: Invalid value: "string": network 10.1.2.3/16 must be a /16 or smaller network address"#,
        r#"spec.window: Invalid value: "string": window 5400s is over an hour"#,
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
    let good = obj(
        "{replicas: 2, minReplicas: 1, tags: [a, b], memory: 512Mi, network: 10.1.0.0/16, window: 45m}",
    );
    server.ok("1.33", &["apply", "-f", good.to_str().unwrap()]);
    // A transition rule: mode may not change.
    let err = server.fails(
        "1.33",
        &[
            "patch",
            "scaler",
            "s",
            "--type=merge",
            "-p",
            r#"{"spec":{"mode":"slow"}}"#,
        ],
    );
    assert!(
        err.contains(r#"spec: Invalid value: "object": mode is immutable"#),
        "{err}"
    );
    server.ok(
        "1.33",
        &[
            "patch",
            "scaler",
            "s",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );

    // Rules that do not compile, or cost too much, refuse the definition.
    let broken = RULED
        .replace("scalers", "brokens")
        .replace("scaler", "broken")
        .replace("Scaler", "Broken")
        .replace("self.minReplicas <= self.replicas", "self.minReplicas <=")
        .replace("self.mode == oldSelf.mode", "self.mode.bogus()")
        .replace(
            "self.replicas <= self.maxReplicas",
            "self.replicas <= self.maximum",
        )
        .replace("                maxItems: 8\n", "")
        .replace(", maxLength: 32", "");
    let file = server.write("broken.yaml", &broken);
    let err = server.fails("1.33", &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.minReplicas <=\""),
        "{err}"
    );
    assert!(
        err.contains(
            "compilation failed: ERROR: <input>:1:20: Syntax error: mismatched input '<EOF>'"
        ),
        "{err}"
    );
    // A call to a function nobody declares is refused when written, not
    // when the first object is.
    assert!(
        err.contains("x-kubernetes-validations[2].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.mode.bogus()\""),
        "{err}"
    );
    assert!(
        err.contains("compilation failed: ERROR: <input>:1:16: undeclared reference to 'bogus' (in container '')"),
        "{err}"
    );
    // So is one reading a field its schema does not declare (upstream's
    // conformance test for validation rules checks this message).
    assert!(
        err.contains("x-kubernetes-validations[1].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.replicas <= self.maximum\""),
        "{err}"
    );
    assert!(
        err.contains("compilation failed: ERROR: <input>:1:22: undefined field 'maximum'"),
        "{err}"
    );
    assert!(
        err.contains("spec.validation.openAPIV3Schema.properties[spec].properties[tags].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of"),
        "{err}"
    );
    assert!(
        err.contains("try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared"),
        "{err}"
    );
}

#[test]
fn custom_objects_are_collected_with_their_built_in_owners() {
    let server = Cluster::start();
    install(&server, "gadgets.yaml", TWO_VERSIONS, "gadgets.example.com");
    server.ok("1.33", &["create", "configmap", "owner"]);
    let uid = server.ok(
        "1.33",
        &[
            "get",
            "configmap",
            "owner",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    let owned = server.write(
        "owned.yaml",
        &format!(
            "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: owned\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}\n"
        ),
    );
    server.ok("1.33", &["apply", "-f", owned.to_str().unwrap()]);
    // After a restart, the collector knows the gadget too, though its
    // definition is served only once the server has started.
    let server = server.restart(&[]);
    until_true(secs(15), "the gadget is served again", || {
        server
            .kubectl("1.33", &["get", "gadget", "owned"])
            .status
            .success()
    });
    // Give the collector a moment to list the newly served resource.
    std::thread::sleep(std::time::Duration::from_secs(2));
    server.ok("1.33", &["delete", "configmap", "owner"]);
    until_true(secs(15), "the owned gadget is collected", || {
        !server
            .kubectl("1.33", &["get", "gadget", "owned"])
            .status
            .success()
    });
}

/// `owner`, deleted in the foreground, still has its `foregroundDeletion`
/// finalizer while `held` (a blocking dependent with a finalizer of its
/// own) is; once `held`'s finalizer is removed, both go.
fn owner_waits_for_its_held_dependent(server: &Cluster, owner: &str, held: &str) {
    let finalizers = server.ok(
        "1.33",
        &["get", owner, "-o", "jsonpath={.metadata.finalizers}"],
    );
    assert!(finalizers.contains("foregroundDeletion"), "{finalizers}");
    server.ok(
        "1.33",
        &[
            "patch",
            held,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
    );
    until_true(secs(15), "the owner is gone once its dependent is", || {
        !server.kubectl("1.33", &["get", owner]).status.success()
    });
}

#[test]
fn a_built_in_owner_deleted_in_the_foreground_waits_for_its_custom_dependents() {
    let server = Cluster::start();
    install(&server, "gadgets.yaml", TWO_VERSIONS, "gadgets.example.com");
    server.ok(
        "1.33",
        &[
            "create",
            "deployment",
            "web",
            "--image=registry.local/web:1",
            "--replicas=0",
        ],
    );
    let uid = server.ok(
        "1.33",
        &["get", "deployment", "web", "-o", "jsonpath={.metadata.uid}"],
    );
    // A custom dependent that blocks the Deployment's deletion, held by a
    // finalizer.
    let gadget = server.write(
        "gadget.yaml",
        &format!(
            "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: part\n  finalizers: [example.com/hold]\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: Deployment, name: web, uid: {uid}, blockOwnerDeletion: true}}\n"
        ),
    );
    server.ok("1.33", &["apply", "-f", gadget.to_str().unwrap()]);
    until_true(secs(15), "the Deployment has its ReplicaSet", || {
        !server
            .ok("1.33", &["get", "replicasets", "-o", "name"])
            .is_empty()
    });
    server.ok(
        "1.33",
        &[
            "delete",
            "deployment",
            "web",
            "--cascade=foreground",
            "--wait=false",
        ],
    );
    let deletion = |what: &str| {
        server
            .kubectl(
                "1.33",
                &["get", what, "-o", "jsonpath={.metadata.deletionTimestamp}"],
            )
            .stdout
    };
    until_true(secs(15), "the gadget is being deleted", || {
        !deletion("gadget/part").is_empty()
    });
    until_true(secs(15), "the ReplicaSet is gone", || {
        server
            .ok("1.33", &["get", "replicasets", "-o", "name"])
            .is_empty()
    });
    // The Deployment's informer-tracked dependents are gone; it still
    // waits for the held gadget.
    std::thread::sleep(std::time::Duration::from_secs(1));
    owner_waits_for_its_held_dependent(&server, "deployment/web", "gadget/part");
}

#[test]
fn a_custom_owner_deleted_in_the_foreground_waits_for_its_dependents() {
    let server = Cluster::start();
    install(&server, "gadgets.yaml", TWO_VERSIONS, "gadgets.example.com");
    let parent = server.write(
        "parent.yaml",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: parent}\n",
    );
    server.ok("1.33", &["apply", "-f", parent.to_str().unwrap()]);
    let uid = server.ok(
        "1.33",
        &["get", "gadget", "parent", "-o", "jsonpath={.metadata.uid}"],
    );
    // A dependent that blocks its owner's deletion, held by a finalizer.
    let child = server.write(
        "child.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  finalizers: [example.com/hold]\n  ownerReferences:\n  - {{apiVersion: example.com/v1, kind: Gadget, name: parent, uid: {uid}, blockOwnerDeletion: true}}\n"
        ),
    );
    server.ok("1.33", &["apply", "-f", child.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "delete",
            "gadget",
            "parent",
            "--cascade=foreground",
            "--wait=false",
        ],
    );
    let deleting = |what: &str| {
        server
            .kubectl(
                "1.33",
                &["get", what, "-o", "jsonpath={.metadata.deletionTimestamp}"],
            )
            .stdout
    };
    until_true(secs(15), "the dependent is being deleted", || {
        !deleting("configmap/child").is_empty()
    });
    // The owner waits, with its finalizer, while the dependent is held.
    std::thread::sleep(std::time::Duration::from_millis(500));
    owner_waits_for_its_held_dependent(&server, "gadget/parent", "configmap/child");
    // A dependent created after its owner was deleted is collected too.
    let late = server.write(
        "late.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late\n  ownerReferences:\n  - {{apiVersion: example.com/v1, kind: Gadget, name: parent, uid: {uid}}}\n"
        ),
    );
    server.ok("1.33", &["apply", "-f", late.to_str().unwrap()]);
    until_true(
        secs(15),
        "a dependent of a deleted owner is collected",
        || {
            !server
                .kubectl("1.33", &["get", "configmap", "late"])
                .status
                .success()
        },
    );
}

#[test]
fn selectable_fields_select_custom_objects() {
    let server = Cluster::start();
    let crd = TWO_VERSIONS
        .replace("gadgets", "shapes")
        .replace("gadget", "shape")
        .replace("Gadget", "Shape")
        .replace(
            "  - name: v1\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
            "  - name: v1\n    served: true\n    storage: true\n    selectableFields: [{jsonPath: .spec.color}, {jsonPath: .spec.sides}]\n    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {color: {type: string}, sides: {type: integer}}}}}}\n",
        );
    install(&server, "shapes.yaml", &crd, "shapes.example.com");
    let objects = server.write(
        "s.yaml",
        "apiVersion: example.com/v1\nkind: Shape\nmetadata: {name: red-square}\nspec: {color: red, sides: 4}\n---\napiVersion: example.com/v1\nkind: Shape\nmetadata: {name: blue-triangle}\nspec: {color: blue, sides: 3}\n",
    );
    server.ok("1.33", &["apply", "-f", objects.to_str().unwrap()]);
    let names = |selector: &str| {
        server.ok(
            "1.33",
            &[
                "get",
                "shapes.v1.example.com",
                "--field-selector",
                selector,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
    };
    assert_eq!(names("spec.color=blue"), "blue-triangle");
    assert_eq!(names("spec.sides!=3"), "red-square");
    let err = server.fails(
        "1.33",
        &[
            "get",
            "shapes.v1.example.com",
            "--field-selector",
            "spec.size=1",
        ],
    );
    assert!(
        err.contains("field label not supported: spec.size"),
        "{err}"
    );
    // A selectable field must name a scalar field of the schema.
    let bad = crd
        .replace("shapes", "blobs")
        .replace("shape", "blob")
        .replace("Shape", "Blob")
        .replace("{jsonPath: .spec.sides}", "{jsonPath: .spec.missing}");
    let file = server.write("blobs.yaml", &bad);
    let err = server.fails("1.33", &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains(
            "spec.versions[1].selectableFields[1].jsonPath: Invalid value: \".spec.missing\""
        ),
        "{err}"
    );
}

#[test]
fn defaults_added_to_a_schema_show_on_stored_objects() {
    let server = Cluster::start();
    install(
        &server,
        "crontab.yaml",
        CRONTAB,
        "crontabs.stable.example.com",
    );
    let obj = server.write(
        "ct.yaml",
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: old}\nspec: {cronSpec: '* * * * */5'}\n",
    );
    server.ok("1.33", &["apply", "-f", obj.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["patch", "crd", "crontabs.stable.example.com", "--type=json", "-p",
          r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/replicas/default","value":2}]"#],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = server.ok(
            "1.33",
            &["get", "crontab", "old", "-o", "jsonpath={.spec.replicas}"],
        );
        let listed = server.ok(
            "1.33",
            &[
                "get",
                "crontabs",
                "-o",
                "jsonpath={.items[0].spec.replicas}",
            ],
        );
        if got == "2" && listed == "2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no default on read: {got:?} {listed:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
