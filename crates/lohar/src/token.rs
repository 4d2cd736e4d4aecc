//! The agent's token: what every connection must AUTH with (the config's at boot; SET_IDENTITY
//! renews it when a checkpoint is resumed as a new sandbox).

/// Longest AUTH payload accepted (v1 tokens are 32 hex characters). Checked before anything is
/// allocated, so an unauthenticated peer cannot make the agent allocate a 1 MiB frame.
pub const MAX_TOKEN_LEN: usize = 256;

/// The token connections must present. Shared by every connection thread; SET_IDENTITY
/// replaces it (a resumed checkpoint is a new sandbox, with a token of its own).
#[derive(Default)]
pub struct Token(std::sync::RwLock<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token holder starting with `token` (empty: an open agent, test mode only).
    pub fn new(token: String) -> Self {
        Token(std::sync::RwLock::new(token))
    }

    /// The token now.
    pub fn current(&self) -> String {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether connections need no token.
    pub fn is_open(&self) -> bool {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
    }

    /// Whether `token` could replace the current one: not empty (it would open the agent) and
    /// not longer than an AUTH frame may be.
    pub fn check(token: &str) -> Result<(), &'static str> {
        if token.is_empty() {
            return Err("empty token");
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err("token too long");
        }
        Ok(())
    }

    /// Replaces the token; an empty or oversized one is refused (it would open the agent, or
    /// no AUTH frame could carry it).
    pub fn renew(&self, token: &str) -> Result<(), &'static str> {
        Self::check(token)?;
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = token.to_owned();
        Ok(())
    }
}
