//! CertificateSigningRequest clean-up (upstream's csrcleaner): every hour,
//! requests that are done with are deleted, so a cluster whose nodes
//! join and renew for years does not pile them up:
//! - issued (Approved and signed) an hour after the approval;
//! - Denied or Failed an hour after that condition;
//! - pending (none of those) a day after creation;
//! - any whose certificate has expired.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;

use super::{Context, meta_str};
use crate::server::registry::DeleteOptions;

const PERIOD: Duration = Duration::from_secs(3600);
const DONE_AFTER: i64 = 3600;
const PENDING_AFTER: i64 = 24 * 3600;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tick.tick().await;
            clean(&ctx).await;
        }
    });
}

async fn clean(ctx: &Context) {
    let now = jiff::Timestamp::now().as_second();
    let res = ctx.res("certificates.k8s.io", "certificatesigningrequests");
    for csr in ctx.informers.certificatesigningrequests.list(None) {
        let Some(why) = expired(&csr, now) else {
            continue;
        };
        let name = meta_str(&csr, "name");
        match ctx
            .registry
            .delete(&res, None, name, &DeleteOptions::default())
            .await
        {
            Ok(_) => tracing::info!(csr = %name, "deleted a certificate signing request: {why}"),
            Err(e) if e.code == 404 => {}
            Err(e) => tracing::warn!(csr = %name, error = %e.message, "cannot clean up"),
        }
    }
}

/// Seconds since the epoch of an RFC 3339 time.
fn seconds(time: Option<&Value>) -> Option<i64> {
    let text = time?.as_str()?;
    Some(text.parse::<jiff::Timestamp>().ok()?.as_second())
}

/// Why `csr` should go at `now` (seconds since the epoch), or `None`.
fn expired(csr: &Value, now: i64) -> Option<&'static str> {
    let condition = |ty: &str| {
        csr.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == ty && c["status"] != "False")
    };
    // The condition's last update (or transition) time, or creation.
    let since = |c: &Value| {
        seconds(c.get("lastUpdateTime"))
            .or_else(|| seconds(c.get("lastTransitionTime")))
            .or_else(|| seconds(csr.pointer("/metadata/creationTimestamp")))
            .unwrap_or(now)
    };
    let certificate = csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    if let Some(cert) = certificate {
        if not_after(cert).is_some_and(|end| end <= now) {
            return Some("its certificate has expired");
        }
        if let Some(approved) = condition("Approved")
            && now - since(approved) > DONE_AFTER
        {
            return Some("issued more than an hour ago");
        }
    }
    for (ty, why) in [
        ("Denied", "denied more than an hour ago"),
        ("Failed", "failed more than an hour ago"),
    ] {
        if let Some(c) = condition(ty) {
            return (now - since(c) > DONE_AFTER).then_some(why);
        }
    }
    let pending = certificate.is_none() && condition("Approved").is_none();
    let created = seconds(csr.pointer("/metadata/creationTimestamp")).unwrap_or(now);
    (pending && now - created > PENDING_AFTER).then_some("pending for more than a day")
}

/// When the certificate (base64 of PEM, as the API carries it) ends.
fn not_after(b64: &str) -> Option<i64> {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    Some(pem.parse_x509().ok()?.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: i64 = 3600;

    fn at(seconds: i64) -> String {
        jiff::Timestamp::from_second(seconds).unwrap().to_string()
    }

    fn cert(days: i64) -> String {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let end = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(24 * days))
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after =
            rcgen::date_time_ymd(i32::from(end.year()), end.month() as u8, end.day() as u8);
        let pem = params.self_signed(&key).unwrap().pem();
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    #[test]
    fn requests_go_when_upstream_s_cleaner_would_take_them() {
        let now = jiff::Timestamp::now().as_second();
        let created = json!({"metadata": {"creationTimestamp": at(now - 2 * HOUR)}});
        let with = |conditions: Value, certificate: Option<String>| {
            let mut csr = created.clone();
            csr["status"] = json!({"conditions": conditions});
            if let Some(c) = certificate {
                csr["status"]["certificate"] = json!(c);
            }
            csr
        };
        let cond = |ty: &str, ago: i64| json!([{"type": ty, "status": "True", "lastUpdateTime": at(now - ago)}]);
        let valid = cert(300);
        // Pending: kept for a day.
        assert_eq!(expired(&created, now), None);
        let mut old = created.clone();
        old["metadata"]["creationTimestamp"] = json!(at(now - 25 * HOUR));
        assert_eq!(expired(&old, now), Some("pending for more than a day"));
        // Issued: an hour after approval.
        assert_eq!(
            expired(&with(cond("Approved", 60), Some(valid.clone())), now),
            None
        );
        assert_eq!(
            expired(&with(cond("Approved", 2 * HOUR), Some(valid.clone())), now),
            Some("issued more than an hour ago")
        );
        // Approved but not yet signed is left to the signer.
        assert_eq!(expired(&with(cond("Approved", 2 * HOUR), None), now), None);
        // Denied and Failed: an hour after.
        assert_eq!(expired(&with(cond("Denied", 60), None), now), None);
        assert_eq!(
            expired(&with(cond("Denied", 2 * HOUR), None), now),
            Some("denied more than an hour ago")
        );
        assert_eq!(
            expired(&with(cond("Failed", 2 * HOUR), None), now),
            Some("failed more than an hour ago")
        );
        // An expired certificate, whatever else.
        assert_eq!(
            expired(&with(cond("Approved", 60), Some(cert(-2))), now),
            Some("its certificate has expired")
        );
    }
}
