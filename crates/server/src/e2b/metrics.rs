//! `GET /sandboxes/{id}/metrics`'s sample, measured in the guest as E2B's envd does: CPU from
//! two readings of `/proc/stat` half a second apart (busy jiffies over all jiffies, all CPUs),
//! memory from `/proc/meminfo`, the root disk from `df`. The parsing is pure ([`Sample::parse`]).
//! A sandbox whose numbers cannot all be read gets no sample (an empty list, as E2B answers
//! before its first one) rather than zeros the SDK would take for measurements.

use std::time::Duration;

/// Between the two CPU readings.
const CPU_INTERVAL: Duration = Duration::from_millis(500);
/// The first reading.
const FIRST: &str = "head -n1 /proc/stat";
/// The second reading and the rest, sections split by a line `--`.
const SECOND: &str = "head -n1 /proc/stat; echo --; cat /proc/meminfo; echo --; df -Pk /";

/// One measurement (bytes; CPU in percent of all the guest's CPUs).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Busy share of the interval, 0 to 100.
    pub cpu_used_pct: f64,
    /// `MemTotal - MemAvailable`.
    pub mem_used: u64,
    /// `MemTotal`.
    pub mem_total: u64,
    /// `Cached`.
    pub mem_cache: u64,
    /// Used on `/`.
    pub disk_used: u64,
    /// Size of `/`.
    pub disk_total: u64,
}

/// (busy, total) jiffies of a `/proc/stat` `cpu ` line: user nice system idle iowait irq
/// softirq steal (guest time is inside user already); idle and iowait are not busy.
fn jiffies(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The busy percentage between two readings; none when no time passed.
fn cpu_pct(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let busy = after.0.checked_sub(before.0)?;
    let total = after.1.checked_sub(before.1)?;
    (total > 0).then(|| (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
}

/// A `/proc/meminfo` value in bytes.
fn meminfo(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    })
}

/// (used, total) bytes of `df -Pk`'s answer for one filesystem.
fn df(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().nth(1)?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let total: u64 = f.get(1)?.parse().ok()?;
    let used: u64 = f.get(2)?.parse().ok()?;
    Some((used * 1024, total * 1024))
}

impl Sample {
    /// The sample of the first reading (`FIRST`'s output) and the second (`SECOND`'s).
    pub fn parse(first: &str, second: &str) -> Option<Sample> {
        let mut sections = second.split("\n--\n");
        let (stat, mem, disk) = (sections.next()?, sections.next()?, sections.next()?);
        let cpu_used_pct = cpu_pct(jiffies(first.lines().next()?)?, jiffies(stat.trim())?)?;
        let mem_total = meminfo(mem, "MemTotal")?;
        let mem_used = mem_total.saturating_sub(meminfo(mem, "MemAvailable")?);
        let (disk_used, disk_total) = df(disk)?;
        Some(Sample {
            cpu_used_pct,
            mem_used,
            mem_total,
            mem_cache: meminfo(mem, "Cached")?,
            disk_used,
            disk_total,
        })
    }
}

/// Measures a running sandbox; none when a reading failed (logged).
pub async fn measure(engine: &engine::Engine, id: &str) -> Option<Sample> {
    let run = |script: &'static str| async move {
        match engine.exec(id, &["sh", "-c", script]).await {
            Ok(out) if out.exit_code == 0 => {
                Some(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(out) => {
                tracing::debug!(sandbox = %id, code = out.exit_code, "e2b metrics: a reading failed");
                None
            }
            Err(e) => {
                tracing::debug!(sandbox = %id, "e2b metrics: {e}");
                None
            }
        }
    };
    let first = run(FIRST).await?;
    tokio::time::sleep(CPU_INTERVAL).await;
    let second = run(SECOND).await?;
    let sample = Sample::parse(&first, &second);
    if sample.is_none() {
        tracing::debug!(sandbox = %id, "e2b metrics: the guest's readings did not parse");
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: &str = "MemTotal:         1000 kB\nMemFree:  100 kB\nMemAvailable:      600 kB\nBuffers: 1 kB\nCached:            200 kB\nSwapCached: 0 kB\n";
    const DF: &str = "Filesystem     1024-blocks   Used Available Capacity Mounted on\n/dev/vda          1000   250   750  25% /\n";

    fn second(stat: &str, mem: &str, df: &str) -> String {
        format!("{stat}\n--\n{mem}--\n{df}")
    }

    #[test]
    fn samples_table() {
        let before = "cpu  100 0 100 800 0 0 0 0 0 0";
        // 200 jiffies later: 150 busy (user 100 + system 50), 50 idle.
        let after = "cpu  200 0 150 850 0 0 0 0 0 0";
        let got = Sample::parse(before, &second(after, MEM, DF)).unwrap();
        assert_eq!(
            got,
            Sample {
                cpu_used_pct: 75.0,
                mem_used: 400 * 1024,
                mem_total: 1000 * 1024,
                mem_cache: 200 * 1024,
                disk_used: 250 * 1024,
                disk_total: 1000 * 1024,
            }
        );
        let idle_after = "cpu  100 0 100 900 10 0 0 0 0 0";
        assert_eq!(Sample::parse(before, &second(idle_after, MEM, DF)).unwrap().cpu_used_pct, 0.0);

        let none = [
            ("no time passed", before, second(before, MEM, DF)),
            ("counters went back", after, second(before, MEM, DF)),
            ("not a cpu line", "intr 5 6", second(after, MEM, DF)),
            ("short cpu line", "cpu 1 2", second(after, MEM, DF)),
            ("no MemAvailable", before, second(after, "MemTotal: 1000 kB\nCached: 1 kB\n", DF)),
            ("no Cached", before, second(after, "MemTotal: 1000 kB\nMemAvailable: 1 kB\n", DF)),
            ("df header only", before, second(after, MEM, "Filesystem 1024-blocks\n")),
            ("df garbage", before, second(after, MEM, "x\n/dev/vda a b c\n")),
            ("missing sections", before, after.to_owned()),
            ("empty first", "", second(after, MEM, DF)),
        ];
        for (name, first, second) in none {
            assert_eq!(Sample::parse(first, &second), None, "{name}");
        }
    }

    #[test]
    fn meminfo_names_are_whole() {
        // `Cached:` must not be found in `SwapCached:`.
        assert_eq!(meminfo("SwapCached: 5 kB\nCached: 7 kB\n", "Cached"), Some(7 * 1024));
        assert_eq!(meminfo("SwapCached: 5 kB\n", "Cached"), None);
    }
}
