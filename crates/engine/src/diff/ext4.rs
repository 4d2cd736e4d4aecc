//! An ext4 filesystem on a [`Disk`](super::disk::Disk) as a [`Tree`], read with `ext4-view`
//! (pure Rust, read-only, no mount; a journal that still holds committed transactions, as a
//! mounted filesystem's does, is replayed in memory).

use ext4_view::{Ext4, Ext4Error};

use super::EntryKind;
use super::disk::SharedDisk;
use super::tree::{Node, Tree, TreeError, text};

/// A filesystem opened for reading.
pub struct Ext4Tree {
    fs: Ext4,
    disk: SharedDisk,
}

impl std::fmt::Debug for Ext4Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Tree").finish_non_exhaustive()
    }
}

fn failed(what: &'static str, path: &[u8]) -> impl FnOnce(Ext4Error) -> TreeError {
    let path = text(path);
    move |e| TreeError::Read { what, path, why: e.to_string() }
}

fn path(p: &[u8]) -> Result<ext4_view::Path<'_>, TreeError> {
    ext4_view::Path::try_from(p).map_err(|e| TreeError::Read {
        what: "a path",
        path: text(p),
        why: e.to_string(),
    })
}

impl Ext4Tree {
    /// Loads the filesystem on `disk` (superblock, group descriptors, journal).
    pub fn load(disk: SharedDisk) -> Result<Self, TreeError> {
        let fs = Ext4::load(Box::new(disk.clone())).map_err(failed("loading", b"/"))?;
        Ok(Self { fs, disk })
    }

    /// NBD round trips so far.
    pub fn round_trips(&self) -> u64 {
        self.disk.round_trips()
    }
}

fn kind(t: ext4_view::FileType) -> EntryKind {
    if t.is_dir() {
        EntryKind::Dir
    } else if t.is_regular_file() {
        EntryKind::File
    } else if t.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

impl Tree for Ext4Tree {
    fn list(&self, dir: &[u8]) -> Result<Vec<Node>, TreeError> {
        let mut out = Vec::new();
        let entries = self.fs.read_dir(path(dir)?).map_err(failed("listing", dir))?;
        for entry in entries {
            let entry = entry.map_err(failed("listing", dir))?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let m = entry.metadata().map_err(failed("reading the inode of an entry of", dir))?;
            out.push(Node {
                name,
                kind: kind(m.file_type()),
                size: m.len(),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.modified().seconds(), m.modified().nanoseconds()),
                crtime: m.created().map(|t| (t.seconds(), t.nanoseconds())),
            });
        }
        Ok(out)
    }

    fn read(
        &self,
        p: &[u8],
        offset: u64,
        limit: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), TreeError> {
        buf.clear();
        let mut file = self.fs.open(path(p)?).map_err(failed("opening", p))?;
        if offset >= file.metadata().len() {
            return Ok(());
        }
        file.seek_to(offset).map_err(failed("seeking in", p))?;
        buf.resize(limit, 0);
        let mut done = 0;
        while done < limit {
            let n = file.read_bytes(&mut buf[done..]).map_err(failed("reading", p))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(())
    }

    fn read_link(&self, p: &[u8]) -> Result<Vec<u8>, TreeError> {
        let target = self.fs.read_link(path(p)?).map_err(failed("reading the link", p))?;
        Ok(target.as_ref().to_vec())
    }
}
