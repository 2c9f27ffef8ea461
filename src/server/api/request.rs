//! Request parsing: which resource a path names, the query parameters, and
//! what the client accepts.

/// What a path under `/api` or `/apis` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`, `/apis`, `/apis/<g>` and `/api/v1`, `/apis/<g>/<v>`.
    Discovery {
        legacy: bool,
        group: Option<String>,
        version: Option<String>,
    },
    Resource(ResourcePath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parse a request path. `is_namespaced_plural(group, version, plural)`
/// tells `namespaces/<ns>/<plural>` apart from `namespaces/<name>/<sub>`.
pub fn parse_path(
    path: &str,
    is_namespaced_plural: impl Fn(&str, &str, &str) -> bool,
) -> Option<Target> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => {
            return Some(Target::Discovery {
                legacy: true,
                group: None,
                version: None,
            });
        }
        ["api", v] => {
            return Some(Target::Discovery {
                legacy: true,
                group: Some(String::new()),
                version: Some((*v).to_owned()),
            });
        }
        ["apis"] => {
            return Some(Target::Discovery {
                legacy: false,
                group: None,
                version: None,
            });
        }
        ["apis", g] => {
            return Some(Target::Discovery {
                legacy: false,
                group: Some((*g).to_owned()),
                version: None,
            });
        }
        ["apis", g, v] => {
            return Some(Target::Discovery {
                legacy: false,
                group: Some((*g).to_owned()),
                version: Some((*v).to_owned()),
            });
        }
        ["api", v, rest @ ..] => (String::new(), (*v).to_owned(), rest),
        ["apis", g, v, rest @ ..] => ((*g).to_owned(), (*v).to_owned(), rest),
        _ => return None,
    };
    let own = |s: &&str| (*s).to_owned();
    let (plural, namespace, name, subresource) = match rest {
        ["namespaces", ns, plural] if is_namespaced_plural(&group, &version, plural) => {
            (own(plural), Some(own(ns)), None, None)
        }
        ["namespaces", ns, plural, name] if is_namespaced_plural(&group, &version, plural) => {
            (own(plural), Some(own(ns)), Some(own(name)), None)
        }
        ["namespaces", ns, plural, name, sub] if is_namespaced_plural(&group, &version, plural) => {
            (own(plural), Some(own(ns)), Some(own(name)), Some(own(sub)))
        }
        [plural] => (own(plural), None, None, None),
        [plural, name] => (own(plural), None, Some(own(name)), None),
        [plural, name, sub] => (own(plural), None, Some(own(name)), Some(own(sub))),
        _ => return None,
    };
    Some(Target::Resource(ResourcePath {
        group,
        version,
        plural,
        namespace,
        name,
        subresource,
    }))
}

pub use crate::api::query::parse_query;

/// How the response body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Json,
    Table,
    PartialObjectMetadata,
    Yaml,
}

/// Pick the representation from `Accept`, as the apiserver negotiates:
/// the first media type we can produce wins.
pub fn negotiate(accept: Option<&str>) -> Option<Representation> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Representation::Json);
    };
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let mut as_ = None;
        let mut g = None;
        for p in params {
            if let Some((k, v)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(v.trim().to_owned()),
                    "g" => g = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        match (media, as_.as_deref(), g.as_deref()) {
            ("application/json", Some("Table"), Some("meta.k8s.io")) => {
                return Some(Representation::Table);
            }
            (
                "application/json",
                Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                Some("meta.k8s.io"),
            ) => {
                return Some(Representation::PartialObjectMetadata);
            }
            ("application/json" | "*/*" | "application/*", None, _) => {
                return Some(Representation::Json);
            }
            ("application/yaml", None, _) => return Some(Representation::Yaml),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaced(_: &str, _: &str, plural: &str) -> bool {
        matches!(plural, "pods" | "deployments")
    }

    #[test]
    fn paths_name_resources_and_subresources() {
        let t = parse_path(
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            namespaced,
        )
        .unwrap();
        assert_eq!(
            t,
            Target::Resource(ResourcePath {
                group: "apps".into(),
                version: "v1".into(),
                plural: "deployments".into(),
                namespace: Some("default".into()),
                name: Some("web".into()),
                subresource: Some("scale".into()),
            })
        );
        // namespaces/<name>/status is the namespace's status, not a collection.
        let t = parse_path("/api/v1/namespaces/kube-system/status", namespaced).unwrap();
        let Target::Resource(r) = t else { panic!() };
        assert_eq!(
            (
                r.plural.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("kube-system"), Some("status"))
        );
        let Target::Resource(r) = parse_path("/api/v1/pods", namespaced).unwrap() else {
            panic!()
        };
        assert_eq!((r.plural.as_str(), r.namespace), ("pods", None));
        assert!(matches!(
            parse_path("/apis/apps", namespaced),
            Some(Target::Discovery { .. })
        ));
        assert_eq!(parse_path("/nope", namespaced), None);
    }

    #[test]
    fn query_is_percent_decoded() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x"));
        assert_eq!(q["labelSelector"], ["app=web,tier in (a)"]);
        assert_eq!(q["watch"], ["1"]);
        assert_eq!(q["x"], [""]);
    }

    #[test]
    fn kubectl_accept_headers_negotiate() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(table)), Some(Representation::Table));
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf,application/json")),
            Some(Representation::Json)
        );
        assert_eq!(negotiate(None), Some(Representation::Json));
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf")), None);
    }
}
