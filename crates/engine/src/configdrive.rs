//! The config drive: a small ext4 image holding `config.json`, built without mounting
//! (`mkfs.ext4 -d`), attached read-only as the guest's second disk.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use proto::guest::GuestConfig;
use tokio::process::Command;

use crate::error::{EngineError, io_at};
use crate::run::run;

const MIB: u64 = 1024 * 1024;

/// Image size for a config of `json_len` bytes: 1.5x the content rounded up to whole MiB,
/// between 1 and 4 MiB (v1's rule: ext4 metadata needs room, large file sets need more).
pub fn image_size(json_len: usize) -> u64 {
    ((json_len as u64 * 3 / 2 / MIB) + 1).clamp(1, 4) * MIB
}

/// A fresh auth token: 16 random bytes as 32 lower-case hex characters (v1's format).
pub fn random_token() -> Result<String, EngineError> {
    random_hex(16)
}

/// `n` random bytes from the host's kernel RNG, in hex (a machine-id, entropy for a clone).
pub fn random_hex(n: usize) -> Result<String, EngineError> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    let urandom = "/dev/urandom";
    std::fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_at("reading", urandom))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the config drive for `config` to `image`.
pub async fn build(config: &GuestConfig, image: &Path) -> Result<(), EngineError> {
    let json = serde_json::to_vec_pretty(config)
        .map_err(|source| EngineError::Encode { what: "the guest's config.json", source })?;
    let staging = tempfile::tempdir().map_err(io_at("creating a directory in", std::env::temp_dir()))?;
    let content = staging.path().join("content");
    std::fs::create_dir(&content).map_err(io_at("creating", &content))?;
    let config_json = content.join("config.json");
    std::fs::write(&config_json, &json).map_err(io_at("writing", &config_json))?;
    // The drive holds the auth token and the env (maybe secrets): owner-only.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(image)
        .map_err(io_at("creating", image))?;
    file.set_len(image_size(json.len())).map_err(io_at("sizing", image))?;
    drop(file);
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-L", "bhatti-config", "-d"])
            .arg(&content)
            .arg(image),
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_characters_and_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn size_rule() {
        assert_eq!(image_size(0), MIB);
        assert_eq!(image_size(100_000), MIB);
        assert_eq!(image_size(700_000), 2 * MIB);
        assert_eq!(image_size(100 * 1024 * 1024), 4 * MIB);
    }

    #[tokio::test]
    async fn builds_an_ext4_image_holding_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("config.ext4");
        let config =
            GuestConfig { hostname: "dev".into(), token: "ab".repeat(16), ..Default::default() };
        build(&config, &image).await.unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), MIB);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&image).unwrap().permissions().mode() & 0o777, 0o600);
        // Read it back without mounting: debugfs from e2fsprogs.
        let out = std::process::Command::new("debugfs")
            .args(["-R", "cat /config.json"])
            .arg(&image)
            .output()
            .unwrap();
        let parsed: GuestConfig = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(parsed, config);
    }
}
