//! Thermally cold sandboxes, for the rows that time a transparent cold wake: the lifecycle's
//! `cold wake + exec true`, `proxy TTFB cold` and the restore pool on/off rows.
//!
//! A sandbox its user stopped (`POST /sandboxes/<id>/stop`) stays stopped until `POST /start`
//! (v1: exec, files and the proxy answer 409 `not_running`); only one the thermal manager
//! suspended to disk is woken by the next exec or proxied request. So these rows run on daemons
//! of the runner's started with short thermal timings ([`Slot::thermal`]: warm after 1 s idle,
//! cold 1 s later), never on the main daemon (whose warm rows must not meet a thermal stop), on
//! sandboxes kept hot (`keep_hot`) between samples, so no thermal work runs while another row
//! is measured. A sample ([`wake_sample`]): `keep_hot` off; poll, bounded, until the daemon
//! reports the sandbox thermally cold with its suspension recorded ([`cold_state`]); time the
//! wake; `keep_hot` back on.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use super::Bench;
use crate::daemon::{Api, OwnDaemon, Slot};
use crate::report::Samples;

/// How long a sandbox may take to go thermally cold once `keep_hot` is off (about 1 s to
/// warm, 1 s to cold, a tick each and the stop: 3-5 s on an idle 2-core TCG machine).
pub const COLD_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// The event the thermal manager records with the stopped row (after the stop and the
/// record's export, in the same store transaction).
pub const SNAPSHOT_EVENT: &str = "thermal.snapshot";
/// Why the cold rows are skipped against a live daemon.
pub const NEEDS_OWN_DAEMON: &str = "needs a daemon of the runner's with short thermal timings (not --url): a stopped sandbox \
     stays stopped until `start`, only a thermally cold one wakes on its own";

/// Whether a sandbox is thermally cold, from its `GET /sandboxes/<id>` answer and the ID of its
/// newest `thermal.snapshot` event now and before its `keep_hot` was turned off: `stopped`
/// (which the daemon's GET reads from the engine: a suspended QEMU) *and* a snapshot event
/// newer than `before`, so the stop was the thermal manager's (not a user's, which would
/// never wake) and it has finished writing the row (the record's export, with the restore pool
/// on, waits for the pool's next QEMU: a wake sent earlier would queue behind it).
/// `Ok(false)`: not yet. `Err`: a state it will not leave by itself.
pub fn cold_state(
    sandbox: &Value,
    newest_snapshot: Option<i64>,
    before: Option<i64>,
) -> Result<bool, String> {
    match sandbox["status"].as_str().unwrap_or_default() {
        "running" | "creating" => Ok(false),
        // `None < Some(_)`: any event is newer than none.
        "stopped" => Ok(newest_snapshot > before),
        other => Err(format!(
            "status {other:?} (thermal {}): it will not go thermally cold",
            sandbox["thermal"]
        )),
    }
}

/// Turns `keep_hot` off and waits (bounded by `within`) until the daemon reports the sandbox
/// thermally cold ([`cold_state`]).
pub async fn make_cold(api: &Api, name: &str, within: Duration) -> anyhow::Result<()> {
    let before = api.newest_event_id(name, SNAPSHOT_EVENT).await?;
    api.set_keep_hot(name, false).await?;
    let deadline = Instant::now() + within;
    loop {
        let sandbox = api.sandbox(name).await?;
        let newest = api.newest_event_id(name, SNAPSHOT_EVENT).await?;
        match cold_state(&sandbox, newest, before) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(why) => bail!("{name}: {why}"),
        }
        if Instant::now() > deadline {
            bail!(
                "{name} not thermally cold after {within:?}: status {}, thermal {}, newest \
                 {SNAPSHOT_EVENT} event {newest:?} (before: {before:?})",
                sandbox["status"],
                sandbox["thermal"]
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One sample of a transparent wake: the sandbox made thermally cold (untimed), then `wake`,
/// which returns its own time in ms, then `keep_hot` on again (also after a failure). Any
/// failure fails the sample.
pub async fn wake_sample(
    api: &Api,
    name: &str,
    s: &mut Samples,
    wake: impl Future<Output = anyhow::Result<f64>>,
) {
    let r = match make_cold(api, name, COLD_WITHIN).await {
        Ok(()) => wake.await,
        Err(e) => Err(e),
    };
    let pinned = api.set_keep_hot(name, true).await;
    match (r, pinned) {
        (Ok(v), Ok(())) => s.push(v),
        (Err(e), _) => s.fail(e),
        (Ok(_), Err(e)) => s.fail(e.context("keep_hot on again after the wake")),
    }
}

/// `exec true`, timed: the wake of the exec rows.
pub async fn timed_exec(api: &Api, name: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    api.exec(name, &["true"]).await?;
    Ok(crate::report::ms(t.elapsed()))
}

/// A daemon of the runner's for thermally cold rows, with its API.
pub struct ColdDaemon {
    pub api: Api,
    daemon: OwnDaemon,
}

impl ColdDaemon {
    /// Starts `bhatti serve` in `slot` with `extra` config and `env`.
    pub async fn start(
        bench: &Bench,
        slot: Slot,
        extra: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ColdDaemon> {
        let (daemon, api) =
            OwnDaemon::start_with(&bench.bhatti, &bench.artifacts, slot, extra, env).await?;
        Ok(ColdDaemon { api, daemon })
    }

    /// Whether its log warned about an unknown config key `key`.
    pub fn lacks_key(&self, key: &str) -> bool {
        self.daemon.log_has_line_with(&["unknown key", key])
    }
}

impl Bench {
    /// The API of the daemon for the lifecycle and proxy cold rows ([`Slot::Cold`]: the
    /// default config, short thermal timings), started on first use and kept for the run;
    /// `None` against a live daemon (`--url`).
    pub(super) async fn cold_api(&mut self) -> anyhow::Result<Option<Api>> {
        if !self.own_daemon {
            return Ok(None);
        }
        if self.cold.is_none() {
            let d = ColdDaemon::start(self, Slot::Cold, "", &[]).await?;
            self.cold = Some(d);
        }
        Ok(self.cold.as_ref().map(|d| d.api.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cold_only_when_stopped_by_the_thermal_manager_and_recorded() {
        let running = |thermal: &str| json!({"status": "running", "thermal": thermal});
        let stopped = json!({"status": "stopped"});
        type Case = (&'static str, Value, Option<i64>, Option<i64>, Result<bool, ()>);
        let table: [Case; 10] = [
            ("hot", running("hot"), None, None, Ok(false)),
            ("paused (warm): not cold yet", running("warm"), Some(3), Some(3), Ok(false)),
            ("woken after an earlier stop", running("hot"), Some(7), Some(3), Ok(false)),
            ("stopped, the first snapshot event", stopped.clone(), Some(4), None, Ok(true)),
            ("stopped, a newer snapshot event", stopped.clone(), Some(9), Some(4), Ok(true)),
            (
                "stopped, row not yet written (or stopped by a user): wait",
                stopped.clone(),
                Some(4),
                Some(4),
                Ok(false),
            ),
            ("stopped, no snapshot event at all", stopped.clone(), None, None, Ok(false)),
            ("unknown: the manager gave up", json!({"status": "unknown"}), None, None, Err(())),
            ("destroyed", json!({"status": "destroyed"}), Some(1), None, Err(())),
            ("creating: not yet", json!({"status": "creating"}), None, None, Ok(false)),
        ];
        for (name, sandbox, newest, before, want) in table {
            let got = cold_state(&sandbox, newest, before).map_err(drop);
            assert_eq!(got, want, "{name}");
        }
        let why = cold_state(&json!({"status": "unknown"}), None, None).unwrap_err();
        assert!(why.contains("\"unknown\""), "{why}");
    }
}
