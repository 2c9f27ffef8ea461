//! The resource catalog: every kind the API serves, as data.
//!
//! Discovery, routing, OpenAPI and the store keys all read this table, so
//! adding a kind (a CustomResourceDefinition, later) is adding an entry, not
//! editing match statements.

/// The verbs of an ordinary resource.
pub const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A subresource such as `status` or `scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    pub name: String,
    /// The group/version/kind of what the subresource accepts and returns.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub verbs: Vec<String>,
}

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The URL segment, e.g. `deployments`.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// For a custom resource: what its definition says of this version.
    pub custom: Option<std::sync::Arc<super::custom::Custom>>,
}

impl Resource {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }

    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// The store key prefix of every object of this resource:
    /// `/registry/<group>/<plural>/`, with `core` for the core group.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object (`namespace` is ignored for cluster-scoped
    /// resources).
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The prefix of one namespace's objects, or of all of them.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }
}

struct Entry {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    verbs: &'static [&'static str],
    subresources: &'static [(&'static str, &'static str)],
}

/// Subresource kinds: `status` returns the object itself; the rest name
/// their own kind (`autoscaling/v1` Scale, `policy/v1` Eviction, …).
fn subresource(group: &str, kind: &str, name: &str, verbs: &str) -> Subresource {
    let (group, version, kind) = match name {
        "scale" => ("autoscaling", "v1", "Scale"),
        "eviction" => ("policy", "v1", "Eviction"),
        "binding" => ("", "v1", "Binding"),
        "log" | "exec" | "attach" | "portforward" | "proxy" => ("", "v1", "Pod"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        _ => (group, "v1", kind),
    };
    Subresource {
        name: name.to_owned(),
        group: group.to_owned(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        verbs: verbs.split(',').map(str::to_owned).collect(),
    }
}

const STATUS: (&str, &str) = ("status", "get,patch,update");
const SCALE: (&str, &str) = ("scale", "get,patch,update");

const ENTRIES: &[Entry] = &[
    Entry {
        group: "",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        categories: &[],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        subresources: &[STATUS, ("finalize", "update")],
    },
    Entry {
        group: "",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short: &["no"],
        categories: &[],
        verbs: CRUD,
        subresources: &[STATUS],
    },
    Entry {
        group: "",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[
            STATUS,
            ("binding", "create"),
            ("eviction", "create"),
            ("log", "get"),
            ("exec", "create,get"),
            ("attach", "create,get"),
            ("portforward", "create,get"),
        ],
    },
    Entry {
        group: "",
        kind: "Service",
        plural: "services",
        namespaced: true,
        short: &["svc"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS],
    },
    Entry {
        group: "",
        kind: "Endpoints",
        plural: "endpoints",
        namespaced: true,
        short: &["ep"],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        categories: &[],
        verbs: CRUD,
        subresources: &[("token", "create")],
    },
    Entry {
        group: "",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "",
        kind: "ReplicationController",
        plural: "replicationcontrollers",
        namespaced: true,
        short: &["rc"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS, SCALE],
    },
    Entry {
        group: "coordination.k8s.io",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "apps",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        short: &["deploy"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS, SCALE],
    },
    Entry {
        group: "apps",
        kind: "ReplicaSet",
        plural: "replicasets",
        namespaced: true,
        short: &["rs"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS, SCALE],
    },
    Entry {
        group: "apps",
        kind: "DaemonSet",
        plural: "daemonsets",
        namespaced: true,
        short: &["ds"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS],
    },
    Entry {
        group: "apps",
        kind: "StatefulSet",
        plural: "statefulsets",
        namespaced: true,
        short: &["sts"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS, SCALE],
    },
    Entry {
        group: "apps",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "batch",
        kind: "Job",
        plural: "jobs",
        namespaced: true,
        short: &[],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS],
    },
    Entry {
        group: "batch",
        kind: "CronJob",
        plural: "cronjobs",
        namespaced: true,
        short: &["cj"],
        categories: &["all"],
        verbs: CRUD,
        subresources: &[STATUS],
    },
    Entry {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "events.k8s.io",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "rbac.authorization.k8s.io",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "rbac.authorization.k8s.io",
        kind: "Role",
        plural: "roles",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
    },
    Entry {
        group: "certificates.k8s.io",
        kind: "CertificateSigningRequest",
        plural: "certificatesigningrequests",
        namespaced: false,
        short: &["csr"],
        categories: &[],
        verbs: CRUD,
        subresources: &[("approval", "get,patch,update"), STATUS],
    },
    Entry {
        group: "apiextensions.k8s.io",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        categories: &["api-extensions"],
        verbs: CRUD,
        subresources: &[STATUS],
    },
    Entry {
        group: "authentication.k8s.io",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    },
    Entry {
        group: "authentication.k8s.io",
        kind: "TokenReview",
        plural: "tokenreviews",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    },
    Entry {
        group: "authorization.k8s.io",
        kind: "LocalSubjectAccessReview",
        plural: "localsubjectaccessreviews",
        namespaced: true,
        short: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    },
    Entry {
        group: "authorization.k8s.io",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    },
    Entry {
        group: "authorization.k8s.io",
        kind: "SelfSubjectRulesReview",
        plural: "selfsubjectrulesreviews",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    },
    Entry {
        group: "authorization.k8s.io",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        namespaced: false,
        short: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    },
];

/// Older versions (group, version, plural) of served resources that
/// upstream v1.33 no longer serves and orch still answers, unlisted (not
/// in discovery or OpenAPI), for kubectl versions that call them without
/// asking discovery: `kubectl auth whoami` of 1.27 posts its
/// SelfSubjectReview to `authentication.k8s.io/v1beta1` (1.28 and later
/// try `v1` first). The object is the same in both versions.
const UNLISTED: &[(&str, &str, &str)] =
    &[("authentication.k8s.io", "v1beta1", "selfsubjectreviews")];

/// Every served resource, in discovery order.
#[derive(Debug, Clone)]
pub struct Catalog {
    resources: Vec<Resource>,
    /// Served but not listed ([`UNLISTED`]).
    unlisted: Vec<Resource>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The built-in kinds of Kubernetes v1.33 that orch serves.
    pub fn builtin() -> Self {
        let resources = ENTRIES
            .iter()
            .map(|e| Resource {
                group: e.group.to_owned(),
                version: "v1".to_owned(),
                kind: e.kind.to_owned(),
                plural: e.plural.to_owned(),
                singular: e.kind.to_lowercase(),
                namespaced: e.namespaced,
                short_names: e.short.iter().map(|s| (*s).to_owned()).collect(),
                categories: e.categories.iter().map(|c| (*c).to_owned()).collect(),
                verbs: e.verbs.iter().map(|s| (*s).to_owned()).collect(),
                subresources: e
                    .subresources
                    .iter()
                    .map(|(name, verbs)| subresource(e.group, e.kind, name, verbs))
                    .collect(),
                custom: None,
            })
            .collect::<Vec<Resource>>();
        let unlisted = UNLISTED
            .iter()
            .filter_map(|(group, version, plural)| {
                let served = resources
                    .iter()
                    .find(|r| r.group == *group && r.plural == *plural)?;
                Some(Resource {
                    version: (*version).to_owned(),
                    ..served.clone()
                })
            })
            .collect();
        Self {
            resources,
            unlisted,
        }
    }

    /// This catalog and `custom` resources (served after the built-in
    /// kinds, in the order given).
    #[must_use]
    pub fn with_custom(&self, custom: impl IntoIterator<Item = Resource>) -> Self {
        let mut resources = self.resources.clone();
        resources.extend(custom);
        Self {
            resources,
            unlisted: self.unlisted.clone(),
        }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The resource served at `/apis/<group>/<version>/<plural>`, listed
    /// or not.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .chain(&self.unlisted)
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource of a kind, for objects that name their apiVersion/kind.
    pub fn find_kind(&self, group: &str, version: &str, kind: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// The groups, each with its versions, in discovery order (core first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version.clone());
                    }
                }
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        groups
    }

    /// The resources of one group version.
    pub fn group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources
            .iter()
            .filter(move |r| r.group == group && r.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_kubectl_relies_on_are_present() {
        let catalog = Catalog::builtin();
        for (short, plural) in [
            ("po", "pods"),
            ("svc", "services"),
            ("deploy", "deployments"),
            ("rs", "replicasets"),
            ("ds", "daemonsets"),
            ("sts", "statefulsets"),
            ("ns", "namespaces"),
            ("no", "nodes"),
            ("cm", "configmaps"),
            ("ep", "endpoints"),
            ("ev", "events"),
            ("sa", "serviceaccounts"),
            ("cj", "cronjobs"),
            ("rc", "replicationcontrollers"),
        ] {
            let found = catalog
                .resources()
                .iter()
                .find(|r| r.short_names.iter().any(|s| s == short))
                .unwrap_or_else(|| panic!("no resource with short name {short}"));
            assert_eq!(found.plural, plural);
        }
    }

    #[test]
    fn old_self_subject_reviews_are_served_but_not_listed() {
        let catalog = Catalog::builtin();
        let old = catalog
            .find("authentication.k8s.io", "v1beta1", "selfsubjectreviews")
            .expect("v1beta1 selfsubjectreviews for kubectl 1.27");
        assert_eq!(old.kind, "SelfSubjectReview");
        assert_eq!(old.api_version(), "authentication.k8s.io/v1beta1");
        assert!(old.allows("create") && !old.allows("list"));
        let groups = catalog.groups();
        let (_, versions) = groups
            .iter()
            .find(|(g, _)| g == "authentication.k8s.io")
            .expect("authentication.k8s.io listed");
        assert_eq!(versions, &["v1"], "discovery lists v1 alone, as v1.33");
        assert_eq!(
            catalog
                .group_version("authentication.k8s.io", "v1beta1")
                .count(),
            0
        );
        assert!(
            catalog
                .find("authentication.k8s.io", "v1alpha1", "selfsubjectreviews")
                .is_none()
        );
    }

    #[test]
    fn keys_separate_groups_namespaces_and_scopes() {
        let catalog = Catalog::builtin();
        let deploy = catalog.find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            deploy.key(Some("default"), "web"),
            "/registry/apps/deployments/default/web"
        );
        let ns = catalog.find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.key(Some("ignored"), "default"),
            "/registry/core/namespaces/default"
        );
        assert_eq!(deploy.subresource("scale").unwrap().kind, "Scale");
    }
}
