//! Issue 24's rows: time to first command (shape snapshot restore vs a boot), fork into 1 and
//! 4 clones (wall time and each clone's PSS), and cold wake with the restore pool on and off.
//! Each against a baseline measured in the same run, interleaved. A feature the daemon does
//! not have makes its rows "skipped: <why>" (see [`Features`]), never a number.

use std::time::Instant;

use serde_json::{Value, json};

use super::cold::{self, ColdDaemon};
use super::{Bench, MEMORY_MIB, WARMUP, join_all};
use crate::daemon::{Api, Fork, Slot};
use crate::report::{Row, Samples};

pub const TTFC_SECTION: &str = "Time to first command (POST /sandboxes, then exec true)";
pub const TTFC_SHAPE: &str = "time to first command (shape snapshot restore)";
pub const TTFC_BOOT: &str = "time to first command (boot)";
pub const TTFC_FIRST: &str = "first create of the shape (boots, records the snapshot)";
pub const FORK_SECTION: &str = "Fork (512 MiB hot source)";
pub const FORK1: &str = "fork into 1 (until the clone answers exec true)";
pub const FORK4: &str = "fork into 4 (until every clone answers exec true)";
pub const FORK4_BASE: &str = "4 parallel creates (boot) + exec true in each";
pub const FORK_SOURCE_PSS: &str = "fork into 4: source QEMU PSS";
pub const FORK_CLONE_PSS: &str = "fork into 4: each clone's QEMU PSS";
pub const FORK_PSS_SHARE: &str = "fork into 4: largest clone PSS, % of the source's";
pub const POOL_SECTION: &str = "Cold wake, restore pool on and off";
pub const POOL_ON: &str = "cold wake + exec true, restore pool on (restore_pool: 2)";
pub const POOL_OFF: &str = "cold wake + exec true, restore pool off (restore_pool: 0)";
/// The "pool on" daemon's `restore_pool` (the default is 0, off: it brought no measured gain
/// under TCG).
pub const POOL_SIZE: usize = 2;

/// What this daemon can do, from its `/openapi.json`: `Err(why)` for a missing feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `"boot": true` in the create request (shape snapshots).
    pub boot: Result<(), String>,
    /// `POST /sandboxes/{id}/fork`.
    pub fork: Result<(), String>,
}

impl Features {
    pub fn from_openapi(doc: &Value) -> Features {
        // The schema `POST /sandboxes` takes (its `$ref`), else the one named CreateSandbox.
        let create = doc["paths"]["/sandboxes"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .unwrap_or("CreateSandbox");
        let boot = doc["components"]["schemas"][create]["properties"]["boot"].is_object();
        let fork =
            doc["paths"].as_object().into_iter().flat_map(|p| p.iter()).any(|(path, item)| {
                path.starts_with("/sandboxes/{")
                    && path.ends_with("}/fork")
                    && item["post"].is_object()
            });
        Features {
            boot: if boot {
                Ok(())
            } else {
                Err("the daemon's create request has no `boot` field (no shape snapshots yet)"
                    .into())
            },
            fork: if fork {
                Ok(())
            } else {
                Err("the daemon has no POST /sandboxes/{id}/fork route".into())
            },
        }
    }

    /// What the runner assumes when `/openapi.json` cannot be read.
    pub fn unknown(why: &str) -> Features {
        Features { boot: Err(why.into()), fork: Err(why.into()) }
    }
}

/// The create body of these rows: the `test` image, 512 MiB; `"boot": true` when asked and
/// the daemon knows the field (without shape snapshots every create boots anyway).
pub fn create_body(name: &str, boot: bool, features: &Features) -> Value {
    let mut body = json!({ "name": name, "image": "test", "memory_mb": MEMORY_MIB });
    if boot && features.boot.is_ok() {
        body["boot"] = json!(true);
    }
    body
}

impl Bench {
    pub(super) fn skip(&mut self, section: &str, name: &str, unit: &str, why: &str) {
        println!("  {name:<44} skipped: {why}");
        self.rows.push(Row::skipped(section, name, unit, why));
    }

    fn unit_row(&mut self, section: &str, name: &str, unit: &str, s: &Samples) {
        self.row(section, name, s);
        if let Some(r) = self.rows.last_mut() {
            r.unit = unit.into();
        }
    }

    /// The daemon's features, from its `/openapi.json`.
    pub(super) async fn features(&self) -> Features {
        match self.api.openapi().await {
            Ok(doc) => Features::from_openapi(&doc),
            Err(e) => Features::unknown(&format!("GET /openapi.json failed: {e:#}")),
        }
    }

    /// `POST /sandboxes` then `exec true`, timed from the client; the sandbox is destroyed
    /// (untimed) after.
    async fn first_command(&mut self, what: &str, boot: bool, f: &Features) -> anyhow::Result<()> {
        let name = self.name(what);
        self.created.push(name.clone());
        let api = self.api.clone();
        let r = async {
            api.create_json(&create_body(&name, boot, f)).await?;
            api.exec(&name, &["true"]).await
        }
        .await;
        let _ = api.destroy(&name).await;
        r.map(drop)
    }

    /// Time to first command from a shape snapshot vs a forced boot (the baseline), interleaved.
    /// One create of the shape comes first: it boots and records the snapshot.
    pub(super) async fn time_to_first_command(&mut self, f: &Features) -> anyhow::Result<()> {
        let (mut shape, mut boot) = (Samples::default(), Samples::default());
        if f.boot.is_ok() {
            let mut first = Samples::default();
            let t = Instant::now();
            let r = self.first_command("t-first", false, f).await;
            first.record(t, r);
            self.row(TTFC_SECTION, TTFC_FIRST, &first);
        }
        for i in 0..self.ln {
            if f.boot.is_ok() {
                let t = Instant::now();
                let r = self.first_command(&format!("ts{i}"), false, f).await;
                shape.record(t, r);
            }
            let t = Instant::now();
            let r = self.first_command(&format!("tb{i}"), true, f).await;
            boot.record(t, r);
        }
        match &f.boot {
            Ok(()) => self.row(TTFC_SECTION, TTFC_SHAPE, &shape),
            Err(why) => self.skip(TTFC_SECTION, TTFC_SHAPE, "ms", &why.clone()),
        }
        self.row(TTFC_SECTION, TTFC_BOOT, &boot);
        Ok(())
    }

    /// Fork of a hot 512 MiB sandbox into 1 and into 4 clones: the wall time until every clone
    /// answers `exec true`, and (4 clones) each clone's QEMU PSS against the source's at the
    /// same moment. Baselines: the boot path's time to first command (for 1) and 4 creates
    /// with a boot in parallel (for 4, fewer samples: each costs seconds). Clones are
    /// destroyed after every sample.
    pub(super) async fn fork(&mut self, f: &Features) -> anyhow::Result<()> {
        let skip_all = |b: &mut Bench, why: &str| {
            b.skip(FORK_SECTION, FORK1, "ms", why);
            b.skip(FORK_SECTION, FORK4, "ms", why);
            b.skip(FORK_SECTION, FORK4_BASE, "ms", why);
            b.skip(FORK_SECTION, FORK_SOURCE_PSS, "MiB", why);
            b.skip(FORK_SECTION, FORK_CLONE_PSS, "MiB", why);
            b.skip(FORK_SECTION, FORK_PSS_SHARE, "%", why);
        };
        if let Err(why) = &f.fork {
            skip_all(self, &why.clone());
            return Ok(());
        }
        let api = self.api.clone();
        let src = self.api_create("fk", "test", MEMORY_MIB, true).await?;
        for _ in 0..WARMUP {
            api.exec(&src, &["true"]).await?;
        }
        let src_id = api.get_id(&src).await?;
        let (mut one, mut four, mut base4) =
            (Samples::default(), Samples::default(), Samples::default());
        let (mut src_pss, mut clone_pss, mut share) =
            (Samples::default(), Samples::default(), Samples::default());
        for i in 0..self.ln {
            for (count, s) in [(1usize, &mut one), (4, &mut four)] {
                let t = Instant::now();
                let r = api.fork(&src, count).await;
                let ids = match r {
                    Ok(Fork::Clones(ids)) => ids,
                    Ok(Fork::NoRoute(status)) if i == 0 && count == 1 => {
                        let why = format!("POST /sandboxes/{{id}}/fork answers {status} here");
                        let _ = api.destroy(&src).await;
                        skip_all(self, &why);
                        return Ok(());
                    }
                    Ok(Fork::NoRoute(status)) => {
                        s.fail(anyhow::anyhow!("fork answered {status}"));
                        continue;
                    }
                    Err(e) => {
                        s.fail(e);
                        continue;
                    }
                };
                self.created.extend(ids.iter().cloned());
                let mut set = tokio::task::JoinSet::new();
                for id in &ids {
                    let (api, id) = (api.clone(), id.clone());
                    set.spawn(async move { api.exec(&id, &["true"]).await });
                }
                let r = join_all(set).await;
                s.record(t, r);
                if count == 4 {
                    let pss = api.qemu_pss_mib(&src_id).and_then(|source| {
                        let clones: Vec<f64> =
                            ids.iter().map(|id| api.qemu_pss_mib(id)).collect::<Result<_, _>>()?;
                        Ok((source, clones))
                    });
                    match pss {
                        Ok((source, clones)) => {
                            src_pss.push(source);
                            let largest = clones.iter().copied().fold(0.0, f64::max);
                            clone_pss.ok.extend(clones);
                            if source > 0.0 {
                                share.push(100.0 * largest / source);
                            }
                        }
                        Err(e) => {
                            let text = format!("{e:#}");
                            src_pss.fail(e);
                            clone_pss.fail(anyhow::anyhow!("{text}"));
                            share.fail(anyhow::anyhow!("{text}"));
                        }
                    }
                }
                for id in &ids {
                    let _ = api.destroy(id).await;
                }
            }
            if i < self.ln.min(3) {
                let t = Instant::now();
                let mut set = tokio::task::JoinSet::new();
                let mut names = Vec::new();
                for k in 0..4 {
                    let name = self.name(&format!("fb{i}-{k}"));
                    self.created.push(name.clone());
                    names.push(name.clone());
                    let (api, body) = (api.clone(), create_body(&name, true, f));
                    set.spawn(async move {
                        api.create_json(&body).await?;
                        api.exec(&name, &["true"]).await
                    });
                }
                let r = join_all(set).await;
                base4.record(t, r);
                for name in &names {
                    let _ = api.destroy(name).await;
                }
            }
        }
        let _ = api.destroy(&src).await;
        self.row(FORK_SECTION, FORK1, &one);
        self.row(FORK_SECTION, FORK4, &four);
        self.row(FORK_SECTION, FORK4_BASE, &base4);
        self.unit_row(FORK_SECTION, FORK_SOURCE_PSS, "MiB", &src_pss);
        self.unit_row(FORK_SECTION, FORK_CLONE_PSS, "MiB", &clone_pss);
        self.unit_row(FORK_SECTION, FORK_PSS_SHARE, "%", &share);
        Ok(())
    }

    /// Cold wake + `exec true` of a thermally cold sandbox (see [`cold`]) on two daemons of
    /// the runner's, interleaved: one started with `restore_pool: 2` (the row), one with
    /// `restore_pool: 0` (its baseline), both with short thermal timings. The main daemon is
    /// not one of them: its thermal timings keep the warm rows warm.
    pub(super) async fn cold_wake_pool(&mut self) -> anyhow::Result<()> {
        let skip = |b: &mut Bench, why: &str| {
            b.skip(POOL_SECTION, POOL_ON, "ms", why);
            b.skip(POOL_SECTION, POOL_OFF, "ms", why);
        };
        if !self.own_daemon {
            skip(
                self,
                "needs daemons of the runner's (restore_pool: 2 and 0, short thermal timings)",
            );
            return Ok(());
        }
        // The key tells whether the daemon knows it (an unknown key is warned about); the
        // environment variable overrides one the runner may have inherited.
        let size = POOL_SIZE.to_string();
        let on_daemon = ColdDaemon::start(
            self,
            Slot::PoolOn,
            &format!("restore_pool: {size}\n"),
            &[("BHATTI_RESTORE_POOL", &size)],
        )
        .await?;
        if on_daemon.lacks_key("restore_pool") {
            skip(self, "the daemon has no `restore_pool` config key (no restore pool yet)");
            return Ok(());
        }
        let off_daemon = ColdDaemon::start(
            self,
            Slot::PoolOff,
            "restore_pool: 0\n",
            &[("BHATTI_RESTORE_POOL", "0")],
        )
        .await?;
        let (on_api, off_api) = (on_daemon.api.clone(), off_daemon.api.clone());
        let (on, off) = (self.name("cw"), self.name("cw-off"));
        let r = self.pool_samples(&on_api, &on, &off_api, &off).await;
        let _ = on_api.destroy(&on).await;
        let _ = off_api.destroy(&off).await;
        drop((on_daemon, off_daemon));
        let (on_s, off_s) = r?;
        self.row(POOL_SECTION, POOL_ON, &on_s);
        self.row(POOL_SECTION, POOL_OFF, &off_s);
        Ok(())
    }

    async fn pool_samples(
        &self,
        on_api: &Api,
        on: &str,
        off_api: &Api,
        off: &str,
    ) -> anyhow::Result<(Samples, Samples)> {
        on_api.create(on, "test", MEMORY_MIB, true).await?;
        off_api.create(off, "test", MEMORY_MIB, true).await?;
        for _ in 0..WARMUP {
            on_api.exec(on, &["true"]).await?;
            off_api.exec(off, &["true"]).await?;
        }
        let (mut on_s, mut off_s) = (Samples::default(), Samples::default());
        for _ in 0..self.ln {
            // One after the other: while one sandbox goes cold (seconds), the other daemon's
            // background work after its wake (the pool's next QEMU) settles.
            for (api, name, s) in [(on_api, on, &mut on_s), (off_api, off, &mut off_s)] {
                cold::wake_sample(api, name, s, cold::timed_exec(api, name)).await;
            }
        }
        Ok((on_s, off_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(create_props: Value, paths: Value) -> Value {
        json!({
            "paths": paths,
            "components": {"schemas": {"CreateSandbox": {"properties": create_props}}}
        })
    }

    #[test]
    fn features_from_openapi() {
        let fork_path = json!({"/sandboxes/{id}/fork": {"post": {}}, "/sandboxes": {"post": {}}});
        let plain = json!({"/sandboxes/{id}/stop": {"post": {}}});
        let cases = [
            ("both", doc(json!({"keep_hot": {}, "boot": {}}), fork_path.clone()), true, true),
            ("neither (today's main)", doc(json!({"keep_hot": {}}), plain.clone()), false, false),
            ("fork only", doc(json!({"keep_hot": {}}), fork_path.clone()), false, true),
            (
                "a boot field elsewhere is not the create request's",
                json!({"paths": plain.clone(), "components": {"schemas": {
                    "CreateSandbox": {"properties": {"keep_hot": {}}},
                    "Sandbox": {"properties": {"keep_hot": {}, "boot": {}}}
                }}}),
                false,
                false,
            ),
            (
                "the create request's schema found through its $ref",
                json!({"paths": {"/sandboxes": {"post": {"requestBody": {"content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewSandbox"}}
                }}}}}, "components": {"schemas": {
                    "CreateSandbox": {"properties": {}},
                    "NewSandbox": {"properties": {"boot": {}}}
                }}}),
                true,
                false,
            ),
            (
                "fork route with GET only",
                doc(json!({}), json!({"/sandboxes/{id}/fork": {"get": {}}})),
                false,
                false,
            ),
            ("empty document", json!({}), false, false),
        ];
        for (what, d, boot, fork) in cases {
            let f = Features::from_openapi(&d);
            assert_eq!(f.boot.is_ok(), boot, "{what}: boot");
            assert_eq!(f.fork.is_ok(), fork, "{what}: fork");
        }
    }

    #[test]
    fn create_body_sends_boot_only_when_known() {
        let known = Features { boot: Ok(()), fork: Ok(()) };
        let unknown = Features::unknown("no");
        assert_eq!(create_body("a", true, &known)["boot"], json!(true));
        assert!(create_body("a", false, &known).get("boot").is_none());
        assert!(create_body("a", true, &unknown).get("boot").is_none(), "old daemon");
        assert_eq!(create_body("a", false, &known)["memory_mb"], json!(MEMORY_MIB));
    }

    #[test]
    fn pool_rows_name_the_setting_they_ran_with() {
        // The daemon's default is the pool off: the "on" row names its explicit setting.
        assert!(POOL_ON.contains(&format!("(restore_pool: {POOL_SIZE})")), "{POOL_ON}");
        assert!(POOL_OFF.contains("(restore_pool: 0)"), "{POOL_OFF}");
        for row in [POOL_ON, POOL_OFF] {
            assert!(!row.contains("default"), "{row}");
        }
    }
}
