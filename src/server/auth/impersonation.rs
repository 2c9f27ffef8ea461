//! Impersonation (upstream's `WithImpersonation` filter): a request with
//! `Impersonate-User` (and optionally `Impersonate-Group`s,
//! `Impersonate-Uid`, `Impersonate-Extra-<key>`) acts as that user, if
//! its real user may `impersonate` each of them. This is what `kubectl
//! --as` and `--as-group` send.
//!
//! As upstream:
//! - a user named `system:serviceaccount:<ns>:<name>` is asked for as
//!   `serviceaccounts` in `<ns>` and, without groups asked for, gets the
//!   service account groups; anyone else as `users`; groups as `groups`,
//!   uids as `uids` and extras as `userextras/<key>` (the last two in
//!   `authentication.k8s.io`);
//! - the impersonated user is in `system:authenticated` unless a group
//!   asked for is it or `system:unauthenticated` (`system:anonymous` is in
//!   `system:unauthenticated`);
//! - asking for groups, a uid or extras without a user is an error, and a
//!   refusal is the 403 of the first thing not allowed.

use http::HeaderMap;

use super::User;
use super::authz::{self, Attributes, Decision};
use crate::api::status::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

/// Does the request ask to impersonate anyone?
pub fn requested(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
}

/// One thing asked to be impersonated, as the attributes of the
/// `impersonate` check.
struct Asked {
    group: &'static str,
    resource: &'static str,
    subresource: String,
    namespace: String,
    name: String,
}

/// Upstream's unescaping of an extra key (`%2F` and the like).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user `requestor` acts as, once every impersonation asked for is
/// allowed; `None` when nothing is asked for.
///
/// # Errors
/// 500 (upstream's) when groups, a uid or extras are asked for without a
/// user; the 403 of the first impersonation not allowed.
pub async fn impersonate(
    authorizers: &authz::Chain,
    requestor: &User,
    headers: &HeaderMap,
) -> Result<Option<User>, ApiError> {
    let value = |h: &http::HeaderValue| h.to_str().unwrap_or_default().to_owned();
    let user = headers.get(USER).map(value).filter(|u| !u.is_empty());
    let groups: Vec<String> = headers.get_all(GROUP).iter().map(value).collect();
    let uid = headers.get(UID).map(value).filter(|u| !u.is_empty());
    let mut extras: Vec<(String, String)> = Vec::new();
    for (name, v) in headers {
        if let Some(key) = name.as_str().strip_prefix(EXTRA) {
            extras.push((unescape(key), value(v)));
        }
    }
    let Some(name) = user else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(None);
        }
        return Err(ApiError::internal_occurred(
            "requested groups, uid or user-extra without impersonating a user",
        ));
    };
    let mut asked = Vec::new();
    let service_account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
    let mut as_user = User {
        name: name.clone(),
        uid: uid.clone().unwrap_or_default(),
        groups: Vec::new(),
    };
    match service_account {
        Some((ns, sa)) => {
            asked.push(Asked {
                group: "",
                resource: "serviceaccounts",
                subresource: String::new(),
                namespace: ns.to_owned(),
                name: sa.to_owned(),
            });
            if groups.is_empty() {
                as_user.groups = vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => asked.push(Asked {
            group: "",
            resource: "users",
            subresource: String::new(),
            namespace: String::new(),
            name: name.clone(),
        }),
    }
    for group in &groups {
        asked.push(Asked {
            group: "",
            resource: "groups",
            subresource: String::new(),
            namespace: String::new(),
            name: group.clone(),
        });
        as_user.groups.push(group.clone());
    }
    for (key, value) in &extras {
        asked.push(Asked {
            group: "authentication.k8s.io",
            resource: "userextras",
            subresource: key.clone(),
            namespace: String::new(),
            name: value.clone(),
        });
    }
    if let Some(uid) = &uid {
        asked.push(Asked {
            group: "authentication.k8s.io",
            resource: "uids",
            subresource: String::new(),
            namespace: String::new(),
            name: uid.clone(),
        });
    }
    for a in asked {
        let attrs = Attributes {
            user: requestor.clone(),
            verb: "impersonate".into(),
            namespace: a.namespace,
            api_group: a.group.into(),
            api_version: "v1".into(),
            resource: a.resource.into(),
            subresource: a.subresource,
            name: a.name,
            path: String::new(),
            resource_request: true,
        };
        match authorizers.authorize(&attrs).await {
            Decision::Allow(_) => {}
            Decision::Deny(reason) | Decision::NoOpinion(reason) => {
                return Err(authz::forbidden(&attrs, &reason));
            }
        }
    }
    if as_user.name == "system:anonymous" {
        if !as_user.groups.iter().any(|g| g == "system:unauthenticated") {
            as_user.groups.push("system:unauthenticated".into());
        }
    } else if !as_user
        .groups
        .iter()
        .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
    {
        as_user.groups.push("system:authenticated".into());
    }
    Ok(Some(as_user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authz::masters::Masters;
    use crate::server::auth::authz::rbac::{Kind, Rbac};
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn chain() -> authz::Chain {
        let rbac = Rbac::bootstrap();
        rbac.apply(
            Kind::ClusterRole,
            &json!({"metadata": {"name": "as-jane"}, "rules": [
                {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["users"], "resourceNames": ["jane"]},
                {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["groups"], "resourceNames": ["devs"]}]}),
        );
        rbac.apply(
            Kind::ClusterRoleBinding,
            &json!({"metadata": {"name": "bob-as-jane"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "as-jane"},
                    "subjects": [{"kind": "User", "name": "bob"}]}),
        );
        authz::Chain::new(vec![Box::new(Masters), Box::new(rbac)])
    }

    #[tokio::test]
    async fn impersonation_needs_the_impersonate_verb_on_each_thing_asked() {
        let chain = chain();
        let bob = User::new("bob", &[]);
        let admin = User::new("admin", &["system:masters"]);
        assert_eq!(
            impersonate(&chain, &bob, &headers(&[])).await.unwrap(),
            None
        );
        let jane = impersonate(&chain, &bob, &headers(&[("impersonate-user", "jane")]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (jane.name.as_str(), jane.groups.as_slice()),
            ("jane", &["system:authenticated".to_owned()][..])
        );
        let jane = impersonate(
            &chain,
            &bob,
            &headers(&[("impersonate-user", "jane"), ("impersonate-group", "devs")]),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(jane.groups, ["devs", "system:authenticated"]);
        let err = impersonate(&chain, &bob, &headers(&[("impersonate-user", "root")]))
            .await
            .unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "users \"root\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let err = impersonate(
            &chain,
            &bob,
            &headers(&[
                ("impersonate-user", "jane"),
                ("impersonate-group", "system:masters"),
            ]),
        )
        .await
        .unwrap_err();
        assert!(
            err.message
                .starts_with("groups \"system:masters\" is forbidden"),
            "{}",
            err.message
        );
        let err = impersonate(&chain, &bob, &headers(&[("impersonate-group", "devs")]))
            .await
            .unwrap_err();
        assert_eq!(err.code, 500);
        // Service accounts: asked for in their namespace, with their groups.
        let sa = impersonate(
            &chain,
            &admin,
            &headers(&[("impersonate-user", "system:serviceaccount:ns1:app")]),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            sa.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns1",
                "system:authenticated"
            ]
        );
        let err = impersonate(
            &chain,
            &bob,
            &headers(&[("impersonate-user", "system:serviceaccount:ns1:app")]),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.message,
            "serviceaccounts \"app\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"ns1\""
        );
        // Anonymous stays unauthenticated.
        let anon = impersonate(
            &chain,
            &admin,
            &headers(&[("impersonate-user", "system:anonymous")]),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(anon.groups, ["system:unauthenticated"]);
    }
}
