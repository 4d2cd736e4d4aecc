//! WATCH_REQ (feature `"watch"`): a directory watched with inotify, its changes streamed to the
//! host as WATCH_EVENT frames until the host closes the connection.
//!
//! One thread (the connection's) polls the inotify descriptor and the connection. Events go
//! through a bounded queue ([`Queue`]) and are written one frame per writable poll, so a host
//! that stops reading never blocks the agent and never makes it buffer without bound: past
//! [`WATCH_QUEUE_EVENTS`] events are dropped and one `overflow` event says so. A recursive watch
//! adds a watch for every directory created (or moved in) later, and reports what was created
//! in it before its watch was armed. The inotify descriptor closes when the watch ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use proto::limits::{MAX_WATCH_DIRS, WATCH_QUEUE_EVENTS};
use proto::messages::{WatchEvent, WatchKind, WatchRequest};
use proto::{FrameType, send_json};

use crate::conn::Conn;
use crate::pipes::poll_slots;
use crate::reply::{Outcome, os_error, send_error};

/// What every directory watch asks the kernel for.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// The bounded queue of events not yet sent. Writes to a name whose write event is still
/// queued are one event (a file written in many `write(2)` calls is reported once per batch
/// the host has not taken yet). When full, events are dropped and one `overflow` is queued as
/// soon as there is room again.
#[derive(Debug)]
pub struct Queue {
    events: VecDeque<WatchEvent>,
    cap: usize,
    lost: bool,
}

impl Queue {
    /// An empty queue of at most `cap` events.
    pub fn new(cap: usize) -> Self {
        Self { events: VecDeque::new(), cap: cap.max(2), lost: false }
    }

    /// Queues an event, or drops it (remembering the loss) when full.
    pub fn push(&mut self, event: WatchEvent) {
        if event.kind == WatchKind::Write
            && self.events.iter().any(|e| e.kind == WatchKind::Write && e.name == event.name)
        {
            return;
        }
        if event.kind == WatchKind::Overflow {
            self.lost = true;
            self.settle();
            return;
        }
        self.settle();
        if self.events.len() >= self.cap {
            self.lost = true;
            return;
        }
        self.events.push_back(event);
    }

    /// Queues the pending `overflow` once there is room for it.
    fn settle(&mut self) {
        if self.lost && self.events.len() < self.cap {
            self.events.push_back(WatchEvent { name: String::new(), kind: WatchKind::Overflow });
            self.lost = false;
        }
    }

    /// The next event to send.
    pub fn pop(&mut self) -> Option<WatchEvent> {
        let next = self.events.pop_front();
        self.settle();
        next
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && !self.lost
    }
}

/// lohar's own atomic-write temp files (`.<name>.bhatti-tmp-<pid>-<n>`, see `files.rs`): their
/// events are hidden, and a temp file renamed onto its target is reported as a create and a
/// write of the target (what a plain write would have shown).
fn is_temp_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.contains(".bhatti-tmp-")
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", os_error("watch", .path, .source))]
    Os { path: String, source: io::Error },
    #[error("watch {path}: not a directory")]
    NotDirectory { path: String },
    #[error("watch {path}: more than {limit} directories to watch")]
    TooMany { path: String, limit: usize },
}

/// The watched tree: the inotify instance and each watch's directory, relative to the root.
struct Tree {
    inotify: Inotify,
    root: PathBuf,
    recursive: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Cookies of renames away from a temp name.
    temp_moves: HashSet<u32>,
}

impl Tree {
    fn start(req: &WatchRequest) -> Result<Tree, StartError> {
        let path = req.path.clone();
        let os = |source: io::Error| StartError::Os { path: path.clone(), source };
        let meta = std::fs::metadata(&req.path).map_err(os)?;
        if !meta.is_dir() {
            return Err(StartError::NotDirectory { path });
        }
        // A link to a directory is watched as that directory (the watches themselves do
        // not follow links below it).
        let root = std::fs::canonicalize(&req.path).map_err(os)?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| os(io::Error::from(e)))?;
        let mut tree = Tree {
            inotify,
            root,
            recursive: req.recursive,
            dirs: HashMap::new(),
            temp_moves: HashSet::new(),
        };
        tree.add(Path::new("")).map_err(os)?;
        if req.recursive {
            let mut pending = vec![PathBuf::new()];
            while let Some(dir) = pending.pop() {
                for sub in subdirs(&tree.root.join(&dir)) {
                    let rel = dir.join(sub);
                    if tree.dirs.len() >= MAX_WATCH_DIRS {
                        return Err(StartError::TooMany { path, limit: MAX_WATCH_DIRS });
                    }
                    // A directory removed meanwhile is simply not watched.
                    if tree.add(&rel).is_ok() {
                        pending.push(rel);
                    }
                }
            }
        }
        Ok(tree)
    }

    fn add(&mut self, rel: &Path) -> io::Result<()> {
        let wd = self.inotify.add_watch(&self.root.join(rel), mask()).map_err(io::Error::from)?;
        self.dirs.insert(wd, rel.to_owned());
        Ok(())
    }

    /// Watches a directory that appeared below a recursive watch, and reports what is already
    /// in it (created before its watch was armed), recursively.
    fn adopt(&mut self, rel: &Path, queue: &mut Queue) {
        let mut pending = vec![rel.to_owned()];
        while let Some(dir) = pending.pop() {
            if self.dirs.len() >= MAX_WATCH_DIRS {
                queue.push(WatchEvent { name: String::new(), kind: WatchKind::Overflow });
                return;
            }
            if self.add(&dir).is_err() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(self.root.join(&dir)) else { continue };
            for entry in entries.flatten() {
                if is_temp_name(&entry.file_name()) {
                    continue;
                }
                let child = dir.join(entry.file_name());
                queue.push(WatchEvent { name: shown(&child), kind: WatchKind::Create });
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(child);
                }
            }
        }
    }

    /// Turns one kernel event into queued watch events.
    fn handle(&mut self, event: InotifyEvent, queue: &mut Queue) {
        let mask = event.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            queue.push(WatchEvent { name: String::new(), kind: WatchKind::Overflow });
            return;
        }
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&event.wd);
            return;
        }
        let Some(dir) = self.dirs.get(&event.wd).cloned() else { return };
        let is_dir = mask.contains(AddWatchFlags::IN_ISDIR);
        let Some(name) = event.name else {
            // The directory itself: only the root's own removal or move is news (a
            // subdirectory's is reported by its parent).
            if dir.as_os_str().is_empty() {
                let kind = if mask.contains(AddWatchFlags::IN_DELETE_SELF) {
                    Some(WatchKind::Remove)
                } else if mask.contains(AddWatchFlags::IN_MOVE_SELF) {
                    Some(WatchKind::Rename)
                } else if mask.contains(AddWatchFlags::IN_ATTRIB) {
                    Some(WatchKind::Chmod)
                } else {
                    None
                };
                if let Some(kind) = kind {
                    queue.push(WatchEvent { name: String::new(), kind });
                }
            }
            return;
        };
        let rel = dir.join(&name);
        let temp = is_temp_name(&name);
        let push = |queue: &mut Queue, kind| queue.push(WatchEvent { name: shown(&rel), kind });
        if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
            if temp {
                self.temp_moves.insert(event.cookie);
            } else {
                push(queue, WatchKind::Rename);
            }
        } else if mask.contains(AddWatchFlags::IN_MOVED_TO) {
            if temp {
                return;
            }
            push(queue, WatchKind::Create);
            if self.temp_moves.remove(&event.cookie) {
                push(queue, WatchKind::Write);
            }
            if is_dir && self.recursive {
                self.adopt(&rel, queue);
            }
        } else if temp {
        } else if mask.contains(AddWatchFlags::IN_CREATE) {
            push(queue, WatchKind::Create);
            if is_dir && self.recursive {
                self.adopt(&rel, queue);
            }
        } else if mask.contains(AddWatchFlags::IN_DELETE) {
            push(queue, WatchKind::Remove);
        } else if mask.contains(AddWatchFlags::IN_MODIFY) {
            push(queue, WatchKind::Write);
        } else if mask.contains(AddWatchFlags::IN_ATTRIB) {
            push(queue, WatchKind::Chmod);
        }
        // A rename pair whose moved_to never came (moved out of the tree) leaves a cookie;
        // keep the set small.
        if self.temp_moves.len() > 64 {
            self.temp_moves.clear();
        }
    }
}

/// The subdirectories of `dir` (not following symbolic links).
fn subdirs(dir: &Path) -> Vec<std::ffi::OsString> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect()
}

fn shown(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// WATCH_REQ: ERROR, or `started` and the events until the host closes the connection.
pub fn watch(conn: &mut Conn, req: &WatchRequest) -> Outcome {
    let mut tree = match Tree::start(req) {
        Ok(tree) => tree,
        Err(e) => return send_error(conn, &e.to_string()),
    };
    let started = WatchEvent { name: String::new(), kind: WatchKind::Started };
    if send_json(conn, FrameType::WATCH_EVENT, &started).is_err() {
        return Outcome::Close;
    }
    let mut queue = Queue::new(WATCH_QUEUE_EVENTS);
    let notify_fd = tree.inotify.as_fd().as_raw_fd();
    let conn_fd = conn.as_raw_fd();
    let mut scratch = [0u8; 512];
    loop {
        let conn_events = if queue.is_empty() {
            libc::POLLIN | libc::POLLRDHUP
        } else {
            libc::POLLIN | libc::POLLRDHUP | libc::POLLOUT
        };
        let [notify, host] =
            poll_slots([Some((notify_fd, libc::POLLIN)), Some((conn_fd, conn_events))], -1);
        if host & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP | libc::POLLNVAL) != 0 {
            return Outcome::Close;
        }
        if host & libc::POLLIN != 0 {
            // The host sends nothing on a watch; its EOF ends the watch, anything else is
            // dropped.
            match conn.read(&mut scratch) {
                Ok(0) => return Outcome::Close,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Close,
            }
        }
        if notify & libc::POLLIN != 0 {
            match tree.inotify.read_events() {
                Ok(events) => {
                    for event in events {
                        tree.handle(event, &mut queue);
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("lohar: watch {}: read: {e}", req.path);
                    return Outcome::Close;
                }
            }
        }
        // One frame per writable poll: a frame is far smaller than the room POLLOUT promises,
        // so this write does not block on a slow host.
        if host & libc::POLLOUT != 0
            && let Some(event) = queue.pop()
            && send_json(conn, FrameType::WATCH_EVENT, &event).is_err()
        {
            return Outcome::Close;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, kind: WatchKind) -> WatchEvent {
        WatchEvent { name: name.into(), kind }
    }

    #[test]
    fn queue_table() {
        use WatchKind::*;
        let rows: [(&str, usize, Vec<WatchEvent>, Vec<WatchEvent>); 5] = [
            (
                "in order",
                8,
                vec![ev("a", Create), ev("a", Write)],
                vec![ev("a", Create), ev("a", Write)],
            ),
            (
                "unsent writes coalesce",
                8,
                vec![ev("a", Write), ev("b", Write), ev("a", Write)],
                vec![ev("a", Write), ev("b", Write)],
            ),
            (
                "creates never coalesce",
                8,
                vec![ev("a", Create), ev("a", Create)],
                vec![ev("a", Create), ev("a", Create)],
            ),
            (
                "full: dropped and one overflow once there is room",
                2,
                vec![ev("a", Create), ev("b", Create), ev("c", Create), ev("d", Create)],
                vec![ev("a", Create), ev("b", Create), ev("", Overflow)],
            ),
            (
                "a kernel overflow is queued",
                8,
                vec![ev("a", Create), ev("", Overflow)],
                vec![ev("a", Create), ev("", Overflow)],
            ),
        ];
        for (name, cap, pushed, want) in rows {
            let mut q = Queue::new(cap);
            for e in pushed {
                q.push(e);
            }
            let mut got = Vec::new();
            while let Some(e) = q.pop() {
                got.push(e);
            }
            assert_eq!(got, want, "{name}");
            assert!(q.is_empty(), "{name}");
        }
    }

    #[test]
    fn temp_names_table() {
        let rows = [
            (".a.txt.bhatti-tmp-12-3", true),
            ("a.txt", false),
            (".hidden", false),
            ("x.bhatti-tmp-1-1", false),
        ];
        for (name, want) in rows {
            assert_eq!(is_temp_name(OsStr::new(name)), want, "{name}");
        }
    }
}
