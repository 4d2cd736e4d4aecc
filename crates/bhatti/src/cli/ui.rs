//! Terminal output: tables, the spinner, confirmations, ages, the completion names cache.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Is stderr a terminal (spinners, prompts)?
pub fn stderr_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// A left-aligned table, columns two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A spinner on stderr after a second of waiting, only when stderr is a terminal. Stops (and
/// clears its line) when dropped.
#[derive(Debug)]
pub struct Spinner(Option<tokio::task::JoinHandle<()>>);

impl Spinner {
    /// Starts one with a message (`creating sandbox/x`).
    pub fn start(message: String) -> Self {
        if !stderr_tty() {
            return Spinner(None);
        }
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            loop {
                let secs = start.elapsed().as_secs();
                eprint!("\r{} {message} ({secs}s)", frames[i % frames.len()]);
                let _ = std::io::stderr().flush();
                i += 1;
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        });
        Spinner(Some(task))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            // Clear whatever the spinner drew.
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

/// Asks `<question> [y/N]` on a terminal. Without a terminal on stdin (and without `--yes`)
/// prints v1's refusal and answers no: the caller exits 0 without acting.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("Use --yes to confirm in non-interactive mode");
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

/// `3m`, `2h`, `5d` since an RFC 3339 time; the text as given when it does not parse.
pub fn age(rfc3339: &str) -> String {
    let Ok(at) = humantime::parse_rfc3339_weak(rfc3339) else { return rfc3339.to_owned() };
    let secs = SystemTime::now().duration_since(at).map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// The completion cache: sandbox names, one a line, in `$XDG_CACHE_HOME/bhatti/names` or
/// `~/.cache/bhatti/names`. Best effort: a failure to write it never fails a command.
pub fn names_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("bhatti/names"))
}

/// Replaces the cached names.
pub fn cache_names<'a>(names: impl Iterator<Item = &'a str>) {
    let Some(path) = names_cache() else { return };
    let mut text: String = names.map(|n| format!("{n}\n")).collect();
    if text.len() > 1 << 20 {
        text.truncate(0);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Adds or removes one cached name.
pub fn cache_edit(name: &str, add: bool) {
    let Some(path) = names_cache() else { return };
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut names: Vec<&str> = old.lines().filter(|n| *n != name && !n.is_empty()).collect();
    if add {
        names.push(name);
    }
    cache_names(names.into_iter());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["NAME", "ID"], &[vec!["a-long-name".into(), "1".into()]]);
        assert_eq!(t, "NAME         ID\na-long-name  1\n");
    }

    #[test]
    fn ages() {
        let now = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(130));
        assert_eq!(age(&now.to_string()), "2m ago");
        assert_eq!(age("garbage"), "garbage");
    }
}
