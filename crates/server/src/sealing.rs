//! Secrets at rest: age (X25519) encryption to the daemon's identity in `<data_dir>/age.key`
//! (v1's format: an `AGE-SECRET-KEY-1...` line, comments allowed), made on first use with mode
//! 0600 and fsynced (file and directory) before anything is sealed to it.
//!
//! Everything here blocks (file IO once, then X25519 + ChaCha20-Poly1305): the async callers
//! run it with `spawn_blocking` (`seal`, `open`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

/// What can go wrong; never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The key file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The key file holds no valid identity.
    #[error("{}: no valid age identity (AGE-SECRET-KEY-1...) in it", .0.display())]
    BadKey(PathBuf),
    /// Encryption failed.
    #[error("encrypting a secret: {0}")]
    Encrypt(String),
    /// The ciphertext does not open with this daemon's key (another key, or damaged).
    #[error("decrypting a secret: {0}")]
    Decrypt(String),
    /// The blocking task died.
    #[error("the sealing task failed: {0}")]
    Task(String),
}

/// The daemon's age identity, loaded (or made) once.
pub struct Sealer {
    path: PathBuf,
    identity: OnceLock<age::x25519::Identity>,
    making: Mutex<()>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "age.key";

impl Sealer {
    /// The sealer of `<data_dir>/age.key` (nothing is read yet).
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join(KEY_FILE), identity: OnceLock::new(), making: Mutex::new(()) }
    }

    /// Loads the identity, making the key file if it is missing or empty. Blocking.
    pub fn identity(&self) -> Result<&age::x25519::Identity, SealError> {
        if let Some(id) = self.identity.get() {
            return Ok(id);
        }
        let _one = self.making.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(id) = self.identity.get() {
            return Ok(id);
        }
        let identity = load_or_make(&self.path)?;
        Ok(self.identity.get_or_init(|| identity))
    }

    /// Encrypts `plain` to this daemon's key. Blocking.
    pub fn seal_blocking(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let recipient = self.identity()?.to_public();
        age::encrypt(&recipient, plain).map_err(|e| SealError::Encrypt(e.to_string()))
    }

    /// Decrypts what [`Sealer::seal_blocking`] made. Blocking.
    pub fn open_blocking(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let identity = self.identity()?;
        age::decrypt(identity, sealed)
            .map(Zeroizing::new)
            .map_err(|e| SealError::Decrypt(e.to_string()))
    }

    /// [`Sealer::seal_blocking`] off the async workers.
    pub async fn seal(self: &Arc<Self>, plain: Zeroizing<Vec<u8>>) -> Result<Vec<u8>, SealError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.seal_blocking(&plain))
            .await
            .map_err(|e| SealError::Task(e.to_string()))?
    }

    /// [`Sealer::open_blocking`] off the async workers.
    pub async fn open(self: &Arc<Self>, sealed: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.open_blocking(&sealed))
            .await
            .map_err(|e| SealError::Task(e.to_string()))?
    }
}

/// The identity line of a key file (age-keygen's format: comments, then the key).
fn parse_key(text: &str) -> Option<age::x25519::Identity> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| l.parse::<age::x25519::Identity>().ok())
}

fn load_or_make(path: &Path) -> Result<age::x25519::Identity, SealError> {
    let io = |op: &'static str| move |error| SealError::Io { op, path: path.to_owned(), error };
    match std::fs::read(path) {
        Ok(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
            let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
            drop(Zeroizing::new(bytes));
            return parse_key(&text).ok_or_else(|| SealError::BadKey(path.to_owned()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading")(e)),
    }
    let identity = age::x25519::Identity::generate();
    let text = Zeroizing::new(format!(
        "# bhatti: the key of this daemon's secrets. Losing it loses them.\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    ));
    // A temporary file, fsynced, renamed over the path, then the directory fsynced: a crash
    // leaves either no key or the whole key, never half of one.
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating"))?;
    file.write_all(text.as_bytes()).map_err(io("writing"))?;
    file.sync_all().map_err(io("syncing"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("renaming into place"))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of"))?;
    }
    tracing::info!(path = %path.display(), "made the secrets key");
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_0600_and_seals_what_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(dir.path());
        let sealed = sealer.seal_blocking(b"planted-value").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"planted"), "ciphertext holds the plaintext");
        let key = dir.path().join(KEY_FILE);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(&*sealer.open_blocking(&sealed).unwrap(), b"planted-value");
        // Another daemon over the same directory reads the same key.
        let again = Sealer::new(dir.path());
        assert_eq!(&*again.open_blocking(&sealed).unwrap(), b"planted-value");
        // A different key cannot open it.
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(
            Sealer::new(other.path()).open_blocking(&sealed),
            Err(SealError::Decrypt(_))
        ));
    }

    #[test]
    fn key_files_table() {
        let good = age::x25519::Identity::generate();
        let good_line = good.to_string().expose_secret().to_owned();
        // (name, file content or none, whether an identity comes out).
        let table: [(&str, Option<String>, bool); 5] = [
            ("missing: made", None, true),
            ("empty: made", Some(String::new()), true),
            ("only blanks: made", Some("\n  \n".into()), true),
            (
                "age-keygen's format",
                Some(format!("# created\n# public key: x\n{good_line}\n")),
                true,
            ),
            ("garbage is refused, not replaced", Some("not a key\n".into()), false),
        ];
        for (name, content, ok) in table {
            let dir = tempfile::tempdir().unwrap();
            if let Some(content) = &content {
                std::fs::write(dir.path().join(KEY_FILE), content).unwrap();
            }
            let got = Sealer::new(dir.path()).identity().map(|i| i.to_public().to_string());
            assert_eq!(got.is_ok(), ok, "{name}: {:?}", got.err());
            if name == "age-keygen's format" {
                assert_eq!(got.unwrap(), good.to_public().to_string(), "{name}");
            }
            if !ok {
                let kept = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
                assert_eq!(kept, "not a key\n", "{name}: a bad key file is left alone");
            }
        }
    }
}
