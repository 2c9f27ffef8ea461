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

/// The signer of nodes' client certificates (upstream's).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// What a certificate request asks for: its subject and how many
/// subjectAltNames of each kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requested {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: usize,
    pub emails: usize,
    pub ips: usize,
    pub uris: usize,
}

/// The PEM of a request's `spec.request` (base64 of PEM in the API).
pub fn request_pem(csr: &Value) -> Option<String> {
    use base64::Engine;
    let b64 = csr.pointer("/spec/request").and_then(Value::as_str)?;
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(pem).ok()
}

/// What the PEM certificate request `pem` asks for; `None` if it is not
/// one.
pub fn requested(pem: &str) -> Option<Requested> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).ok()?;
    let subject = &req.certification_request_info.subject;
    let mut out = Requested {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect(),
        ..Requested::default()
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(_) => out.dns_names += 1,
                    GeneralName::RFC822Name(_) => out.emails += 1,
                    GeneralName::IPAddress(_) => out.ips += 1,
                    GeneralName::URI(_) => out.uris += 1,
                    _ => {}
                }
            }
        }
    }
    Some(out)
}

/// Why a request is not one for a node's client certificate, in
/// upstream's words (`ValidateKubeletClientCSR`), or `None` when it is:
/// O exactly `system:nodes`, no subjectAltNames, CN `system:node:<name>`,
/// and usages digital signature and client auth (with key encipherment
/// for RSA keys).
pub fn kubelet_client_problem(req: &Requested, usages: &[&str]) -> Option<String> {
    if req.organizations != ["system:nodes"] {
        return Some("subject organization is not system:nodes".into());
    }
    for (count, kind) in [
        (req.dns_names, "DNS"),
        (req.emails, "Email"),
        (req.ips, "IP"),
        (req.uris, "URI"),
    ] {
        if count > 0 {
            return Some(format!("{kind} subjectAltNames are not allowed"));
        }
    }
    if !req.common_name.starts_with("system:node:") {
        return Some("subject common name does not begin with system:node:".into());
    }
    let mut set: Vec<&str> = usages.to_vec();
    set.sort_unstable();
    set.dedup();
    let with_rsa = ["client auth", "digital signature", "key encipherment"];
    if set != with_rsa && set != ["client auth", "digital signature"] {
        return Some(
            "usages did not match [client auth digital signature key encipherment]".into(),
        );
    }
    None
}
