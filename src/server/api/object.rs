//! Handlers for one object (`…/<plural>/<name>`): get, update, patch and
//! delete (and a legacy `/watch/` of one object).

use http::{Method, Request, Response, StatusCode};

use super::body::RequestBody;
use super::response::{json_response, render_object, written_response};
use super::{Body, Call, collection, q, request};
use crate::api::status::ApiError;

/// Serve a request on one object.
pub(super) async fn serve(
    call: &Call<'_>,
    req: Request<RequestBody>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    match *req.method() {
        Method::GET if call.info.verb == "watch" => watch_one(call, name),
        Method::GET => {
            let obj = call.registry().get(&call.res, call.ns(), name).await?;
            Ok(json_response(
                StatusCode::OK,
                &render_object(&call.res, obj, call.representation, call.query()),
            ))
        }
        Method::PUT => update(call, req, name, None).await,
        Method::PATCH => patch(call, req, name, None).await,
        Method::DELETE => delete(call, req, name).await,
        ref other => Err(ApiError::method_not_allowed(other.as_str())),
    }
}

/// `/watch/…/<plural>/<name>`: a watch of the collection narrowed to the
/// one name, as upstream serves it.
fn watch_one(call: &Call<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let mut query = call.query().clone();
    let by_name = format!("metadata.name={name}");
    let selector = match q(&query, "fieldSelector").filter(|s| !s.is_empty()) {
        Some(s) => format!("{s},{by_name}"),
        None => by_name,
    };
    query.insert("fieldSelector".into(), vec![selector]);
    let list_query = request::list_query(&call.res, &query)?;
    collection::watch(call, &query, list_query)
}

/// Replace the object (or, with `sub`, its status).
pub(super) async fn update(
    call: &Call<'_>,
    req: Request<RequestBody>,
    name: &str,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let body = request::read_body(req).await?;
    let warnings = body.check_duplicates(call.registry(), &call.res, &call.write)?;
    let mut written = call
        .registry()
        .update(&call.res, call.ns(), name, body.value, sub, &call.write)
        .await?;
    written.warnings.extend(warnings);
    Ok(written_response(
        StatusCode::OK,
        &call.res,
        written,
        call.representation,
    ))
}

/// Patch the object (or, with `sub`, its status).
pub(super) async fn patch(
    call: &Call<'_>,
    req: Request<RequestBody>,
    name: &str,
    sub: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let patch = request::read_patch(req).await?;
    let warnings = patch.check_repeated_keys(&call.write)?;
    let (patch_type, body) = (patch.patch_type, patch.value);
    if call.res.custom.is_some() && patch_type == crate::api::patch::PatchType::Strategic {
        // Custom resources have no patch strategy (upstream's answer).
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    let mut written = call
        .registry()
        .patch(
            &call.res,
            call.ns(),
            name,
            (patch_type, &body),
            sub,
            &call.write,
        )
        .await?;
    written.warnings.extend(warnings);
    let code = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(written_response(
        code,
        &call.res,
        written,
        call.representation,
    ))
}

async fn delete(
    call: &Call<'_>,
    req: Request<RequestBody>,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let body = request::read_optional_body(req).await?;
    let opts = call.delete_options(call.query(), body.as_ref())?;
    let obj = call
        .registry()
        .delete(&call.res, call.ns(), name, &opts)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &render_object(&call.res, obj, call.representation, call.query()),
    ))
}
