//! Names shared by the sandbox, snapshot and template routes (a module of its own, so
//! `templates` need not import `sandboxes`, which calls it: no module cycle).

/// v1's name rule: `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`.
pub(crate) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `bytes` random bytes as lower-case hex (generated names).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = getrandom::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
