//! Names and IDs as the API makes and checks them (sandboxes, snapshots, templates, volumes:
//! v1's one name rule).

/// v1's name rule: letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most
/// 63.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `bytes` random bytes as hex (IDs, name suffixes).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = getrandom::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
