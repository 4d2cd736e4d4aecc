//! Publish aliases (host.md 1.15): what a valid alias is, which names are reserved, and the
//! base a generated alias (`<base>-<6 hex>`) starts from. The server validates and generates;
//! the CLI recognises the URL a daemon without a public proxy answers with.

/// Names no alias may take (v1's list: they would shadow the API host or DNS in domain mode).
pub const RESERVED: [&str; 9] =
    ["www", "mail", "admin", "status", "ns1", "ns2", "api", "app", "_acme-challenge"];

/// The longest alias (a DNS label).
pub const MAX_ALIAS: usize = 63;

/// The suffix of a generated alias: `-` and 6 hex characters.
pub const GENERATED_SUFFIX: usize = 7;

/// What a daemon without a public proxy puts where a URL would be (v1's literal; the CLI finds
/// it by this text).
pub const NO_PROXY_MARKER: &str = "(no public proxy configured)";

/// Why an alias is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// Not `^[a-z0-9][a-z0-9-]{0,62}$`.
    #[error("alias must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    Malformed,
    /// One of [`RESERVED`].
    #[error("alias is reserved")]
    Reserved,
}

/// v1's rule: `^[a-z0-9][a-z0-9-]{0,62}$` and not reserved.
pub fn validate_alias(alias: &str) -> Result<(), AliasError> {
    let b = alias.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let well_formed = !b.is_empty()
        && b.len() <= MAX_ALIAS
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(ok_char);
    if !well_formed {
        return Err(AliasError::Malformed);
    }
    if RESERVED.contains(&alias) {
        return Err(AliasError::Reserved);
    }
    Ok(())
}

/// The base of a generated alias: the sandbox name lowercased, every character outside
/// `[a-z0-9-]` replaced by `-`, trimmed of `-`, `sandbox` if nothing is left, and cut so that
/// base plus suffix fit in 63 characters.
pub fn alias_base(sandbox_name: &str) -> String {
    let mapped: String = sandbox_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '-' }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let base = if trimmed.is_empty() { "sandbox" } else { trimmed };
    // ASCII only now: cutting by bytes cuts by characters. A cut can leave a trailing `-`,
    // which is still valid before the `-<hex>` suffix.
    base[..base.len().min(MAX_ALIAS - GENERATED_SUFFIX)].to_owned()
}

/// A generated alias: `<base>-<hex>`.
pub fn generated_alias(base: &str, hex: &str) -> String {
    format!("{base}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_table() {
        let long_ok = "a".repeat(63);
        let too_long = "a".repeat(64);
        let rows: &[(&str, &str, Result<(), AliasError>)] = &[
            ("plain", "myapp", Ok(())),
            ("digits first", "1app", Ok(())),
            ("inner dash", "my-app-2", Ok(())),
            ("trailing dash", "app-", Ok(())),
            ("63 chars", &long_ok, Ok(())),
            ("64 chars", &too_long, Err(AliasError::Malformed)),
            ("empty", "", Err(AliasError::Malformed)),
            ("uppercase", "MyApp", Err(AliasError::Malformed)),
            ("leading dash", "-app", Err(AliasError::Malformed)),
            ("space", "my app", Err(AliasError::Malformed)),
            ("dot", "my.app", Err(AliasError::Malformed)),
            ("underscore", "my_app", Err(AliasError::Malformed)),
            ("non-ascii", "äpp", Err(AliasError::Malformed)),
            ("reserved api", "api", Err(AliasError::Reserved)),
            ("reserved www", "www", Err(AliasError::Reserved)),
            ("reserved app", "app", Err(AliasError::Reserved)),
            ("reserved ns1", "ns1", Err(AliasError::Reserved)),
            ("acme is malformed first", "_acme-challenge", Err(AliasError::Malformed)),
        ];
        for (name, alias, want) in rows {
            assert_eq!(validate_alias(alias), *want, "{name}: {alias:?}");
        }
    }

    #[test]
    fn bases_table() {
        let long = "x".repeat(80);
        let rows: &[(&str, &str, &str)] = &[
            ("kept", "web", "web"),
            ("lowercased", "MyWeb", "myweb"),
            ("dots and underscores", "my.web_1", "my-web-1"),
            ("trimmed", "--web--", "web"),
            ("only symbols", "...", "sandbox"),
            ("empty", "", "sandbox"),
            ("non-ascii", "café", "caf"),
            ("cut to fit the suffix", &long, &long[..56]),
        ];
        for (name, input, want) in rows {
            let base = alias_base(input);
            assert_eq!(base, *want, "{name}");
            let alias = generated_alias(&base, "a1b2c3");
            assert_eq!(validate_alias(&alias), Ok(()), "{name}: {alias}");
        }
    }
}
