//! certificates.k8s.io/v1 CertificateSigningRequest, as upstream's
//! registry keeps it: the requester (username, uid, groups) is recorded at
//! create by the API and the spec never changes after; the status changes
//! only through `/approval` (the Approved and Denied conditions, what
//! `kubectl certificate approve|deny` write) and `/status` (the signer's
//! certificate, or a Failed condition).

use k8s_openapi::api::certificates::v1 as certv1;
use serde_json::{Value, json};

use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::validation::NameRule;
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;

/// The shortest certificate a request may ask for (upstream's).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

pub struct CertificateSigningRequest;

impl Strategy for CertificateSigningRequest {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        // The schema requires these; a body without them gets the 422
        // naming them instead of a decoding error.
        let mut filled = obj.clone();
        if !filled["spec"].is_object() {
            filled["spec"] = json!({});
        }
        for key in ["request", "signerName"] {
            if filled["spec"].get(key).is_none() {
                filled["spec"][key] = json!("");
            }
        }
        Some(through::<certv1::CertificateSigningRequest>(&filled))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let request = spec["request"].as_str().unwrap_or_default();
        if request.is_empty() {
            errs.push(FieldError::required("spec.request"));
        } else if !is_csr_pem(request) {
            errs.push(FieldError::invalid(
                "spec.request",
                &json!(request),
                "PEM block type must be CERTIFICATE REQUEST",
            ));
        }
        if spec["signerName"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required("spec.signerName"));
        }
        if let Some(secs) = spec["expirationSeconds"].as_i64()
            && secs < MIN_EXPIRATION_SECONDS
        {
            errs.push(FieldError::invalid(
                "spec.expirationSeconds",
                &json!(secs),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
        if spec["usages"].as_array().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required("spec.usages"));
        }
    }

    /// The spec never changes after create (upstream copies the old one
    /// over whatever an update sends).
    fn prepare_update(&self, _ctx: &Context<'_>, old: &Value, obj: &mut Value) {
        obj["spec"] = old["spec"].clone();
    }

    fn printer(&self) -> Printer {
        Printer::CertificateSigningRequest
    }
}

/// Is `request` (base64 of PEM, as the API carries it) a certificate
/// request?
fn is_csr_pem(request: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(request)
        .ok()
        .and_then(|pem| String::from_utf8(pem).ok())
        .is_some_and(|pem| rcgen::CertificateSigningRequestParams::from_pem(&pem).is_ok())
}

/// `new` as `/approval` may change `old`: its conditions, nothing else.
pub fn approval_update(old: &Value, new: &Value) -> Value {
    let mut obj = old.clone();
    obj["status"]["conditions"] = new
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or_else(|| json!([]));
    obj
}

/// `obj` (a request being created) with its requester recorded, as
/// upstream's registry records the user who posts it.
pub fn record_requester(obj: &mut Value, name: &str, uid: &str, groups: &[String]) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(name);
    if uid.is_empty() {
        if let Some(m) = spec.as_object_mut() {
            m.remove("uid");
        }
    } else {
        spec["uid"] = json!(uid);
    }
    spec["groups"] = json!(groups);
    if let Some(m) = spec.as_object_mut() {
        m.remove("extra");
    }
}
