//! v1's `backup` config (host.md 6.1): where volume backups go, and their schedule. Backups
//! are on when `s3_endpoint` is set. `Debug` never shows the keys.

use serde::Deserialize;

/// The `backup:` section.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BackupConfig {
    /// `http(s)://host:port`; path-style requests (`endpoint/bucket/key`).
    pub s3_endpoint: String,
    /// Signing region (`us-east-1` when empty).
    pub s3_region: String,
    /// Bucket.
    pub s3_bucket: String,
    /// Access key ID.
    pub s3_access_key: String,
    /// Secret key.
    pub s3_secret_key: String,
    /// Scheduled backups.
    pub schedule: Vec<BackupSchedule>,
}

impl BackupConfig {
    /// Whether backups are configured (v1: `s3_endpoint` set).
    pub fn enabled(&self) -> bool {
        !self.s3_endpoint.is_empty()
    }

    /// Checks the schedule's cron expressions and the bucket (a start-up error, not a surprise
    /// at the first tick).
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.s3_bucket.is_empty() {
            return Err("backup.s3_bucket is required with backup.s3_endpoint".into());
        }
        for s in &self.schedule {
            if !crate::volume_names::valid_name(&s.volume) {
                return Err(format!("backup.schedule: invalid volume name {:?}", s.volume));
            }
            bhatti_core::cron::matches(&s.cron, bhatti_core::cron::CivilTime::from_unix(0))
                .map_err(|e| format!("backup.schedule: {e}"))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for BackupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupConfig")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_access_key", &"<redacted>")
            .field("s3_secret_key", &"<redacted>")
            .field("schedule", &self.schedule)
            .finish()
    }
}

/// One scheduled backup: every owner's volume of this name, when the cron matches; the newest
/// `retention` backups are kept (0 keeps all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BackupSchedule {
    /// Volume name.
    pub volume: String,
    /// v1's 5-field cron (UTC).
    pub cron: String,
    /// How many backups to keep.
    pub retention: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_keys() {
        let c = BackupConfig {
            s3_endpoint: "http://127.0.0.1:9000".into(),
            s3_access_key: "AKIDSECRETLOOKING".into(),
            s3_secret_key: "verysecretkey".into(),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("AKIDSECRETLOOKING") && !shown.contains("verysecretkey"));
        assert!(shown.contains("127.0.0.1:9000"));
    }

    #[test]
    fn checks_the_schedule() {
        let mut c = BackupConfig {
            s3_endpoint: "http://x".into(),
            s3_bucket: "b".into(),
            ..Default::default()
        };
        let rows = [
            ("every minute", "data", "* * * * *", true),
            ("nightly", "data", "0 3 * * *", true),
            ("bad cron", "data", "*/5 * * * *", false),
            ("bad name", "../x", "* * * * *", false),
        ];
        for (name, volume, cron, ok) in rows {
            c.schedule =
                vec![BackupSchedule { volume: volume.into(), cron: cron.into(), retention: 3 }];
            assert_eq!(c.check().is_ok(), ok, "{name}");
        }
    }
}
