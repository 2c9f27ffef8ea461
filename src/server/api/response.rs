//! Responses: JSON bodies, Status errors, warnings, and the shapes an
//! object or list is rendered in (plain JSON, Table, metadata only) as the
//! client's `Accept` header asked.

use http::{Response, StatusCode, header};
use serde_json::{Value, json};

use super::request::Representation;
use super::{Body, Query, q};
use crate::api::catalog::Resource;
use crate::api::status::ApiError;
use crate::server::registry::{ListResult, Written, strategy};
use crate::store::Revision;

pub(super) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a JSON value always serialises");
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::full(bytes))
        .expect("static response parts are valid")
}

/// A `Status` body, already serialised the way kube-apiserver writes it.
pub(super) fn status_response(code: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::full(bytes))
        .expect("static response parts are valid")
}

pub(super) fn error_response(err: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = status_response(code, err.to_body());
    // As upstream's responsewriters.ErrorNegotiated: a Status that says
    // when to retry says it in the header too.
    if let Some(secs) = err.details.as_ref().map(|d| d.retry_after_seconds)
        && secs > 0
    {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    resp
}

pub(super) fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

pub(super) fn written_response(
    code: StatusCode,
    res: &Resource,
    written: Written,
    representation: Representation,
) -> Response<Body> {
    let body = render_object(res, written.object, representation, &Query::new());
    with_warnings(json_response(code, &body), &written.warnings)
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// One Table row, carrying the object as `includeObject` says.
pub(crate) fn table_row(res: &Resource, obj: &Value, include: &str, now: jiff::Timestamp) -> Value {
    let mut row = json!({"cells": strategy::of(res).cells(obj, now)});
    match include {
        "None" => {}
        "Object" => row["object"] = obj.clone(),
        _ => row["object"] = partial_metadata(obj),
    }
    row
}

/// A Table of rows made by [`table_row`].
pub(crate) fn table_of(
    res: &Resource,
    rows: Vec<Value>,
    revision: Option<Revision>,
    continue_token: Option<&str>,
) -> Value {
    let mut metadata = json!({});
    if let Some(rv) = revision {
        metadata["resourceVersion"] = json!(rv.0.to_string());
    }
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": strategy::of(res).column_definitions(),
        "rows": rows,
    })
}

/// A one-row Table for a single object.
pub(crate) fn table_of_object(res: &Resource, obj: &Value, include: &str) -> Value {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .map(Revision);
    table_of(
        res,
        vec![table_row(res, obj, include, jiff::Timestamp::now())],
        rv,
        None,
    )
}

pub(super) fn render_object(
    res: &Resource,
    obj: Value,
    representation: Representation,
    query: &Query,
) -> Value {
    match representation {
        Representation::Table
            if obj.get("kind").and_then(Value::as_str) == Some(res.kind.as_str()) =>
        {
            table_of_object(res, &obj, q(query, "includeObject").unwrap_or("Metadata"))
        }
        Representation::PartialObjectMetadata => partial_metadata(&obj),
        _ => obj,
    }
}

/// The kind of a list of `res`: a definition's `listKind`, else `<Kind>List`.
fn list_kind(res: &Resource) -> String {
    match &res.custom {
        Some(custom) => custom.list_kind.clone(),
        None => format!("{}List", res.kind),
    }
}

/// A list response. Plain JSON is written straight from the stored bytes;
/// Tables and metadata-only lists decode one object at a time.
pub(super) fn list_response(
    res: &Resource,
    list: &ListResult,
    representation: Representation,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    if representation == Representation::Table {
        let include = q(query, "includeObject").unwrap_or("Metadata");
        let now = jiff::Timestamp::now();
        let mut rows = Vec::with_capacity(list.items.len());
        for item in &list.items {
            rows.push(table_row(res, &item.decode()?, include, now));
        }
        let table = table_of(
            res,
            rows,
            Some(list.revision),
            list.continue_token.as_deref(),
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    if representation != Representation::Json {
        let items = list.decoded()?;
        return Ok(json_response(
            StatusCode::OK,
            &render_list(
                res,
                items,
                list.revision,
                list.continue_token.clone(),
                representation,
                query,
            ),
        ));
    }
    let total: usize = list.items.iter().map(|i| i.json.len() + 32).sum();
    let mut out = Vec::with_capacity(total + 256);
    out.extend_from_slice(b"{\"apiVersion\":");
    out.extend_from_slice(
        serde_json::to_string(&res.api_version())
            .expect("JSON")
            .as_bytes(),
    );
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"kind\":");
    out.extend_from_slice(
        serde_json::to_string(&list_kind(res))
            .expect("JSON")
            .as_bytes(),
    );
    let mut metadata = json!({"resourceVersion": list.revision.0.to_string()});
    if let Some(c) = &list.continue_token {
        metadata["continue"] = json!(c);
    }
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&serde_json::to_vec(&metadata).expect("JSON"));
    out.push(b'}');
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::full(out))
        .expect("static response parts are valid"))
}

pub(super) fn render_list(
    res: &Resource,
    items: Vec<Value>,
    revision: Revision,
    continue_token: Option<String>,
    representation: Representation,
    query: &Query,
) -> Value {
    match representation {
        Representation::Table => {
            let include = q(query, "includeObject").unwrap_or("Metadata");
            let now = jiff::Timestamp::now();
            let rows = items
                .iter()
                .map(|o| table_row(res, o, include, now))
                .collect();
            table_of(res, rows, Some(revision), continue_token.as_deref())
        }
        Representation::PartialObjectMetadata => {
            let items: Vec<Value> = items.iter().map(partial_metadata).collect();
            let mut metadata = json!({"resourceVersion": revision.0.to_string()});
            if let Some(c) = continue_token {
                metadata["continue"] = json!(c);
            }
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items})
        }
        _ => {
            let mut metadata = json!({"resourceVersion": revision.0.to_string()});
            if let Some(c) = continue_token {
                metadata["continue"] = json!(c);
            }
            json!({"kind": list_kind(res), "apiVersion": res.api_version(), "metadata": metadata, "items": items})
        }
    }
}
