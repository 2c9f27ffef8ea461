//! Custom resources: what a CustomResourceDefinition says of each version
//! it serves, as catalog entries ([`resources`]) carrying what serving
//! them needs ([`Custom`]): printer columns, the scale subresource's
//! paths, the schema. Pure data and functions; the server's registry
//! builds a strategy from it.

use std::sync::Arc;

use serde_json::{Value, json};

use super::catalog::{CRUD, Resource, Subresource};
use super::table::{AGE_DESCRIPTION, NAME_DESCRIPTION, human_duration};

/// A printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// integer, number, string, boolean or date.
    pub kind: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// The scale subresource's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What one served version of a definition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Custom {
    /// The definition's name (`<plural>.<group>`).
    pub definition: String,
    pub list_kind: String,
    /// The version objects are stored as.
    pub storage_version: String,
    pub columns: Vec<Column>,
    pub status: bool,
    pub scale: Option<Scale>,
    /// `deprecationWarning`, or upstream's default when deprecated.
    pub deprecation: Option<String>,
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
    /// The schema has defaults: stored objects get them as they are read.
    pub has_defaults: bool,
    /// The fields field selectors may name beyond metadata.name and
    /// metadata.namespace (`selectableFields`, without the leading dot).
    pub selectable_fields: Vec<String>,
    /// The definition converts between versions with a webhook (which this
    /// server cannot call yet: its other versions are refused).
    pub conversion_webhook: bool,
    /// The schema as the field manager reads it: `metadata` is an
    /// ObjectMeta (component schema), whatever the definition says of it.
    pub merge_schema: Value,
}

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The OpenAPI name upstream gives a custom kind: the group reversed, then
/// version and kind (`com.example.stable.v1.CronTab`).
pub fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// The OpenAPI v3 component schemas of a custom resource's version, as
/// upstream's CRD OpenAPI builder writes them: the definition's schema
/// with apiVersion, kind and an ObjectMeta metadata, marked with its
/// group/version/kind; and its list. Empty for a built-in resource.
pub fn openapi_schemas(res: &Resource) -> Vec<(String, Value)> {
    use serde_json::json;
    let Some(custom) = &res.custom else {
        return Vec::new();
    };
    let reference =
        |name: &str| json!({"$ref": format!("{}{name}", crate::api::components::REF_PREFIX)});
    let name = definition_name(&res.group, &res.version, &res.kind);
    let mut item = match &custom.schema {
        Value::Object(_) => custom.schema.clone(),
        _ => json!({"type": "object"}),
    };
    if let Some(object) = item.as_object_mut() {
        object.insert("type".into(), json!("object"));
        let props = object
            .entry("properties")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(props) = props.as_object_mut() {
            props.insert(
                "apiVersion".into(),
                json!({"description": API_VERSION_DOC, "type": "string"}),
            );
            props.insert(
                "kind".into(),
                json!({"description": KIND_DOC, "type": "string"}),
            );
            props.insert(
                "metadata".into(),
                json!({
                    "allOf": [reference("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")],
                    "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                }),
            );
        }
        object.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": res.group, "kind": res.kind, "version": res.version}]),
        );
    }
    let list = json!({
        "description": format!("{} is a list of {}", custom.list_kind, res.kind),
        "required": ["items"],
        "type": "object",
        "properties": {
            "apiVersion": {"description": API_VERSION_DOC, "type": "string"},
            "items": {
                "description": format!("List of {}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md", res.plural),
                "type": "array",
                "items": reference(&name),
            },
            "kind": {"description": KIND_DOC, "type": "string"},
            "metadata": {
                "allOf": [reference("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")],
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            },
        },
        "x-kubernetes-group-version-kind": [{"group": res.group, "kind": custom.list_kind, "version": res.version}],
    });
    vec![(format!("{name}List"), list), (name, item)]
}

/// Whether a schema declares a `default` anywhere.
fn has_defaults(schema: &Value) -> bool {
    let Some(object) = schema.as_object() else {
        return false;
    };
    object.contains_key("default")
        || ["properties", "patternProperties"].iter().any(|k| {
            object
                .get(*k)
                .and_then(Value::as_object)
                .is_some_and(|p| p.values().any(has_defaults))
        })
        || ["items", "additionalProperties", "not"]
            .iter()
            .any(|k| object.get(*k).is_some_and(has_defaults))
        || ["allOf", "anyOf", "oneOf"].iter().any(|k| {
            object
                .get(*k)
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(has_defaults))
        })
}

/// The schema the field manager walks for a version's `openAPIV3Schema`.
fn merge_schema(schema: &Value) -> Value {
    let mut out = match schema {
        Value::Object(_) => schema.clone(),
        _ => serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    if let Some(object) = out.as_object_mut() {
        let props = object
            .entry("properties")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(props) = props.as_object_mut() {
            props.insert(
                "metadata".into(),
                serde_json::json!({"$ref": format!("{}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", crate::api::components::REF_PREFIX)}),
            );
            props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
            props.insert("kind".into(), serde_json::json!({"type": "string"}));
        }
    }
    out
}

/// The catalog entries of a definition whose names are accepted: one per
/// served version, with the accepted names.
pub fn resources(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let names = &crd["status"]["acceptedNames"];
    let group = spec["group"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    let plural = names["plural"].as_str().unwrap_or_default();
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let versions = spec["versions"].as_array().map_or(&[][..], Vec::as_slice);
    let storage_version = versions
        .iter()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"] == true)
        .filter_map(|v| {
            let version = v["name"].as_str()?;
            let subresources = &v["subresources"];
            let status = subresources.get("status").is_some_and(Value::is_object);
            let scale = subresources
                .get("scale")
                .filter(|s| s.is_object())
                .map(|s| Scale {
                    spec_replicas: s["specReplicasPath"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    status_replicas: s["statusReplicasPath"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    label_selector: s["labelSelectorPath"].as_str().map(str::to_owned),
                });
            let mut subs = Vec::new();
            if status {
                subs.push(Subresource {
                    name: "status".into(),
                    group: group.into(),
                    version: version.into(),
                    kind: kind.into(),
                    verbs: ["get", "patch", "update"].map(String::from).to_vec(),
                });
            }
            if scale.is_some() {
                subs.push(Subresource {
                    name: "scale".into(),
                    group: "autoscaling".into(),
                    version: "v1".into(),
                    kind: "Scale".into(),
                    verbs: ["get", "patch", "update"].map(String::from).to_vec(),
                });
            }
            let deprecation = (v["deprecated"] == true).then(|| {
                v["deprecationWarning"].as_str().map_or_else(
                    || format!("{group}/{version} {kind} is deprecated"),
                    str::to_owned,
                )
            });
            Some(Resource {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                singular: names["singular"]
                    .as_str()
                    .map_or_else(|| kind.to_lowercase(), str::to_owned),
                namespaced: spec["scope"] == "Namespaced",
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                verbs: CRUD.iter().map(|s| (*s).to_owned()).collect(),
                subresources: subs,
                custom: Some(Arc::new(Custom {
                    definition: crd["metadata"]["name"].as_str().unwrap_or_default().into(),
                    list_kind: names["listKind"]
                        .as_str()
                        .map_or_else(|| format!("{kind}List"), str::to_owned),
                    storage_version: storage_version.into(),
                    columns: columns(v),
                    status,
                    scale,
                    deprecation,
                    schema: v
                        .pointer("/schema/openAPIV3Schema")
                        .cloned()
                        .unwrap_or(Value::Null),
                    conversion_webhook: spec["conversion"]["strategy"] == "Webhook",
                    has_defaults: has_defaults(
                        v.pointer("/schema/openAPIV3Schema").unwrap_or(&Value::Null),
                    ),
                    selectable_fields: v["selectableFields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["jsonPath"].as_str())
                        .map(|p| p.trim_start_matches('.').to_owned())
                        .collect(),
                    merge_schema: merge_schema(
                        v.pointer("/schema/openAPIV3Schema").unwrap_or(&Value::Null),
                    ),
                })),
            })
        })
        .collect()
}

/// The strings of a JSON array (none for anything else).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// A version's printer columns; `Age` when it names none (upstream's
/// default).
fn columns(version: &Value) -> Vec<Column> {
    let listed: Vec<Column> = version["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Column {
            name: c["name"].as_str().unwrap_or_default().into(),
            kind: c["type"].as_str().unwrap_or_default().into(),
            format: c["format"].as_str().unwrap_or_default().into(),
            description: c["description"].as_str().unwrap_or_default().into(),
            priority: c["priority"].as_i64().unwrap_or(0),
            json_path: c["jsonPath"].as_str().unwrap_or_default().into(),
        })
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    vec![Column {
        name: "Age".into(),
        kind: "date".into(),
        format: String::new(),
        description: AGE_DESCRIPTION.into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }]
}

impl Custom {
    /// The Table's `columnDefinitions`: Name, then the printer columns.
    pub fn column_definitions(&self) -> Value {
        let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
                                   "description": NAME_DESCRIPTION, "priority": 0})];
        defs.extend(self.columns.iter().map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format,
                   "description": c.description, "priority": c.priority})
        }));
        Value::Array(defs)
    }

    /// One row's cells, as upstream's table convertor makes them: the
    /// value each column's path finds, as its type says (dates as ages);
    /// null when there is none.
    pub fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let mut cells = vec![obj["metadata"]["name"].clone()];
        cells.extend(self.columns.iter().map(|c| {
            let Some(value) = find(obj, &c.json_path) else {
                return Value::Null;
            };
            match (c.kind.as_str(), value) {
                ("integer", Value::Number(n)) => n
                    .as_i64()
                    .or_else(|| n.as_f64().map(|f| f as i64))
                    .map_or(Value::Null, |i| json!(i)),
                ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
                ("boolean", Value::Bool(b)) => json!(b),
                ("string", Value::String(s)) => json!(s),
                ("string", Value::Null) => Value::Null,
                ("string", other) => json!(other.to_string()),
                ("date", Value::String(s)) => match s.parse::<jiff::Timestamp>() {
                    Ok(t) => json!(human_duration(now.as_second() - t.as_second())),
                    Err(_) => json!("<invalid>"),
                },
                _ => Value::Null,
            }
        }));
        cells
    }

    /// The label selector the scale subresource reports.
    pub fn scale_selector(&self, obj: &Value) -> String {
        self.scale
            .as_ref()
            .and_then(|s| s.label_selector.as_deref())
            .and_then(|p| find(obj, p))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

impl Scale {
    /// The Scale's `spec.replicas` and `status.replicas` in `obj` (0 when
    /// absent).
    pub fn replicas(&self, obj: &Value) -> (Value, Value) {
        let at = |path: &str| find(obj, path).cloned().unwrap_or(json!(0));
        (at(&self.spec_replicas), at(&self.status_replicas))
    }
}

/// Set `value` at the simple dotted path `path` (`.spec.replicas`),
/// making the objects on the way; false for a path that is not one.
pub fn set(obj: &mut Value, path: &str, value: Value) -> bool {
    let keys: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    if keys.iter().any(|k| k.is_empty() || k.contains(['[', ']'])) {
        return false;
    }
    let mut at = obj;
    for key in &keys[..keys.len() - 1] {
        if !at[*key].is_object() {
            at[*key] = json!({});
        }
        at = &mut at[*key];
    }
    if !at.is_object() {
        return false;
    }
    at[keys[keys.len() - 1]] = value;
    true
}

/// What a simple JSONPath (`.a.b`, `.a[0].b`, `.a['x.y']`, optionally in
/// `{}`) finds in `obj`.
pub fn find<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut at = obj;
    let mut rest = path.strip_prefix('.').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            let quoted = inner
                .strip_prefix('\'')
                .and_then(|i| i.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|i| i.strip_suffix('"')));
            at = match quoted {
                Some(key) => at.get(key)?,
                None => at.get(inner.parse::<usize>().ok()?)?,
            };
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            at = at.get(&rest[..end])?;
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab"},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}},
                     "additionalPrinterColumns": [
                        {"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]},
                    {"name": "v1beta1", "served": true, "storage": false, "deprecated": true},
                    {"name": "v0", "served": false, "storage": false},
                ],
            },
            "status": {"acceptedNames": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab",
                                          "listKind": "CronTabList", "shortNames": ["ct"], "categories": ["all"]}},
        })
    }

    #[test]
    fn served_versions_become_catalog_entries() {
        let rs = resources(&crd());
        let versions: Vec<&str> = rs.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        let v1 = &rs[0];
        assert!(v1.namespaced);
        assert_eq!(v1.short_names, ["ct"]);
        assert_eq!(v1.categories, ["all"]);
        let subs: Vec<&str> = v1.subresources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(subs, ["status", "scale"]);
        let custom = v1.custom.as_ref().unwrap();
        assert_eq!(custom.storage_version, "v1");
        assert_eq!(custom.list_kind, "CronTabList");
        let beta = rs[1].custom.as_ref().unwrap();
        assert_eq!(
            beta.deprecation.as_deref(),
            Some("stable.example.com/v1beta1 CronTab is deprecated")
        );
        assert_eq!(beta.columns[0].name, "Age");
        // Names not accepted yet: nothing served.
        let mut pending = crd();
        pending["status"]["acceptedNames"] = json!({"plural": "", "kind": ""});
        assert!(resources(&pending).is_empty());
    }

    #[test]
    fn cells_follow_the_column_types() {
        let rs = resources(&crd());
        let custom = rs[0].custom.as_ref().unwrap();
        let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"},
                         "spec": {"cronSpec": "* * * * */5", "replicas": 3.0},
                         "status": {"selector": "app=a"}});
        assert_eq!(
            custom.cells(&obj, now),
            vec![json!("a"), json!("* * * * */5"), json!(3), json!("60m")]
        );
        let bare = json!({"metadata": {"name": "b", "creationTimestamp": "bad"}});
        assert_eq!(
            custom.cells(&bare, now),
            vec![json!("b"), Value::Null, Value::Null, json!("<invalid>")]
        );
        assert_eq!(custom.scale_selector(&obj), "app=a");
        let defs = custom.column_definitions();
        assert_eq!(defs[0]["name"], "Name");
        assert_eq!(defs[2]["type"], "integer");
    }

    #[test]
    fn scale_paths_read_and_write_replicas() {
        let scale = Scale {
            spec_replicas: ".spec.count".into(),
            status_replicas: ".status.count".into(),
            label_selector: None,
        };
        let mut obj = json!({"spec": {"count": 2}});
        assert_eq!(scale.replicas(&obj), (json!(2), json!(0)));
        assert!(set(&mut obj, ".spec.count", json!(5)));
        assert!(set(&mut obj, ".spec.deep.er", json!(1)));
        assert_eq!(obj, json!({"spec": {"count": 5, "deep": {"er": 1}}}));
        assert!(!set(&mut obj, ".spec.list[0]", json!(1)));
    }

    #[test]
    fn simple_json_paths() {
        let obj = json!({"a": {"b": [{"c": 1}], "x.y": true}});
        assert_eq!(find(&obj, ".a.b[0].c"), Some(&json!(1)));
        assert_eq!(find(&obj, "{.a['x.y']}"), Some(&json!(true)));
        assert_eq!(find(&obj, ".a.missing"), None);
        assert_eq!(find(&obj, ".a.b[3]"), None);
    }
}
