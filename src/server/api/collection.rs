//! Handlers for a collection (`…/<plural>`): list, watch, create and
//! delete a collection. Reviews posted to theirs are answered, not stored
//! ([`super::review`]).

use http::{Method, Request, Response, StatusCode};

use super::body::RequestBody;
use super::request::{self, Representation};
use super::response::{json_response, list_response, render_list, written_response};
use super::{Body, Call, Query, watch};
use crate::api::status::ApiError;

/// Serve a request on a collection.
pub(super) async fn serve(
    call: &Call<'_>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    match *req.method() {
        Method::GET => {
            let list_query = request::list_query(&call.res, call.query())?;
            if call.info.verb == "watch" {
                return watch(call, call.query(), list_query);
            }
            if !call.res.allows("list") {
                return Err(ApiError::method_not_allowed("list"));
            }
            let list = call
                .registry()
                .list(&call.res, call.ns(), &list_query)
                .await?;
            list_response(&call.res, &list, call.representation, call.query())
        }
        Method::POST => create(call, req).await,
        Method::DELETE => delete_collection(call, req).await,
        ref other => Err(ApiError::method_not_allowed(other.as_str())),
    }
}

/// Start a watch stream over the collection as `query` selects.
pub(super) fn watch(
    call: &Call<'_>,
    query: &Query,
    list_query: crate::server::registry::ListQuery,
) -> Result<Response<Body>, ApiError> {
    let params = watch::Params::parse(query, list_query)?;
    Ok(watch::start(
        call.registry().clone(),
        call.res.clone(),
        call.rp.namespace.clone(),
        params,
        call.representation,
    ))
}

async fn create(call: &Call<'_>, req: Request<RequestBody>) -> Result<Response<Body>, ApiError> {
    let node_password = super::nodes::password(req.headers());
    let body = request::read_body(req).await?;
    if !call.res.allows("create") {
        return Err(ApiError::method_not_allowed("create"));
    }
    if let Some(review) = super::review::answer(call, &body.value).await {
        return Ok(json_response(StatusCode::CREATED, &review?));
    }
    let warnings = body.check_duplicates(call.registry(), &call.res, &call.write)?;
    let mut value = body.value;
    if call.res.group == "certificates.k8s.io" && call.res.kind == "CertificateSigningRequest" {
        let user = call.user;
        crate::server::registry::kinds::certificates::record_requester(
            &mut value,
            &user.name,
            &user.uid,
            &user.groups,
        );
        super::nodes::check_node_request(call.registry(), user, node_password, &value).await?;
    }
    let mut written = call
        .registry()
        .create(&call.res, call.ns(), value, &call.write)
        .await?;
    written.warnings.extend(warnings);
    Ok(written_response(
        StatusCode::CREATED,
        &call.res,
        written,
        call.representation,
    ))
}

async fn delete_collection(
    call: &Call<'_>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    let body = request::read_optional_body(req).await?;
    let opts = call.delete_options(call.query(), body.as_ref())?;
    let list_query = request::list_query(&call.res, call.query())?;
    let registry = call.registry();
    let items = registry
        .delete_collection(&call.res, call.ns(), &list_query, &opts)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &render_list(
            &call.res,
            items,
            registry.store.current_revision(),
            None,
            Representation::Json,
            call.query(),
        ),
    ))
}
