//! v1's rule for volume names (its own module: the config's checks use it without the routes).

/// `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`.
pub(crate) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn v1_name_rule() {
        let rows = [
            ("plain", "data", true),
            ("dots and dashes", "my.vol_1-a", true),
            ("upper case", "Data", true),
            ("63 long", &"a".repeat(63)[..], true),
            ("64 long", &"a".repeat(64)[..], false),
            ("empty", "", false),
            ("leading dot", ".hidden", false),
            ("traversal", "../etc", false),
            ("slash", "a/b", false),
            ("space", "a b", false),
            ("leading dash", "-a", false),
        ];
        for (name, input, ok) in rows {
            assert_eq!(super::valid_name(input), ok, "{name}");
        }
    }
}
