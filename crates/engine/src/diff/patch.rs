//! Unified diffs of the text files a comparison found, bounded: each side of a file is read up
//! to [`MAX_FILE`] bytes, the whole patch stops at [`MAX_PATCH`]; both say "(truncated)".
//! A file with a NUL byte in its first 8 KiB is binary and gets git's one line instead.

use super::tree::{Tree, TreeError};
use super::{DiffEntry, EntryKind};

/// Bytes of each side of one file that are diffed.
pub const MAX_FILE: usize = 256 << 10;
/// The whole patch.
pub const MAX_PATCH: usize = 4 << 20;
/// Where a NUL makes a file binary.
const SNIFF: usize = 8 << 10;
/// The note that marks a cut.
pub const TRUNCATED: &str = "(truncated)\n";

/// Which side(s) of one path the patch shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Changed,
    Deleted,
}

fn is_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(SNIFF)].contains(&0)
}

/// Up to [`MAX_FILE`] bytes of `path`, and whether there was more.
fn head(tree: &dyn Tree, path: &[u8]) -> Result<(Vec<u8>, bool), TreeError> {
    let mut buf = Vec::new();
    tree.read(path, 0, MAX_FILE + 1, &mut buf)?;
    let more = buf.len() > MAX_FILE;
    buf.truncate(MAX_FILE);
    if more {
        // Cut at the last whole line, so the last hunk is not a torn line.
        if let Some(nl) = buf.iter().rposition(|&b| b == b'\n') {
            buf.truncate(nl + 1);
        }
    }
    Ok((buf, more))
}

/// The unified diff of one file (`old`/`new` absent for an added/deleted file).
pub fn file_patch(path: &str, old: Option<(&[u8], bool)>, new: Option<(&[u8], bool)>) -> String {
    let (a, b) = (
        if old.is_some() { format!("a{path}") } else { "/dev/null".into() },
        if new.is_some() { format!("b{path}") } else { "/dev/null".into() },
    );
    let (old_bytes, old_more) = old.unwrap_or((&[], false));
    let (new_bytes, new_more) = new.unwrap_or((&[], false));
    let mut out = format!("diff --git a{path} b{path}\n");
    if is_binary(old_bytes) || is_binary(new_bytes) {
        out.push_str(&format!("Binary files {a} and {b} differ\n"));
        return out;
    }
    let (old_text, new_text) =
        (String::from_utf8_lossy(old_bytes), String::from_utf8_lossy(new_bytes));
    let diff = similar::TextDiff::from_lines(old_text.as_ref(), new_text.as_ref());
    let unified = diff.unified_diff().context_radius(3).header(&a, &b).to_string();
    out.push_str(&unified);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if old_more || new_more {
        out.push_str(TRUNCATED);
    }
    out
}

/// The patch of `entries` (regular files only), bounded by [`MAX_PATCH`].
pub fn build(
    old: &dyn Tree,
    new: &dyn Tree,
    entries: &[(Change, &DiffEntry)],
) -> Result<String, TreeError> {
    let mut out = String::new();
    for (change, e) in entries {
        if e.kind != EntryKind::File {
            continue;
        }
        let path = e.path.as_bytes();
        let old_side = match change {
            Change::Added => None,
            _ => Some(head(old, path)?),
        };
        let new_side = match change {
            Change::Deleted => None,
            _ => Some(head(new, path)?),
        };
        let piece = file_patch(
            &e.path,
            old_side.as_ref().map(|(b, m)| (b.as_slice(), *m)),
            new_side.as_ref().map(|(b, m)| (b.as_slice(), *m)),
        );
        if out.len() + piece.len() > MAX_PATCH {
            out.push_str(TRUNCATED);
            break;
        }
        out.push_str(&piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_patches() {
        let changed =
            file_patch("/etc/motd", Some((b"a\nb\nc\n", false)), Some((b"a\nB\nc\n", false)));
        assert_eq!(
            changed,
            "diff --git a/etc/motd b/etc/motd\n--- a/etc/motd\n+++ b/etc/motd\n\
             @@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
        );
        let added = file_patch("/new", None, Some((b"x\n", false)));
        assert!(added.contains("--- /dev/null\n+++ b/new\n@@ -0,0 +1 @@\n+x\n"), "{added}");
        let deleted = file_patch("/old", Some((b"y\n", false)), None);
        assert!(deleted.contains("--- a/old\n+++ /dev/null\n"), "{deleted}");
        let binary =
            file_patch("/bin/x", Some((b"\x7fELF\0", false)), Some((b"\x7fELF\0\x01", false)));
        assert!(binary.ends_with("Binary files a/bin/x and b/bin/x differ\n"), "{binary}");
        let cut = file_patch("/big", Some((b"a\n", true)), Some((b"b\n", false)));
        assert!(cut.ends_with(TRUNCATED), "{cut}");
    }

    #[test]
    fn the_whole_patch_is_bounded() {
        use super::super::tree::fake::Fake;
        let (mut old, mut new) = (Fake::default(), Fake::default());
        let line = "x".repeat(99) + "\n";
        let big_old = line.repeat(2000); // 200 KB
        let big_new = big_old.replace('x', "y");
        let mut entries = Vec::new();
        for i in 0..40 {
            let p = format!("/f{i}");
            old.put(&p, EntryKind::File, 0o644, &big_old, (1, 0));
            new.put(&p, EntryKind::File, 0o644, &big_new, (2, 0));
            entries.push(DiffEntry {
                path: p,
                kind: EntryKind::File,
                size: big_new.len() as u64,
                mode: 0o644,
                old_size: None,
                old_mode: None,
            });
        }
        let refs: Vec<_> = entries.iter().map(|e| (Change::Changed, e)).collect();
        let patch = build(&old, &new, &refs).unwrap();
        assert!(patch.len() <= MAX_PATCH + TRUNCATED.len(), "{}", patch.len());
        assert!(patch.ends_with(TRUNCATED));
    }
}
