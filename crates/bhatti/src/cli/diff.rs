//! `bhatti diff <sandbox> [--against creation|<snapshot>] [--patch]`: what changed in a
//! sandbox's files (`GET /sandboxes/:id/diff`). A table `A/M/D  MODE  SIZE  PATH` (a change
//! shows `old->new` where mode or size moved); `--patch` prints the unified diffs of the text
//! files instead; `--json` the API's answer.

use std::time::Duration;

use clap::Args;
use http::Method;

use super::client::{enc, sb_path};
use super::error::exit;
use super::ui::{Spinner, table};
use super::{Ctx, print_json};

/// A diff reads two disks; a large, much-changed one takes a while.
const SLOW: Duration = Duration::from_secs(300);

/// `bhatti diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Name, ID or ID prefix.
    sandbox: String,
    /// `creation` (what the sandbox was made from) or one of your snapshots.
    #[arg(long, default_value = "creation", value_name = "creation|SNAPSHOT")]
    against: String,
    /// Print unified diffs of the changed text files.
    #[arg(long)]
    patch: bool,
}

/// The request path.
fn path(a: &DiffArgs) -> String {
    let mut q = format!("/diff?against={}", enc(&a.against));
    if a.patch {
        q.push_str("&patch=true");
    }
    sb_path(&a.sandbox, &q)
}

fn moved<T: PartialEq + std::fmt::Display>(old: Option<T>, new: T) -> String {
    match old {
        Some(old) if old != new => format!("{old}->{new}"),
        _ => new.to_string(),
    }
}

/// The table's rows: added, changed, deleted, each sorted by path.
pub fn rows(d: &api::Diff) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut push = |mark: &str, e: &api::DiffEntry| {
        let path = if e.kind == "dir" { format!("{}/", e.path) } else { e.path.clone() };
        rows.push(vec![
            mark.to_owned(),
            moved(e.old_mode.clone(), e.mode.clone()),
            moved(e.old_size, e.size),
            path,
        ]);
    };
    d.added.iter().for_each(|e| push("A", e));
    d.changed.iter().for_each(|e| push("M", e));
    d.deleted.iter().for_each(|e| push("D", e));
    rows
}

/// Runs `bhatti diff`.
pub async fn run(ctx: &Ctx, a: DiffArgs) -> anyhow::Result<u8> {
    let spinner = Spinner::start(format!("comparing {} with {}", a.sandbox, a.against));
    let d: api::Diff = ctx.client.json::<_, ()>(Method::GET, &path(&a), None, SLOW).await?;
    drop(spinner);
    if ctx.json {
        return print_json(&d).map(|()| exit::OK);
    }
    if a.patch {
        print!("{}", d.patch.as_deref().unwrap_or_default());
    } else if d.added.is_empty() && d.changed.is_empty() && d.deleted.is_empty() {
        println!("no changes since {}", d.against);
    } else {
        print!("{}", table(&["", "MODE", "SIZE", "PATH"], &rows(&d)));
    }
    if d.truncated {
        eprintln!("(more paths differ than one answer lists: the list stops at 10,000)");
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(
        path: &str,
        kind: &str,
        mode: &str,
        size: u64,
        old: Option<(&str, u64)>,
    ) -> api::DiffEntry {
        api::DiffEntry {
            path: path.into(),
            kind: kind.into(),
            size,
            mode: mode.into(),
            old_mode: old.map(|o| o.0.into()),
            old_size: old.map(|o| o.1),
        }
    }

    #[test]
    fn rows_and_paths() {
        let d = api::Diff {
            against: "creation".into(),
            added: vec![e("/srv", "dir", "0755", 4096, None)],
            changed: vec![
                e("/etc/motd", "file", "0644", 12, Some(("0644", 6))),
                e("/bin/tool", "file", "0700", 9, Some(("0755", 9))),
            ],
            deleted: vec![e("/tmp/x", "file", "0600", 1, None)],
            ..api::Diff::default()
        };
        let want = [
            ["A", "0755", "4096", "/srv/"],
            ["M", "0644", "6->12", "/etc/motd"],
            ["M", "0755->0700", "9", "/bin/tool"],
            ["D", "0600", "1", "/tmp/x"],
        ];
        assert_eq!(rows(&d), want.map(|r| r.map(String::from).to_vec()));
        let a = DiffArgs { sandbox: "my sb".into(), against: "snap.1".into(), patch: true };
        assert_eq!(path(&a), "/sandboxes/my%20sb/diff?against=snap.1&patch=true");
    }
}
