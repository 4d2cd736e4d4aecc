//! Samples, rows, targets, and the results files (Markdown for people, JSON for the README
//! generator and for comparing runs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Timings of one scenario: what succeeded, and how many iterations failed (never hidden).
#[derive(Debug, Default)]
pub struct Samples {
    pub ok: Vec<f64>,
    pub failed: usize,
    /// The first few failures, to print.
    pub errors: Vec<String>,
}

impl Samples {
    /// Records one result: its duration in ms, or a failure.
    pub fn record<T>(&mut self, started: Instant, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.ok.push(ms(started.elapsed()));
                Some(v)
            }
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    pub fn fail(&mut self, e: anyhow::Error) {
        self.failed += 1;
        if self.errors.len() < 3 {
            self.errors.push(format!("{e:#}"));
        }
    }

    pub fn push(&mut self, value: f64) {
        self.ok.push(value);
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of a sorted sample.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One line of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub section: String,
    pub name: String,
    /// `ms` or `MiB`.
    pub unit: String,
    pub n: usize,
    pub failed: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    /// The baseline row's name, when this row has one.
    pub baseline: Option<String>,
    /// This row's p50 over the baseline's p50.
    pub ratio: Option<f64>,
    /// Whether this row is itself a baseline.
    pub is_baseline: bool,
    #[serde(default)]
    pub errors: Vec<String>,
    /// Why this row was not measured (a feature the daemon does not have): shown as
    /// "skipped: <why>", never as a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Row {
    pub fn new(section: &str, name: &str, unit: &str, s: &Samples) -> Row {
        let mut sorted = s.ok.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |p| (!sorted.is_empty()).then(|| percentile(&sorted, p));
        Row {
            section: section.into(),
            name: name.into(),
            unit: unit.into(),
            n: sorted.len(),
            failed: s.failed,
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: sorted.last().copied(),
            baseline: None,
            ratio: None,
            is_baseline: false,
            errors: s.errors.clone(),
            skipped: None,
        }
    }

    /// A row that was not measured, and why.
    pub fn skipped(section: &str, name: &str, unit: &str, why: &str) -> Row {
        Row { skipped: Some(why.into()), ..Row::new(section, name, unit, &Samples::default()) }
    }
}

/// A target of the issue, checked on this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    /// The measured value, in the target's terms.
    pub measured: String,
    pub limit: String,
    /// `None`: not measurable in this run (a row missing or failed).
    pub met: Option<bool>,
}

impl Target {
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "NOT MEASURED",
        }
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Unix seconds at the start.
    pub started_at: u64,
    pub date: String,
    pub commit: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub accel: String,
    pub qemu: String,
    pub kernel: String,
    pub load_avg_at_start: String,
    pub n_exec: usize,
    pub n_lifecycle: usize,
    pub label: String,
    pub duration_secs: f64,
    pub target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// Fills `ratio` of every row with a baseline.
    pub fn link(&mut self, row: &str, baseline: &str) {
        let base = self.row(baseline).and_then(|b| b.p50);
        if let Some(b) = self.rows.iter_mut().find(|r| r.name == baseline) {
            b.is_baseline = true;
        }
        if let Some(r) = self.rows.iter_mut().find(|r| r.name == row) {
            r.baseline = Some(baseline.into());
            r.ratio = match (r.p50, base) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
        }
    }

    pub fn markdown(&self) -> String {
        let m = &self.meta;
        let mut out = String::new();
        out.push_str(&format!("### {} — {} ({})\n\n", m.date, m.commit, m.label));
        out.push_str(&format!(
            "- Machine: {} ({} cores), {} MiB RAM; accelerator **{}**{}\n",
            m.cpu,
            m.cores,
            m.memory_mib,
            m.accel,
            if m.accel == "tcg" {
                " (software emulation: every guest instruction is translated by QEMU, so guest-side \
                 work is many times slower than under KVM; compare ratios, not absolute numbers)"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "- {}; guest kernel `{}`; commit `{}`\n",
            m.qemu, m.kernel, m.commit
        ));
        out.push_str(&format!(
            "- n = {} per exec/file/API scenario, {} per lifecycle scenario; load average at \
             start {}; daemon: {}; run took {:.0} s\n\n",
            m.n_exec, m.n_lifecycle, m.load_avg_at_start, m.target, m.duration_secs
        ));
        let mut section = "";
        for r in &self.rows {
            if r.section != section {
                section = &r.section;
                out.push_str(&format!(
                    "\n**{section}**\n\n| scenario | n | failed | p50 | p95 | p99 | max | \
                     ratio to baseline (p50) |\n|---|---|---|---|---|---|---|---|\n"
                ));
            }
            let f = |v: Option<f64>| match v {
                Some(v) if v < 10.0 => format!("{v:.2}"),
                Some(v) => format!("{v:.1}"),
                None => "–".into(),
            };
            let ratio = match (&r.baseline, r.ratio) {
                (Some(b), Some(x)) => format!("{x:.2}x {b}"),
                (Some(_), None) if r.p50.is_none() => "–".into(),
                (Some(b), None) => format!("– ({b} missing)"),
                (None, _) if r.is_baseline => "baseline".into(),
                (None, _) => String::new(),
            };
            let unit = if r.unit == "ms" { String::new() } else { format!(" ({})", r.unit) };
            if let Some(why) = &r.skipped {
                out.push_str(&format!(
                    "| {}{unit} | – | – | skipped: {why} | – | – | – | |\n",
                    r.name
                ));
                continue;
            }
            out.push_str(&format!(
                "| {}{unit} | {} | {} | {} | {} | {} | {} | {ratio} |\n",
                r.name,
                r.n,
                r.failed,
                f(r.p50),
                f(r.p95),
                f(r.p99),
                f(r.max)
            ));
        }
        out.push_str("\nTimes in ms unless a unit is given.\n\n**Targets**\n\n| target | measured | limit | verdict |\n|---|---|---|---|\n");
        for t in &self.targets {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                t.name,
                t.measured,
                t.limit,
                t.verdict()
            ));
        }
        if !self.notes.is_empty() {
            out.push_str("\n**Notes**\n\n");
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        let errors: Vec<_> = self.rows.iter().filter(|r| !r.errors.is_empty()).collect();
        if !errors.is_empty() {
            out.push_str("\n**Failures (first of each scenario)**\n\n");
            for r in errors {
                out.push_str(&format!("- {}: {}\n", r.name, r.errors.join(" / ")));
            }
        }
        out
    }

    /// Writes `<dir>/<date>-<commit>[-label].{md,json}`; returns the Markdown path.
    pub fn save(&self, dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("{}-{}{suffix}", self.meta.date, self.meta.commit);
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&md, format!("# bhatti benchmark\n\n{}", self.markdown()))?;
        std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(self)?)?;
        Ok(md)
    }
}

pub const BEGIN: &str = "<!-- results:begin -->";
pub const END: &str = "<!-- results:end -->";

/// Whether a results file is a smoke run (`-smoke` suffix, or a smoke label).
pub fn is_smoke(path: &Path, report: &Report) -> bool {
    path.file_stem().is_some_and(|s| s.to_string_lossy().ends_with("-smoke"))
        || report.meta.label.starts_with("smoke")
}

/// The newest (by start time) results file in `results`; smoke runs only with `allow_smoke`.
pub fn latest(results: &Path, allow_smoke: bool) -> anyhow::Result<(PathBuf, Report)> {
    let mut latest: Option<(u64, PathBuf, Report)> = None;
    let mut smoke_seen = 0;
    for entry in std::fs::read_dir(results).with_context(|| format!("{}", results.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if !allow_smoke && is_smoke(&path, &report) {
            smoke_seen += 1;
            continue;
        }
        if latest.as_ref().is_none_or(|(t, _, _)| report.meta.started_at > *t) {
            latest = Some((report.meta.started_at, path, report));
        }
    }
    match latest {
        Some((_, path, report)) => Ok((path, report)),
        None if smoke_seen > 0 => anyhow::bail!(
            "only smoke runs in {} ({smoke_seen}): run a full bench, or pass --allow-smoke",
            results.display()
        ),
        None => anyhow::bail!("no results (*.json) in {}", results.display()),
    }
}

/// Replaces `begin ... end` in `text` with `section`; fails when the markers are missing.
pub fn replace_section(
    text: &str,
    begin: &str,
    end: &str,
    section: &str,
) -> anyhow::Result<String> {
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        anyhow::bail!("no {begin} ... {end} section");
    };
    anyhow::ensure!(b < e, "{end} comes before {begin}");
    Ok(format!("{}{begin}\n{section}{}", &text[..b], &text[e..]))
}

/// Replaces the marked section of `readme` (the bench README) with a results file.
pub fn write_readme(readme: &Path, path: &Path, report: &Report) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme).with_context(|| format!("{}", readme.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let section = format!(
        "<!-- generated by `bhatti-bench --write-readme` from results/{name}: do not edit -->\n\n{}\n",
        report.markdown()
    );
    let new = replace_section(&text, BEGIN, END, &section)
        .with_context(|| format!("in {}", readme.display()))?;
    std::fs::write(readme, new)?;
    Ok(())
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn date(unix: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_percentiles() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_709_251_200), "2024-03-01");
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0)), (50.0, 99.0));
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    fn report(started_at: u64, label: &str) -> Report {
        let mut r = crate::readme::tests::fixture();
        r.meta.started_at = started_at;
        r.meta.label = label.into();
        r
    }

    #[test]
    fn latest_skips_smoke_runs_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, r: &Report| {
            std::fs::write(dir.path().join(name), serde_json::to_string(r).unwrap()).unwrap();
        };
        put("2026-12-02-aaa.json", &report(100, "full run"));
        put("2026-12-07-bbb-smoke.json", &report(300, "smoke run (n=3)"));
        put("2026-12-05-ccc.json", &report(200, "full run"));
        // A smoke run saved without the suffix is still known by its label.
        put("2026-12-06-ddd.json", &report(250, "smoke run (n=3)"));
        std::fs::write(dir.path().join("2026-12-05-ccc.md"), "not json").unwrap();
        let (path, r) = latest(dir.path(), false).unwrap();
        assert_eq!(path.file_name().unwrap(), "2026-12-05-ccc.json");
        assert_eq!(r.meta.started_at, 200);
        let (path, _) = latest(dir.path(), true).unwrap();
        assert_eq!(path.file_name().unwrap(), "2026-12-07-bbb-smoke.json");

        let only_smoke = tempfile::tempdir().unwrap();
        std::fs::write(
            only_smoke.path().join("x-smoke.json"),
            serde_json::to_string(&report(1, "smoke run (n=3)")).unwrap(),
        )
        .unwrap();
        let e = latest(only_smoke.path(), false).unwrap_err().to_string();
        assert!(e.contains("--allow-smoke"), "{e}");
        assert!(latest(tempfile::tempdir().unwrap().path(), true).is_err(), "empty directory");
    }

    #[test]
    fn skipped_rows_say_why_and_have_no_numbers() {
        let r = report(1, "full run");
        let md = r.markdown();
        let line = md
            .lines()
            .find(|l| l.contains("fork into 4"))
            .unwrap_or_else(|| panic!("no fork line in\n{md}"));
        assert!(line.contains("skipped: no fork route"), "{line}");
        assert!(!line.chars().any(|c| c.is_ascii_digit() && c != '4'), "no numbers: {line}");
        // The JSON keeps the reason; rows without one read back as measured.
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.row("fork into 4 (until every clone answers exec true)")
                .unwrap()
                .skipped
                .as_deref(),
            Some("no fork route")
        );
        assert_eq!(back.row("exec true").unwrap().skipped, None);
        let old: Row = serde_json::from_str(
            r#"{"section":"s","name":"n","unit":"ms","n":1,"failed":0,"p50":1.0,"p95":1.0,"p99":1.0,"max":1.0,"baseline":null,"ratio":null,"is_baseline":false}"#,
        )
        .unwrap();
        assert_eq!(old.skipped, None, "results files from before the field");
    }
}
