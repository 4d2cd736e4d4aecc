//! Label rules (host.md 1.22): keys `[prefix/]name`, each segment alphanumeric at both ends
//! with `._-` inside, at most 63 characters; `bhatti.sh/` is reserved; values at most 256
//! characters of `[a-zA-Z0-9._-]` (empty allowed); at most 16 labels per request.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// Labels one request may set.
pub const MAX_LABELS: usize = 16;

fn valid_segment(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Checks one key.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.starts_with("bhatti.sh/") {
        return Err(ApiError::BadRequest(format!("label key {key:?} is reserved")));
    }
    let ok = match key.split_once('/') {
        Some((prefix, name)) => valid_segment(prefix) && valid_segment(name),
        None => valid_segment(key),
    };
    if !ok {
        return Err(ApiError::BadRequest(format!("invalid label key {key:?}")));
    }
    Ok(())
}

/// Checks one value.
pub fn check_value(key: &str, value: &str) -> Result<(), ApiError> {
    let ok = value.len() <= 256
        && value.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        return Err(ApiError::BadRequest(format!("invalid value for label {key:?}")));
    }
    Ok(())
}

/// Checks a map of labels.
pub fn check(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::BadRequest(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        check_key(k)?;
        check_value(k, v)?;
    }
    Ok(())
}

/// Parses `label=key=value` filters from a query string (the value may contain `=`).
pub fn filters(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "label" {
            continue;
        }
        let Some((key, value)) = v.split_once('=') else {
            return Err(ApiError::BadRequest(format!("label filter {v:?}: use key=value")));
        };
        check_key(key)?;
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_label_rules() {
        assert!(check_key("team").is_ok() && check_key("example.com/team").is_ok());
        for bad in ["", "-a", "a-", "bhatti.sh/x", "a/b/c", &"k".repeat(64)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_value("k", "").is_ok() && check_value("k", "v1.2_x-y").is_ok());
        assert!(check_value("k", "a b").is_err() && check_value("k", &"v".repeat(257)).is_err());
        let f = filters(Some("label=env%3Dprod&label=a=b=c&other=1")).unwrap();
        assert_eq!(f, [("env".into(), "prod".into()), ("a".into(), "b=c".into())]);
        assert!(filters(Some("label=novalue")).is_err());
    }
}
