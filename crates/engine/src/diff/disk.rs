//! Where the diff reads disks from: a raw image with `pread`, or an NBD export (QEMU's own for a
//! running sandbox, a `qemu-nbd` we start for a qcow2 file nothing runs), both behind an LRU of
//! recently read chunks that implements `ext4_view::Ext4Read`.

use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nbd::{NbdClient, NbdError};

/// What the LRU holds per entry: ext4-view asks for 32 KiB at a time; one round trip brings
/// 128 KiB (inode tables and directories sit together).
pub const CHUNK: u64 = 128 << 10;
/// Chunks kept: 64 MiB.
const CACHE_CHUNKS: usize = 512;
/// How long one NBD step (connect, handshake, a read) may take.
pub const NBD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `qemu-nbd` may take to listen.
const QEMU_NBD_START: Duration = Duration::from_secs(10);

/// Why a disk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file could not be read (the path is for the log, not the message).
    #[error("reading a disk file")]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// NBD failed.
    #[error(transparent)]
    Nbd(#[from] NbdError),
    /// `qemu-nbd` could not serve the file.
    #[error("qemu-nbd could not serve {}: {why}", path.display())]
    QemuNbd {
        /// The file.
        path: PathBuf,
        /// What it said (or why it could not start).
        why: String,
    },
    /// A read past the end.
    #[error("a read of {len} bytes at {offset} is past the end of the disk ({size} bytes)")]
    PastEnd {
        /// Where.
        offset: u64,
        /// How much.
        len: usize,
        /// The disk's size.
        size: u64,
    },
}

/// A disk that can be read at any offset.
pub trait Disk: Send {
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Round trips so far (NBD reads), for the log.
    fn round_trips(&self) -> u64 {
        0
    }
}

/// A raw image file (the base image), read with `pread`.
#[derive(Debug)]
pub struct RawFile {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
}

impl RawFile {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self, DiskError> {
        let err = |source| DiskError::File { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(Self { file, path: path.to_owned(), size })
    }
}

impl Disk for RawFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| DiskError::File { path: self.path.clone(), source })
    }

    fn size(&self) -> u64 {
        self.size
    }
}

impl Disk for NbdClient {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        Ok(NbdClient::read_at(self, offset, buf)?)
    }

    fn size(&self) -> u64 {
        NbdClient::size(self)
    }

    fn round_trips(&self) -> u64 {
        self.reads
    }
}

/// A qcow2 file served by a `qemu-nbd` this process started (read-only, without taking the
/// image's lock, so a sandbox woken meanwhile still starts), and the connection to it. The
/// server ends when the connection does; it is killed on drop in any case.
#[derive(Debug)]
pub struct QemuNbd {
    client: Option<NbdClient>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl QemuNbd {
    /// Serves the qcow2 `path` (and its backing chain) and connects.
    pub fn serve(path: &Path) -> Result<Self, DiskError> {
        let fail = |why: String| DiskError::QemuNbd { path: path.to_owned(), why };
        let dir = tempfile::Builder::new()
            .prefix("bhatti-diff-")
            .tempdir()
            .map_err(|e| fail(format!("a socket directory: {e}")))?;
        let socket = dir.path().join("nbd.sock");
        // `locking: off`: a running (or waking) QEMU holds the overlay's write lock; we only
        // read, and a cold sandbox's disk does not change under us unless it is woken.
        let filename = serde_json::json!({
            "driver": "qcow2",
            "file": { "driver": "file", "filename": path, "locking": "off" },
        });
        let mut child = Command::new("qemu-nbd")
            .arg("--read-only")
            .arg("--export-name=root")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("json:{filename}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run qemu-nbd: {e}")))?;
        let started = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if started.elapsed() < QEMU_NBD_START => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let mut stderr = String::new();
                        if let Some(mut e) = child.stderr.take() {
                            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                        }
                        return Err(fail(format!("{status}: {}", stderr.trim())));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("not listening after {QEMU_NBD_START:?}: {e}")));
                }
            }
        };
        match NbdClient::handshake(stream, "root", NBD_TIMEOUT) {
            Ok(client) => Ok(Self { client: Some(client), child, _dir: dir }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.into())
            }
        }
    }
}

impl Disk for QemuNbd {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        match &mut self.client {
            Some(c) => Ok(c.read_at(offset, buf)?),
            None => Err(DiskError::Nbd(NbdError::Protocol("disconnected".into()))),
        }
    }

    fn size(&self) -> u64 {
        self.client.as_ref().map_or(0, NbdClient::size)
    }

    fn round_trips(&self) -> u64 {
        self.client.as_ref().map_or(0, |c| c.reads)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            c.disconnect();
        }
        // Without `--persistent` it exits when its one client leaves; a short wait, then kill.
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A disk behind an LRU of [`CHUNK`]-sized pieces: what ext4-view reads.
pub struct Cached {
    disk: Box<dyn Disk>,
    cache: lru::LruCache<u64, Box<[u8]>>,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").field("chunks", &self.cache.len()).finish()
    }
}

impl Cached {
    /// `disk` with an empty cache.
    pub fn new(disk: Box<dyn Disk>) -> Self {
        let cap = NonZeroUsize::new(CACHE_CHUNKS).unwrap_or(NonZeroUsize::MIN);
        Self { disk, cache: lru::LruCache::new(cap) }
    }

    fn chunk(&mut self, index: u64) -> Result<&[u8], DiskError> {
        if !self.cache.contains(&index) {
            let start = index * CHUNK;
            let len = CHUNK.min(self.disk.size().saturating_sub(start));
            let mut buf = vec![0; len as usize].into_boxed_slice();
            self.disk.read_at(start, &mut buf)?;
            self.cache.put(index, buf);
        }
        self.cache.get(&index).map(|b| &**b).ok_or(DiskError::PastEnd {
            offset: index * CHUNK,
            len: 0,
            size: self.disk.size(),
        })
    }

    /// Reads through the cache.
    pub fn read(&mut self, offset: u64, dst: &mut [u8]) -> Result<(), DiskError> {
        let size = self.disk.size();
        let len = dst.len();
        let past_end = || DiskError::PastEnd { offset, len, size };
        if offset.checked_add(dst.len() as u64).is_none_or(|end| end > size) {
            return Err(past_end());
        }
        let mut done = 0;
        while done < dst.len() {
            let at = offset + done as u64;
            let (index, within) = (at / CHUNK, (at % CHUNK) as usize);
            let chunk = self.chunk(index)?;
            let n = (chunk.len() - within).min(dst.len() - done);
            if n == 0 {
                return Err(past_end());
            }
            dst[done..done + n].copy_from_slice(&chunk[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Round trips the disk made.
    pub fn round_trips(&self) -> u64 {
        self.disk.round_trips()
    }
}

/// Shared so the walk can ask for the round trips after ext4-view took the reader.
#[derive(Debug, Clone)]
pub struct SharedDisk(pub std::sync::Arc<std::sync::Mutex<Cached>>);

impl SharedDisk {
    /// `disk` behind a cache.
    pub fn new(disk: Box<dyn Disk>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Cached::new(disk))))
    }

    /// NBD round trips so far.
    pub fn round_trips(&self) -> u64 {
        self.0.lock().map(|c| c.round_trips()).unwrap_or(0)
    }
}

impl ext4_view::Ext4Read for SharedDisk {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let mut cached = self.0.lock().map_err(|_| "the disk cache was poisoned")?;
        cached.read(start_byte, dst).map_err(|e| Box::new(e) as _)
    }
}

/// The backing file of the qcow2 image `path` (absolute, or relative to its directory) and
/// whether it is raw, from the image's header: `None` for an image without one. Errors on a
/// file that is not qcow2.
pub fn qcow2_backing(path: &Path) -> Result<Option<(PathBuf, BackingFormat)>, DiskError> {
    let err = |source| DiskError::File { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut header = [0u8; 104];
    file.read_exact_at(&mut header[..72], 0).map_err(err)?;
    let parsed = parse_qcow2_header(&header[..72]).map_err(|why| err(invalid(why)))?;
    let Some((offset, len)) = parsed.backing else { return Ok(None) };
    let mut name = vec![0; len as usize];
    file.read_exact_at(&mut name, offset).map_err(err)?;
    let name = PathBuf::from(std::ffi::OsString::from(
        String::from_utf8(name).map_err(|_| err(invalid("backing file name is not UTF-8")))?,
    ));
    let backing =
        if name.is_absolute() { name } else { path.parent().unwrap_or(Path::new("/")).join(name) };
    // The backing format is a header extension; read them (version 3 headers say how long
    // the header is; version 2's extensions start at 72).
    let ext_start = if parsed.version >= 3 {
        file.read_exact_at(&mut header[72..104], 72).map_err(err)?;
        u64::from(u32::from_be_bytes([header[100], header[101], header[102], header[103]]))
    } else {
        72
    };
    let mut format = BackingFormat::Unknown;
    let mut at = ext_start;
    for _ in 0..64 {
        let mut h = [0u8; 8];
        if file.read_exact_at(&mut h, at).is_err() {
            break;
        }
        let kind = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if kind == 0 || len > 4096 {
            break;
        }
        if kind == 0xe279_2aca {
            let mut f = vec![0; len as usize];
            file.read_exact_at(&mut f, at + 8).map_err(err)?;
            format = match f.as_slice() {
                b"raw" => BackingFormat::Raw,
                b"qcow2" => BackingFormat::Qcow2,
                _ => BackingFormat::Unknown,
            };
            break;
        }
        at += 8 + u64::from(len).div_ceil(8) * 8;
    }
    Ok(Some((backing, format)))
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a qcow2 image: {why}"))
}

/// The format of a backing file as the overlay's header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFormat {
    /// Raw (a base image).
    Raw,
    /// qcow2 (a checkpoint's overlay).
    Qcow2,
    /// Not said: probed by reading the file's magic.
    Unknown,
}

struct Qcow2Header {
    version: u32,
    /// (offset, length) of the backing file's name.
    backing: Option<(u64, u32)>,
}

fn parse_qcow2_header(h: &[u8]) -> Result<Qcow2Header, &'static str> {
    if h.len() < 72 || &h[0..4] != b"QFI\xfb" {
        return Err("bad magic");
    }
    let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&h[8..16]);
    let offset = u64::from_be_bytes(offset);
    let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    if len > 1023 {
        return Err("backing file name longer than 1023 bytes");
    }
    let backing = (offset != 0 && len != 0).then_some((offset, len));
    Ok(Qcow2Header { version, backing })
}

/// Whether `path` starts with the qcow2 magic.
pub fn is_qcow2(path: &Path) -> Result<bool, DiskError> {
    let file = std::fs::File::open(path)
        .map_err(|source| DiskError::File { path: path.to_owned(), source })?;
    let mut magic = [0u8; 4];
    Ok(file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"QFI\xfb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Counting {
        data: Vec<u8>,
        reads: u64,
    }

    impl Disk for Counting {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            self.reads += 1;
            buf.copy_from_slice(&self.data[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn round_trips(&self) -> u64 {
            self.reads
        }
    }

    #[test]
    fn the_cache_reads_each_chunk_once_and_across_chunk_edges() {
        let data: Vec<u8> = (0..(CHUNK as usize * 3 + 100)).map(|i| (i % 251) as u8).collect();
        let mut c = Cached::new(Box::new(Counting { data: data.clone(), reads: 0 }));
        let table: [(&str, u64, usize); 5] = [
            ("start", 0, 4096),
            ("inside the first chunk again", 1024, 4096),
            ("across the first edge", CHUNK - 10, 20),
            ("the short last chunk", CHUNK * 3, 100),
            ("spanning three chunks", 5, CHUNK as usize * 2 + 10),
        ];
        for (what, offset, len) in table {
            let mut buf = vec![0; len];
            c.read(offset, &mut buf).unwrap();
            assert_eq!(buf, data[offset as usize..offset as usize + len], "{what}");
        }
        assert_eq!(c.round_trips(), 4, "chunks 0, 1, 3 and 2, once each");
        let mut buf = [0; 10];
        assert!(matches!(c.read(CHUNK * 3 + 95, &mut buf), Err(DiskError::PastEnd { .. })));
        assert!(matches!(c.read(u64::MAX - 2, &mut buf), Err(DiskError::PastEnd { .. })));
    }

    #[test]
    fn qcow2_headers() {
        let mut h = vec![0u8; 72];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse_qcow2_header(&h).unwrap().backing.is_none());
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&20u32.to_be_bytes());
        assert_eq!(parse_qcow2_header(&h).unwrap().backing, Some((512, 20)));
        h[16..20].copy_from_slice(&5000u32.to_be_bytes());
        assert!(parse_qcow2_header(&h).is_err());
        h[0] = b'X';
        assert!(parse_qcow2_header(&h).is_err());
        assert!(parse_qcow2_header(&h[..10]).is_err());
    }
}
