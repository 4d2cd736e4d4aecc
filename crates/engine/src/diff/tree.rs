//! Comparing two directory trees, one directory at a time (both listings sorted by name and
//! merged), so memory follows the largest directory, not the whole tree.
//!
//! Whether an entry changed is decided from its inode's facts first ([`classify`]): the same
//! type, size, mode, owner, modification time and creation time mean the same file (the two
//! trees share the unchanged blocks, so an untouched file has the very same inode); a file
//! written again has a new mtime, a file replaced (a rename over it, `ln -sf`) a new creation
//! time. Only when the facts differ but size, mode and owner agree is the content compared
//! (streamed, bounded), to tell a real change from a touch. ext4-view gives no inode numbers
//! or ctimes, hence creation time as the identity; what it cannot see is a write that puts the
//! mtime back to the nanosecond (`touch -d` with the old time) without changing the size.

use std::time::Instant;

use super::{DiffEntry, EntryKind};

/// One directory entry's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name in its directory.
    pub name: Vec<u8>,
    /// Its type.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Creation time, where the inode has one.
    pub crtime: Option<(i64, u32)>,
}

/// What the facts of one path in both trees say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same inode: unchanged.
    Same,
    /// Changed, visibly in the facts (mode, owner or size) or, for a directory, in its mode or
    /// owner (its entries are reported themselves).
    Changed,
    /// A different type: the old one deleted, the new one added.
    Replaced,
    /// A file whose times differ but not its size, mode or owner: compare the bytes.
    CompareContent,
    /// A symlink whose times differ: compare the targets.
    CompareTarget,
}

/// The pure decision for one path present in both trees.
pub fn classify(old: &Node, new: &Node) -> Verdict {
    if old.kind != new.kind {
        return Verdict::Replaced;
    }
    let owner_or_mode = old.mode != new.mode || old.uid != new.uid || old.gid != new.gid;
    match new.kind {
        EntryKind::Dir => {
            if owner_or_mode {
                Verdict::Changed
            } else {
                Verdict::Same
            }
        }
        _ if owner_or_mode || old.size != new.size => Verdict::Changed,
        _ if old.mtime == new.mtime && old.crtime == new.crtime => Verdict::Same,
        EntryKind::File => Verdict::CompareContent,
        EntryKind::Symlink => Verdict::CompareTarget,
        // A device node or fifo whose times moved: nothing else to compare.
        EntryKind::Other => Verdict::Same,
    }
}

/// A readable tree.
pub trait Tree {
    /// The entries of the directory `dir` (an absolute path, bytes), in any order.
    fn list(&self, dir: &[u8]) -> Result<Vec<Node>, TreeError>;
    /// Up to `limit` bytes of the file `path` from `offset`, into `buf` (cleared first);
    /// fewer only at its end.
    fn read(
        &self,
        path: &[u8],
        offset: u64,
        limit: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), TreeError>;
    /// The target of the symlink `path`.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, TreeError>;
}

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The filesystem (or the disk under it) failed.
    #[error("{what} {path}: {why}")]
    Read {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        why: String,
    },
    /// A directory too large to compare.
    #[error("directory {path} has more than {max} entries")]
    TooLarge {
        /// Which.
        path: String,
        /// The bound.
        max: usize,
    },
    /// The walk took too long.
    #[error("the comparison did not finish in time")]
    Deadline,
}

/// How far one comparison may go.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Entries reported (added + changed + deleted); past it the answer is truncated.
    pub max_entries: usize,
    /// Entries in one directory.
    pub max_dir_entries: usize,
    /// Bytes of content compared in all (each side); past it, files whose times differ count
    /// as changed without a look.
    pub max_compare_bytes: u64,
    /// When to give up.
    pub deadline: Instant,
}

/// What a comparison found, each list in walk order (sorted by the caller).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub added: Vec<DiffEntry>,
    pub changed: Vec<DiffEntry>,
    pub deleted: Vec<DiffEntry>,
    /// The entry bound was reached.
    pub truncated: bool,
    /// Bytes compared (each side).
    pub compared_bytes: u64,
    /// Entries looked at (both trees).
    pub visited: u64,
}

impl Found {
    fn count(&self) -> usize {
        self.added.len() + self.changed.len() + self.deleted.len()
    }
}

/// Compares `old` with `new` from the root.
pub fn compare(old: &dyn Tree, new: &dyn Tree, bounds: Bounds) -> Result<Found, TreeError> {
    let mut found = Found::default();
    let mut walk =
        Walk { old, new, bounds, found: &mut found, buf_a: Vec::new(), buf_b: Vec::new() };
    walk.dir(b"/")?;
    Ok(found)
}

struct Walk<'a> {
    old: &'a dyn Tree,
    new: &'a dyn Tree,
    bounds: Bounds,
    found: &'a mut Found,
    buf_a: Vec<u8>,
    buf_b: Vec<u8>,
}

/// Content is compared in pieces this large.
const PIECE: usize = 1 << 20;

/// A directory's entries, sorted by name.
fn sorted(tree: &dyn Tree, dir: &[u8], max: usize) -> Result<Vec<Node>, TreeError> {
    let mut nodes = tree.list(dir)?;
    if nodes.len() > max {
        return Err(TreeError::TooLarge { path: text(dir), max });
    }
    nodes.retain(|n| n.name != b"." && n.name != b"..");
    nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A path for people (lossy where a name is not UTF-8).
pub fn text(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn entry(path: &[u8], n: &Node, old: Option<&Node>) -> DiffEntry {
    DiffEntry {
        path: text(path),
        kind: n.kind,
        size: n.size,
        mode: n.mode,
        old_size: old.map(|o| o.size),
        old_mode: old.map(|o| o.mode),
    }
}

#[derive(Clone, Copy)]
enum Side {
    Added,
    Deleted,
}

impl Walk<'_> {
    fn full(&mut self) -> bool {
        if self.found.count() >= self.bounds.max_entries {
            self.found.truncated = true;
        }
        self.found.truncated
    }

    fn check_deadline(&self) -> Result<(), TreeError> {
        let now = Instant::now();
        if now > self.bounds.deadline {
            return Err(TreeError::Deadline);
        }
        Ok(())
    }

    fn push(&mut self, side: Side, path: &[u8], n: &Node) {
        if self.full() {
            return;
        }
        let e = entry(path, n, None);
        match side {
            Side::Added => self.found.added.push(e),
            Side::Deleted => self.found.deleted.push(e),
        }
    }

    /// An entry only one tree has, with everything below it.
    fn one_sided(&mut self, side: Side, path: &[u8], n: &Node) -> Result<(), TreeError> {
        self.push(side, path, n);
        if n.kind != EntryKind::Dir || self.full() {
            return Ok(());
        }
        let tree = match side {
            Side::Added => self.new,
            Side::Deleted => self.old,
        };
        self.check_deadline()?;
        for child in sorted(tree, path, self.bounds.max_dir_entries)? {
            self.found.visited += 1;
            self.one_sided(side, &join(path, &child.name), &child)?;
            if self.full() {
                break;
            }
        }
        Ok(())
    }

    fn dir(&mut self, path: &[u8]) -> Result<(), TreeError> {
        self.check_deadline()?;
        let max = self.bounds.max_dir_entries;
        let old = sorted(self.old, path, max)?;
        let new = sorted(self.new, path, max)?;
        self.found.visited += (old.len() + new.len()) as u64;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            if self.full() {
                return Ok(());
            }
            let order = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => a.name.cmp(&b.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.one_sided(Side::Deleted, &join(path, &old[i].name), &old[i])?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.one_sided(Side::Added, &join(path, &new[j].name), &new[j])?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let child = join(path, &new[j].name);
                    self.both(&child, &old[i], &new[j])?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn both(&mut self, path: &[u8], old: &Node, new: &Node) -> Result<(), TreeError> {
        let changed = match classify(old, new) {
            Verdict::Same => false,
            Verdict::Changed => true,
            Verdict::Replaced => {
                self.one_sided(Side::Deleted, path, old)?;
                return self.one_sided(Side::Added, path, new);
            }
            Verdict::CompareContent => !self.same_content(path, new.size)?,
            Verdict::CompareTarget => self.old.read_link(path)? != self.new.read_link(path)?,
        };
        if changed && !self.full() {
            self.found.changed.push(entry(path, new, Some(old)));
        }
        if new.kind == EntryKind::Dir {
            self.dir(path)?;
        }
        Ok(())
    }

    /// Whether the file `path` (of `size` bytes in both trees) has the same bytes in both,
    /// within the budget (past it: assumed changed).
    fn same_content(&mut self, path: &[u8], size: u64) -> Result<bool, TreeError> {
        if self.found.compared_bytes.saturating_add(size) > self.bounds.max_compare_bytes {
            return Ok(false);
        }
        let mut offset = 0;
        while offset < size {
            self.check_deadline()?;
            let (mut a, mut b) = (std::mem::take(&mut self.buf_a), std::mem::take(&mut self.buf_b));
            let read = self
                .old
                .read(path, offset, PIECE, &mut a)
                .and_then(|()| self.new.read(path, offset, PIECE, &mut b));
            let same = a == b;
            let n = a.len() as u64;
            (self.buf_a, self.buf_b) = (a, b);
            read?;
            self.found.compared_bytes += n;
            if !same {
                return Ok(false);
            }
            if n == 0 {
                break;
            }
            offset += n;
        }
        Ok(true)
    }
}

/// A tree held in memory, for tests: `(path, node, content)`.
#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Default)]
    pub struct Fake {
        pub entries: BTreeMap<Vec<u8>, (Node, Vec<u8>)>,
    }

    impl Fake {
        pub fn with(mut self, path: &str, kind: EntryKind, mode: u16, content: &str) -> Self {
            self.put(path, kind, mode, content, (1, 0));
            self
        }

        pub fn put(
            &mut self,
            path: &str,
            kind: EntryKind,
            mode: u16,
            content: &str,
            mtime: (i64, u32),
        ) {
            let name = path.rsplit('/').next().unwrap_or_default().as_bytes().to_vec();
            let size = if kind == EntryKind::Dir { 4096 } else { content.len() as u64 };
            let node = Node { name, kind, size, mode, uid: 0, gid: 0, mtime, crtime: Some((1, 0)) };
            self.entries.insert(path.as_bytes().to_vec(), (node, content.as_bytes().to_vec()));
        }
    }

    impl Tree for Fake {
        fn list(&self, dir: &[u8]) -> Result<Vec<Node>, TreeError> {
            let prefix = join(dir, b"");
            Ok(self
                .entries
                .iter()
                .filter(|(p, _)| {
                    p.starts_with(&prefix)
                        && p.len() > prefix.len()
                        && !p[prefix.len()..].contains(&b'/')
                })
                .map(|(_, (n, _))| n.clone())
                .collect())
        }

        fn read(
            &self,
            path: &[u8],
            offset: u64,
            limit: usize,
            buf: &mut Vec<u8>,
        ) -> Result<(), TreeError> {
            buf.clear();
            let content = &self.entries[path].1;
            let start = (offset as usize).min(content.len());
            let end = (start + limit).min(content.len());
            buf.extend_from_slice(&content[start..end]);
            Ok(())
        }

        fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, TreeError> {
            Ok(self.entries[path].1.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::fake::Fake;
    use super::*;
    use EntryKind::{Dir, File, Other, Symlink};

    fn node(kind: EntryKind, size: u64, mode: u16, mtime: i64, crtime: i64) -> Node {
        Node {
            name: b"x".to_vec(),
            kind,
            size,
            mode,
            uid: 0,
            gid: 0,
            mtime: (mtime, 0),
            crtime: Some((crtime, 0)),
        }
    }

    #[test]
    fn classify_table() {
        let f = node(File, 10, 0o644, 1, 1);
        let chown = Node { uid: 1000, ..f.clone() };
        let table = [
            ("the same inode", f.clone(), f.clone(), Verdict::Same),
            ("chmod", f.clone(), node(File, 10, 0o755, 1, 1), Verdict::Changed),
            ("chown", f.clone(), chown, Verdict::Changed),
            ("grown", f.clone(), node(File, 11, 0o644, 2, 1), Verdict::Changed),
            ("written, same size", f.clone(), node(File, 10, 0o644, 2, 1), Verdict::CompareContent),
            (
                "replaced, same size",
                f.clone(),
                node(File, 10, 0o644, 1, 5),
                Verdict::CompareContent,
            ),
            (
                "a file became a directory",
                f.clone(),
                node(Dir, 4096, 0o755, 1, 1),
                Verdict::Replaced,
            ),
            (
                "a directory with new entries",
                node(Dir, 4096, 0o755, 1, 1),
                node(Dir, 8192, 0o755, 9, 1),
                Verdict::Same,
            ),
            (
                "a directory chmod",
                node(Dir, 4096, 0o755, 1, 1),
                node(Dir, 4096, 0o700, 1, 1),
                Verdict::Changed,
            ),
            (
                "a symlink made again",
                node(Symlink, 4, 0o777, 1, 1),
                node(Symlink, 4, 0o777, 3, 3),
                Verdict::CompareTarget,
            ),
            (
                "a symlink to a longer target",
                node(Symlink, 4, 0o777, 1, 1),
                node(Symlink, 6, 0o777, 3, 3),
                Verdict::Changed,
            ),
            (
                "a fifo touched",
                node(Other, 0, 0o644, 1, 1),
                node(Other, 0, 0o644, 2, 1),
                Verdict::Same,
            ),
        ];
        for (what, old, new, want) in table {
            assert_eq!(classify(&old, &new), want, "{what}");
        }
    }

    fn bounds(max_entries: usize) -> Bounds {
        Bounds {
            max_entries,
            max_dir_entries: 1000,
            max_compare_bytes: 1 << 30,
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    fn paths(v: &[DiffEntry]) -> Vec<&str> {
        v.iter().map(|e| e.path.as_str()).collect()
    }

    fn base() -> Fake {
        Fake::default()
            .with("/etc", Dir, 0o755, "")
            .with("/etc/hosts", File, 0o644, "127.0.0.1 localhost\n")
            .with("/etc/motd", File, 0o644, "hello\n")
            .with("/bin", Dir, 0o755, "")
            .with("/bin/sh", File, 0o755, "ELF")
            .with("/bin/ls", Symlink, 0o777, "busybox")
            .with("/var", Dir, 0o755, "")
            .with("/var/old", Dir, 0o755, "")
            .with("/var/old/a", File, 0o644, "a")
    }

    #[test]
    fn compare_table() {
        type Change = fn(&mut Fake);
        type Paths = &'static [&'static str];
        let table: [(&str, Change, Paths, Paths, Paths); 9] = [
            ("nothing", |_| {}, &[], &[], &[]),
            (
                "a new file",
                |t| t.put("/etc/new", File, 0o600, "x", (5, 0)),
                &["/etc/new"],
                &[],
                &[],
            ),
            (
                "a new directory tree",
                |t| {
                    t.put("/srv", Dir, 0o755, "", (5, 0));
                    t.put("/srv/app", Dir, 0o755, "", (5, 0));
                    t.put("/srv/app/main.py", File, 0o644, "print()", (5, 0));
                },
                &["/srv", "/srv/app", "/srv/app/main.py"],
                &[],
                &[],
            ),
            (
                "a rewritten file",
                |t| t.put("/etc/motd", File, 0o644, "HELLO\n", (5, 0)),
                &[],
                &["/etc/motd"],
                &[],
            ),
            (
                "a touched file",
                |t| t.put("/etc/motd", File, 0o644, "hello\n", (5, 0)),
                &[],
                &[],
                &[],
            ),
            ("a chmod", |t| t.put("/bin/sh", File, 0o700, "ELF", (1, 0)), &[], &["/bin/sh"], &[]),
            (
                "a removed tree",
                |t| {
                    t.entries.remove(b"/var/old".as_slice());
                    t.entries.remove(b"/var/old/a".as_slice());
                },
                &[],
                &[],
                &["/var/old", "/var/old/a"],
            ),
            (
                "a symlink pointed elsewhere",
                |t| t.put("/bin/ls", Symlink, 0o777, "toybox", (5, 0)),
                &[],
                &["/bin/ls"],
                &[],
            ),
            (
                "a file replaced by a directory",
                |t| {
                    t.put("/etc/motd", Dir, 0o755, "", (5, 0));
                    t.put("/etc/motd/x", File, 0o644, "", (5, 0));
                },
                &["/etc/motd", "/etc/motd/x"],
                &[],
                &["/etc/motd"],
            ),
        ];
        for (what, change, added, changed, deleted) in table {
            let mut new = base();
            change(&mut new);
            let found = compare(&base(), &new, bounds(100)).unwrap();
            assert_eq!(paths(&found.added), added, "{what}: added");
            assert_eq!(paths(&found.changed), changed, "{what}: changed");
            assert_eq!(paths(&found.deleted), deleted, "{what}: deleted");
            assert!(!found.truncated, "{what}");
        }
    }

    #[test]
    fn a_change_reports_the_old_size_and_mode() {
        let mut new = base();
        new.put("/etc/hosts", File, 0o600, "127.0.0.1 localhost\n::1 localhost\n", (9, 0));
        let found = compare(&base(), &new, bounds(100)).unwrap();
        let e = &found.changed[0];
        assert_eq!((e.size, e.mode, e.old_size, e.old_mode), (34, 0o600, Some(20), Some(0o644)));
    }

    #[test]
    fn the_entry_bound_truncates() {
        let mut new = base();
        for i in 0..50 {
            new.put(&format!("/etc/f{i:02}"), File, 0o644, "x", (5, 0));
        }
        let found = compare(&base(), &new, bounds(10)).unwrap();
        assert_eq!(found.added.len(), 10);
        assert!(found.truncated);
    }

    #[test]
    fn past_the_compare_budget_a_touched_file_counts_as_changed() {
        let mut new = base();
        new.put("/etc/motd", File, 0o644, "hello\n", (5, 0));
        let b = Bounds { max_compare_bytes: 3, ..bounds(100) };
        assert_eq!(paths(&compare(&base(), &new, b).unwrap().changed), ["/etc/motd"]);
    }

    #[test]
    fn a_directory_too_large_is_an_error() {
        let b = Bounds { max_dir_entries: 2, ..bounds(100) };
        assert!(matches!(compare(&base(), &base(), b), Err(TreeError::TooLarge { .. })));
    }
}
