//! Routing: what a request asks for, read from its method, path and query
//! before anything else runs (upstream's `RequestInfo`): the verb, and for
//! API paths the group, version, resource, namespace, name and
//! subresource. Authorization reads it as [`Attributes`]; the handlers
//! dispatch on it.

use http::{Method, Uri};

use super::Query;
use crate::api::catalog::Catalog;
use crate::api::query::{first, parse_query};
use crate::server::auth::User;
use crate::server::auth::authz::Attributes;

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`, `/apis`, `/apis/<g>` and `/api/v1`, `/apis/<g>/<v>`.
    Discovery {
        legacy: bool,
        group: Option<String>,
        version: Option<String>,
    },
    /// An object, a collection, or an object's subresource.
    Resource(ResourcePath),
    /// Any other path: `/openapi/…`, orch's own paths, or one that names
    /// nothing (404 once authorized).
    NonResource,
}

/// The API object (or collection) a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    /// The namespace in the path (`…/namespaces/<ns>/<plural>`).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// One request, routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub path: String,
    /// Upstream's verb: for resource requests `get`, `list`, `watch`
    /// (`?watch=1`, or a legacy `/watch/` path), `create`, `update`,
    /// `patch`, `delete` or `deletecollection`; otherwise the lowercase
    /// HTTP method.
    pub verb: String,
    pub target: Target,
    /// The query, decoded.
    pub query: Query,
    /// A list or watch that selects one object by
    /// `fieldSelector=metadata.name=<n>` is authorized as naming it (as
    /// upstream); for orch's tunnel path, the node named by `?node=`.
    selected_name: Option<String>,
}

/// Where agents open their kubelet API tunnels (`?node=<name>`).
pub const TUNNEL_PATH: &str = "/orch/v1/tunnel";

/// Route a request. `catalog` tells `namespaces/<ns>/<plural>` apart from
/// `namespaces/<name>/<subresource>`.
pub fn parse(method: &Method, uri: &Uri, catalog: &Catalog) -> RequestInfo {
    let path = uri.path().to_owned();
    let query = parse_query(uri.query());
    let (target, legacy_watch) = parse_path(&path, |g, v, p| {
        catalog.find(g, v, p).is_some_and(|r| r.namespaced)
    })
    .unwrap_or((Target::NonResource, false));
    let verb = match &target {
        Target::Resource(rp) => resource_verb(method, rp, &query, legacy_watch),
        _ => method.as_str().to_lowercase(),
    };
    let selected_name = match &target {
        Target::Resource(_) if matches!(verb.as_str(), "list" | "watch") => {
            first(&query, "fieldSelector").and_then(selected_name)
        }
        Target::NonResource if path == TUNNEL_PATH => {
            Some(first(&query, "node").unwrap_or_default().to_owned())
        }
        _ => None,
    };
    RequestInfo {
        path,
        verb,
        target,
        query,
        selected_name,
    }
}

/// The verb of a resource request (upstream's `RequestInfoFactory`).
fn resource_verb(method: &Method, rp: &ResourcePath, query: &Query, legacy_watch: bool) -> String {
    if legacy_watch {
        return "watch".into();
    }
    let named = rp.name.is_some();
    let watch = matches!(first(query, "watch"), Some("true" | "1"));
    match (method.as_str(), named) {
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => return other.to_lowercase(),
    }
    .into()
}

/// The name `metadata.name=<n>` (or `==`) in a field selector selects.
fn selected_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let value = term.trim().strip_prefix("metadata.name")?;
        let value = value
            .strip_prefix("==")
            .or_else(|| value.strip_prefix('='))?;
        let valid =
            !value.is_empty() && value != "." && value != ".." && !value.contains(['/', '%']);
        valid.then(|| value.to_owned())
    })
}

/// Parse an API path; `true` when it is a legacy `/watch/` path.
/// `is_namespaced_plural(group, version, plural)` tells
/// `namespaces/<ns>/<plural>` apart from `namespaces/<name>/<sub>`.
pub fn parse_path(
    path: &str,
    is_namespaced_plural: impl Fn(&str, &str, &str) -> bool,
) -> Option<(Target, bool)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let own = |s: &&str| (*s).to_owned();
    let discovery = |legacy, group: Option<&&str>, version: Option<&&str>| {
        Some((
            Target::Discovery {
                legacy,
                group: group.map(own),
                version: version.map(own),
            },
            false,
        ))
    };
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return discovery(true, None, None),
        ["api", v] => return discovery(true, Some(&""), Some(v)),
        ["apis"] => return discovery(false, None, None),
        ["apis", g] => return discovery(false, Some(g), None),
        ["apis", g, v] => return discovery(false, Some(g), Some(v)),
        ["api", v, rest @ ..] => (String::new(), own(v), rest),
        ["apis", g, v, rest @ ..] => (own(g), own(v), rest),
        _ => return None,
    };
    let (rest, legacy_watch) = match rest {
        ["watch", rest @ ..] if !rest.is_empty() => (rest, true),
        _ => (rest, false),
    };
    let namespaced = |plural: &&str| is_namespaced_plural(&group, &version, plural);
    let (plural, namespace, name, subresource) = match rest {
        ["namespaces", ns, plural] if namespaced(plural) => {
            (own(plural), Some(own(ns)), None, None)
        }
        ["namespaces", ns, plural, name] if namespaced(plural) => {
            (own(plural), Some(own(ns)), Some(own(name)), None)
        }
        ["namespaces", ns, plural, name, sub] if namespaced(plural) => {
            (own(plural), Some(own(ns)), Some(own(name)), Some(own(sub)))
        }
        [plural] => (own(plural), None, None, None),
        [plural, name] => (own(plural), None, Some(own(name)), None),
        [plural, name, sub] => (own(plural), None, Some(own(name)), Some(own(sub))),
        _ => return None,
    };
    let rp = ResourcePath {
        group,
        version,
        plural,
        namespace,
        name,
        subresource,
    };
    Some((Target::Resource(rp), legacy_watch))
}

impl RequestInfo {
    /// What authorization decides on, for `user`.
    pub fn attributes(&self, user: &User) -> Attributes {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let selected = text(&self.selected_name);
        let mut attrs = Attributes {
            user: user.clone(),
            verb: self.verb.clone(),
            namespace: String::new(),
            api_group: String::new(),
            api_version: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            path: self.path.clone(),
            resource_request: false,
        };
        let Target::Resource(rp) = &self.target else {
            attrs.name = selected;
            return attrs;
        };
        attrs.resource_request = true;
        attrs.api_group.clone_from(&rp.group);
        attrs.api_version.clone_from(&rp.version);
        attrs.resource.clone_from(&rp.plural);
        attrs.subresource = text(&rp.subresource);
        attrs.name = rp.name.clone().unwrap_or(selected);
        // A namespace's own requests are in that namespace (upstream).
        attrs.namespace = match (&rp.namespace, rp.group.as_str(), rp.plural.as_str()) {
            (Some(ns), _, _) => ns.clone(),
            (None, "", "namespaces") => text(&rp.name),
            (None, _, _) => String::new(),
        };
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, uri: &str) -> RequestInfo {
        let catalog = Catalog::builtin();
        parse(&method.parse().unwrap(), &uri.parse().unwrap(), &catalog)
    }

    /// (verb, group, version, resource, namespace, name, subresource) of
    /// the attributes, and whether the path is a resource request.
    fn seen(method: &str, uri: &str) -> (bool, [String; 7]) {
        let a = info(method, uri).attributes(&User::bootstrap("abcdef"));
        let fields = [
            a.verb,
            a.api_group,
            a.api_version,
            a.resource,
            a.namespace,
            a.name,
            a.subresource,
        ];
        (a.resource_request, fields)
    }

    #[test]
    fn requests_route_to_upstream_s_request_info() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool, [&str; 7])] = &[
            // Core and named groups, namespaced and cluster-scoped.
            ("GET", "/api/v1/namespaces/default/pods", true, ["list", "", "v1", "pods", "default", "", ""]),
            ("GET", "/api/v1/pods", true, ["list", "", "v1", "pods", "", "", ""]),
            ("GET", "/api/v1/namespaces/default/pods/web", true, ["get", "", "v1", "pods", "default", "web", ""]),
            ("HEAD", "/api/v1/namespaces/default/pods/web", true, ["get", "", "v1", "pods", "default", "web", ""]),
            ("POST", "/apis/apps/v1/namespaces/default/deployments", true, ["create", "apps", "v1", "deployments", "default", "", ""]),
            ("PUT", "/apis/apps/v1/namespaces/default/deployments/web", true, ["update", "apps", "v1", "deployments", "default", "web", ""]),
            ("PATCH", "/api/v1/nodes/n1", true, ["patch", "", "v1", "nodes", "", "n1", ""]),
            ("DELETE", "/api/v1/nodes/n1", true, ["delete", "", "v1", "nodes", "", "n1", ""]),
            ("DELETE", "/api/v1/namespaces/default/pods", true, ["deletecollection", "", "v1", "pods", "default", "", ""]),
            ("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", true, ["list", "rbac.authorization.k8s.io", "v1", "clusterroles", "", "", ""]),
            // Subresources.
            ("PUT", "/api/v1/namespaces/default/pods/web/status", true, ["update", "", "v1", "pods", "default", "web", "status"]),
            ("GET", "/apis/apps/v1/namespaces/default/deployments/web/scale", true, ["get", "apps", "v1", "deployments", "default", "web", "scale"]),
            ("POST", "/api/v1/namespaces/default/pods/web/eviction", true, ["create", "", "v1", "pods", "default", "web", "eviction"]),
            ("POST", "/api/v1/namespaces/default/serviceaccounts/app/token", true, ["create", "", "v1", "serviceaccounts", "default", "app", "token"]),
            ("GET", "/api/v1/namespaces/default/pods/web/log", true, ["get", "", "v1", "pods", "default", "web", "log"]),
            ("PATCH", "/api/v1/nodes/n1/status", true, ["patch", "", "v1", "nodes", "", "n1", "status"]),
            // A namespace is in itself; namespaces/<name>/status is its status.
            ("GET", "/api/v1/namespaces/kube-system", true, ["get", "", "v1", "namespaces", "kube-system", "kube-system", ""]),
            ("PUT", "/api/v1/namespaces/kube-system/finalize", true, ["update", "", "v1", "namespaces", "kube-system", "kube-system", "finalize"]),
            ("GET", "/api/v1/namespaces", true, ["list", "", "v1", "namespaces", "", "", ""]),
            // Watches: ?watch=1 or true, and the legacy /watch/ paths.
            ("GET", "/api/v1/namespaces/default/pods?watch=1", true, ["watch", "", "v1", "pods", "default", "", ""]),
            ("GET", "/api/v1/pods?watch=true&resourceVersion=5", true, ["watch", "", "v1", "pods", "", "", ""]),
            ("GET", "/api/v1/pods?watch=false", true, ["list", "", "v1", "pods", "", "", ""]),
            ("GET", "/api/v1/watch/namespaces/default/pods", true, ["watch", "", "v1", "pods", "default", "", ""]),
            ("GET", "/apis/apps/v1/watch/deployments", true, ["watch", "apps", "v1", "deployments", "", "", ""]),
            ("GET", "/api/v1/watch/namespaces/default/pods/web", true, ["watch", "", "v1", "pods", "default", "web", ""]),
            // A list or watch of one name names it.
            ("GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Dmine", true, ["list", "", "v1", "secrets", "default", "mine", ""]),
            ("GET", "/api/v1/nodes?watch=1&fieldSelector=metadata.name%3D%3Dn1", true, ["watch", "", "v1", "nodes", "", "n1", ""]),
            ("GET", "/api/v1/nodes?fieldSelector=metadata.name%21%3Dn1", true, ["list", "", "v1", "nodes", "", "", ""]),
            // Not resources: discovery, OpenAPI, health, orch's paths, nonsense.
            ("GET", "/api", false, ["get", "", "", "", "", "", ""]),
            ("GET", "/apis/apps/v1", false, ["get", "", "", "", "", "", ""]),
            ("HEAD", "/openapi/v3", false, ["head", "", "", "", "", "", ""]),
            ("POST", "/v1-orch/anything", false, ["post", "", "", "", "", "", ""]),
            ("GET", "/orch/v1/tunnel?node=n1", false, ["get", "", "", "", "", "n1", ""]),
            ("GET", "/api/v1/a/b/c/d", false, ["get", "", "", "", "", "", ""]),
        ];
        for (method, uri, resource, want) in cases {
            let (is_resource, got) = seen(method, uri);
            assert_eq!(
                (is_resource, got),
                (*resource, want.map(str::to_owned)),
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn targets_say_what_to_dispatch_to() {
        let Target::Resource(rp) = info("GET", "/api/v1/namespaces/kube-system/status").target
        else {
            panic!("a namespace's status is a resource");
        };
        assert_eq!(
            (
                rp.plural.as_str(),
                rp.namespace,
                rp.name.as_deref(),
                rp.subresource.as_deref()
            ),
            ("namespaces", None, Some("kube-system"), Some("status"))
        );
        assert_eq!(
            info("GET", "/apis/apps").target,
            Target::Discovery {
                legacy: false,
                group: Some("apps".into()),
                version: None
            }
        );
        assert_eq!(
            info("GET", "/api/v1").target,
            Target::Discovery {
                legacy: true,
                group: Some(String::new()),
                version: Some("v1".into())
            }
        );
        assert_eq!(info("GET", "/nope").target, Target::NonResource);
        assert_eq!(
            info("GET", "/api/v1/watch").target,
            Target::Resource(ResourcePath {
                group: String::new(),
                version: "v1".into(),
                plural: "watch".into(),
                namespace: None,
                name: None,
                subresource: None,
            }),
            "a bare /watch is a (missing) resource, not a legacy watch"
        );
        let i = info("GET", "/api/v1/pods?labelSelector=app%3Dweb&watch=1");
        assert_eq!(i.query["labelSelector"], ["app=web"]);
    }
}
