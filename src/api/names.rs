//! DNS name syntax (RFC 1123 labels and subdomains, RFC 1035 labels): the
//! checks that object names, namespaces and label keys share. It sits below
//! both `selector` and `validation` so neither imports the other for it.

/// An RFC 1123 label: at most 63 lowercase alphanumerics or `-`, starting
/// and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// An RFC 1035 label: an RFC 1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

pub(crate) const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
pub(crate) const QUALIFIED_NAME_PART_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Upstream's length message.
pub(crate) fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// Upstream's label value / qualified name part regex, whatever the
/// length.
pub(crate) fn label_like(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Upstream's `IsQualifiedName` messages (label keys, annotation keys).
pub(crate) fn qualified_name_problems(s: &str) -> Vec<String> {
    use crate::api::validation::DNS1123_SUBDOMAIN_MSG;
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                if prefix.len() > 253 {
                    errs.push(format!("prefix part {}", too_long(253)));
                }
                if !subdomain_pattern(prefix) {
                    errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
                }
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", too_long(63)));
    }
    if !label_like(name) && !name.is_empty() {
        errs.push(QUALIFIED_NAME_PART_MSG.to_owned());
    }
    errs
}

/// Upstream's label regex `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, whatever the
/// length (the length is a separate error).
pub(crate) fn label_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn subdomain_pattern(s: &str) -> bool {
    s.split('.').all(label_pattern)
}

pub(crate) fn dns1035_pattern(s: &str) -> bool {
    label_pattern(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Upstream's `IsValidLabelValue` messages.
pub(crate) fn label_value_problems(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(too_long(63));
    }
    if !s.is_empty() && !label_like(s) {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}
