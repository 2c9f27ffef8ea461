//! The reviews the API answers instead of storing, as upstream's registry
//! answers them:
//! - SelfSubjectReview, who am I (`kubectl auth whoami`);
//! - SelfSubjectAccessReview, may I (`kubectl auth can-i`): the authorizer
//!   chain's decision for the caller and the attributes asked about;
//! - SelfSubjectRulesReview, what may I do in a namespace (`kubectl auth
//!   can-i --list`): the rules every authorizer lists for the caller;
//! - SubjectAccessReview and LocalSubjectAccessReview, may this user
//!   (what webhooks and aggregated API servers ask, with
//!   system:auth-delegator's rights);
//! - TokenReview, whose token is this (the same).
//!
//! Each is answered in the version it was asked in. Who may create them
//! is the authorizer chain's business ([`crate::server::auth::authz`]).

use serde_json::{Value, json};

use super::Call;
use crate::api::status::{ApiError, FieldError};
use crate::server::auth::User;
use crate::server::auth::authz::{self, Attributes, Decision};

/// The answer to a review `body` POSTed to `call`'s collection, or `None`
/// when the resource is not a review (it is stored as usual).
pub(super) async fn answer(call: &Call<'_>, body: &Value) -> Option<Result<Value, ApiError>> {
    let (res, user, authorizers) = (&call.res, call.user, &call.api.authorizers);
    let answer = match (res.group.as_str(), res.kind.as_str()) {
        ("authentication.k8s.io", "SelfSubjectReview") => Ok(self_subject(user)),
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            access(authorizers, user, body).await
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => rules(authorizers, user, body),
        ("authorization.k8s.io", "SubjectAccessReview") => {
            subject_access(authorizers, body, None).await
        }
        ("authorization.k8s.io", "LocalSubjectAccessReview") => {
            subject_access(authorizers, body, Some(call.ns().unwrap_or_default())).await
        }
        ("authentication.k8s.io", "TokenReview") => token(call, body).await,
        _ => return None,
    };
    Some(answer.map(|mut review| {
        review["apiVersion"] = json!(res.api_version());
        review["kind"] = json!(res.kind);
        review
    }))
}

/// The caller as authentication named them.
fn self_subject(user: &User) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    json!({
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": info},
    })
}

/// The user a SubjectAccessReview's spec names (only the groups it lists:
/// none is added).
fn spec_user(spec: &Value) -> User {
    let text = |k: &str| spec[k].as_str().unwrap_or_default().to_owned();
    User {
        name: text("user"),
        uid: text("uid"),
        groups: spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    }
}

/// A SubjectAccessReview (`local`: a LocalSubjectAccessReview posted in
/// that namespace): the chain's decision for the user and attributes its
/// spec names, as upstream's registry answers.
///
/// # Errors
/// 422 as upstream's validation (one kind of attributes; a user or a
/// group; no non-resource attributes in a local review); 400 when a local
/// review names another namespace than the one it was posted in.
async fn subject_access(
    authorizers: &authz::Chain,
    body: &Value,
    local: Option<&str>,
) -> Result<Value, ApiError> {
    let kind = if local.is_some() {
        "LocalSubjectAccessReview"
    } else {
        "SubjectAccessReview"
    };
    let spec = &body["spec"];
    let mut errors = Vec::new();
    if local.is_some()
        && let Some(nra) = spec.get("nonResourceAttributes").filter(|v| !v.is_null())
    {
        errors.push(FieldError::invalid(
            "spec.nonResourceAttributes",
            nra,
            "disallowed on this kind of request",
        ));
    }
    let user = spec_user(spec);
    if user.name.is_empty() && user.groups.is_empty() {
        errors.push(FieldError::invalid(
            "spec.user",
            &json!(""),
            "at least one of user or group must be specified",
        ));
    }
    let mut attrs = match access_attributes(&user, spec) {
        Ok(attrs) => Some(attrs),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid("authorization.k8s.io", kind, "", errors));
    }
    if let (Some(ns), Some(attrs)) = (local, attrs.as_mut()) {
        if !attrs.namespace.is_empty() && attrs.namespace != ns {
            return Err(ApiError::bad_request(format!(
                "spec.resourceAttributes.namespace must match namespace: {ns}"
            )));
        }
        attrs.namespace = ns.to_owned();
    }
    let attrs = attrs.expect("attributes when there are no errors");
    let mut review = body.clone();
    if !review["metadata"].is_object() {
        review["metadata"] = json!({"creationTimestamp": null});
    }
    review["status"] = decision_status(authorizers.authorize(&attrs).await);
    Ok(review)
}

/// A decision as a review's status.
fn decision_status(decision: Decision) -> Value {
    match decision {
        Decision::Allow(reason) if reason.is_empty() => json!({"allowed": true}),
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::NoOpinion(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::NoOpinion(reason) => json!({"allowed": false, "reason": reason}),
    }
}

/// A TokenReview: who `spec.token` authenticates as, for `spec.audiences`
/// (the API's when none are named), as upstream's registry answers it. A
/// service account token is checked against the audiences asked for;
/// other tokens (bootstrap, static) are the API's own.
///
/// # Errors
/// 400 without a token, as upstream.
async fn token(call: &Call<'_>, body: &Value) -> Result<Value, ApiError> {
    use crate::server::auth::authn::{self, Authenticator, Credentials, PeerCertificate};
    use crate::server::auth::serviceaccount::Audiences;
    let spec = &body["spec"];
    let token = spec["token"].as_str().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let asked: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let api = call.api;
    let audiences = if asked.is_empty() {
        api.api_audiences.clone()
    } else {
        Audiences::new(&asked).map_err(|e| {
            ApiError::invalid(
                "authentication.k8s.io",
                "TokenReview",
                "",
                vec![FieldError::invalid(
                    "spec.audiences",
                    &spec["audiences"],
                    e.to_string(),
                )],
            )
        })?
    };
    let none = PeerCertificate::None;
    let credentials = Credentials {
        peer: &none,
        bearer: Some(token),
    };
    let (outcome, accepted) = match api.service_accounts.verify(token) {
        Some(claims) => {
            let accepted = audiences.accepted(&claims.audiences);
            let authenticator = authn::service_account::ServiceAccounts::new(
                api.service_accounts.clone(),
                api.registry.clone(),
                audiences,
            );
            let outcome = match authenticator.authenticate(&credentials).await {
                Ok(Some(user)) => Ok(user),
                Ok(None) => Err(authn::Error::InvalidBearerToken),
                Err(e) => Err(e),
            };
            (outcome, accepted)
        }
        None => (
            api.authenticators.authenticate(&credentials).await,
            audiences.as_slice().to_vec(),
        ),
    };
    let status = match outcome {
        Ok(user) => {
            let mut info = json!({"username": user.name, "groups": user.groups});
            if !user.uid.is_empty() {
                info["uid"] = json!(user.uid);
            }
            json!({"authenticated": true, "user": info, "audiences": accepted})
        }
        Err(e) => json!({"user": {}, "error": e.to_string()}),
    };
    let mut review = body.clone();
    if !review["metadata"].is_object() {
        review["metadata"] = json!({"creationTimestamp": null});
    }
    review["status"] = status;
    Ok(review)
}

/// The review as sent, with the chain's decision on the attributes its
/// spec names, for the caller.
///
/// # Errors
/// 422 unless exactly one of `resourceAttributes` and
/// `nonResourceAttributes` is given (upstream's validation).
async fn access(authorizers: &authz::Chain, user: &User, body: &Value) -> Result<Value, ApiError> {
    let attrs = access_attributes(user, &body["spec"]).map_err(|e| {
        ApiError::invalid(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "",
            vec![e],
        )
    })?;
    let status = decision_status(authorizers.authorize(&attrs).await);
    let mut review = body.clone();
    if !review["metadata"].is_object() {
        review["metadata"] = json!({"creationTimestamp": null});
    }
    review["status"] = status;
    Ok(review)
}

/// What an access review asks about, as upstream's
/// `ResourceAttributesFrom` / `NonResourceAttributesFrom`.
///
/// # Errors
/// Upstream's validation error unless exactly one of
/// `resourceAttributes` and `nonResourceAttributes` is given.
fn access_attributes(user: &User, spec: &Value) -> Result<Attributes, FieldError> {
    let given = |field: &str| spec.get(field).filter(|v| !v.is_null());
    let text = |v: &Value, field: &str| v[field].as_str().unwrap_or_default().to_owned();
    let invalid = FieldError::invalid;
    match (given("resourceAttributes"), given("nonResourceAttributes")) {
        (Some(_), Some(other)) => Err(invalid(
            "spec.nonResourceAttributes",
            other,
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            "spec.resourceAttributes",
            &Value::Null,
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        (Some(ra), None) => Ok(Attributes {
            user: user.clone(),
            verb: text(ra, "verb"),
            namespace: text(ra, "namespace"),
            api_group: text(ra, "group"),
            api_version: text(ra, "version"),
            resource: text(ra, "resource"),
            subresource: text(ra, "subresource"),
            name: text(ra, "name"),
            path: String::new(),
            resource_request: true,
        }),
        (None, Some(nra)) => Ok(Attributes::non_resource(
            user,
            &text(nra, "verb"),
            &text(nra, "path"),
        )),
    }
}

/// The rules every authorizer lists for the caller in `spec.namespace`.
///
/// # Errors
/// 400 without a namespace, as upstream.
fn rules(authorizers: &authz::Chain, user: &User, body: &Value) -> Result<Value, ApiError> {
    let namespace = body["spec"]["namespace"].as_str().unwrap_or_default();
    if namespace.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let rules = authorizers.rules_for(user, namespace);
    let resource: Vec<Value> = rules
        .resource
        .iter()
        .map(|r| {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                rule["resourceNames"] = json!(r.resource_names);
            }
            rule
        })
        .collect();
    let non_resource: Vec<Value> = rules
        .non_resource
        .iter()
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    let mut status = json!({
        "resourceRules": resource,
        "nonResourceRules": non_resource,
        "incomplete": rules.incomplete,
    });
    let error = rules.evaluation_error();
    if !error.is_empty() {
        status["evaluationError"] = json!(error);
    }
    Ok(json!({
        "metadata": {"creationTimestamp": null},
        "spec": {},
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::authz::masters::Masters;
    use crate::server::auth::authz::rbac::Rbac;

    fn chain() -> authz::Chain {
        authz::Chain::new(vec![Box::new(Masters), Box::new(Rbac::bootstrap())])
    }

    fn can(verb: &str, group: &str, resource: &str) -> Value {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": "default"}}})
    }

    #[tokio::test]
    async fn access_reviews_answer_with_the_chain_s_decision() {
        let app = User::service_account("default", "app");
        let admin = User::new("system:admin", &["system:masters"]);
        let chain = chain();
        #[rustfmt::skip]
        let cases = [
            (&app, can("create", "authentication.k8s.io", "selfsubjectreviews"), true),
            (&app, can("create", "", "pods"), false),
            (&app, can("get", "", "secrets"), false),
            (&admin, can("create", "", "pods"), true),
            (&app, json!({"spec": {"nonResourceAttributes": {"verb": "get", "path": "/api"}}}), true),
            (&app, json!({"spec": {"nonResourceAttributes": {"verb": "get", "path": "/metrics"}}}), false),
        ];
        for (user, review, allowed) in cases {
            let answer = access(&chain, user, &review).await.unwrap();
            assert_eq!(
                answer["status"]["allowed"],
                json!(allowed),
                "{} asking {review}",
                user.name
            );
            assert_eq!(answer["spec"], review["spec"], "the spec is sent back");
        }
    }

    #[tokio::test]
    async fn access_reviews_name_exactly_one_kind_of_attributes() {
        let app = User::service_account("default", "app");
        let both = json!({"spec": {"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"verb": "get", "path": "/"}}});
        let err = access(&chain(), &app, &both).await.unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(
            err.message.contains(
                "spec.nonResourceAttributes: Invalid value: {\"path\":\"/\",\"verb\":\"get\"}: cannot be specified in combination with resourceAttributes"
            ),
            "{}",
            err.message
        );
        let err = access(&chain(), &app, &json!({"spec": {}}))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("spec.resourceAttributes: Invalid value: null: exactly one of nonResourceAttributes or resourceAttributes must be specified"),
            "{}",
            err.message
        );
    }

    #[test]
    fn rules_reviews_list_what_the_chain_grants() {
        let app = User::service_account("default", "app");
        let review = json!({"spec": {"namespace": "default"}});
        let answer = rules(&chain(), &app, &review).unwrap();
        let status = &answer["status"];
        assert_eq!(status["incomplete"], false);
        assert!(status.get("evaluationError").is_none(), "{status}");
        assert!(
            status["resourceRules"]
                .as_array()
                .unwrap()
                .contains(&json!({"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"]})),
            "{status}"
        );
        let admin = User::new("system:admin", &["system:masters"]);
        let answer = rules(&chain(), &admin, &review).unwrap();
        assert!(
            answer["status"]["resourceRules"]
                .as_array()
                .unwrap()
                .contains(&json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})),
            "{answer}"
        );
        let err = rules(&chain(), &app, &json!({"spec": {}})).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "no namespace on request")
        );
    }

    #[test]
    fn who_am_i_names_the_user_and_groups() {
        let mut app = User::service_account("default", "app");
        let answer = self_subject(&app);
        assert_eq!(
            answer["status"]["userInfo"],
            json!({"username": "system:serviceaccount:default:app",
                   "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]})
        );
        app.uid = "u-1".into();
        assert_eq!(self_subject(&app)["status"]["userInfo"]["uid"], "u-1");
    }
}
