//! Volume backups in an S3-compatible store (v1's key layout and compression): a volume file
//! is copied (`cp --reflink=auto --sparse=always`, so an attached volume is backed up
//! crash-consistent), compressed with zstd (level 3, streamed file to file) and uploaded
//! (one PUT, or a multipart upload in 8 MiB parts above that); a restore downloads to a
//! temporary file, decompresses into another (holes kept), fsyncs it and renames it over the
//! volume, so a failure (a damaged object, a full disk, the store going away) leaves the old
//! volume as it was and nothing half-written behind. The client is `object_store`'s S3
//! (SigV4, path-style requests, plain HTTP allowed for endpoints on a private network).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::backup_config::BackupConfig;
use crate::error::{ApiError, ApiResult};
use crate::volume_files::{self as files, beside, io_error};

/// A whole upload or download.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Upload part size (and the largest object sent in one PUT).
const PART: usize = 8 * 1024 * 1024;
/// Compression level (v1: `zstd -3`).
const LEVEL: i32 = 3;

/// The bucket of the config.
pub(crate) fn bucket(cfg: &BackupConfig) -> ApiResult<Arc<dyn ObjectStore>> {
    let region = if cfg.s3_region.is_empty() { "us-east-1" } else { cfg.s3_region.as_str() };
    let options = ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300));
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&cfg.s3_endpoint)
        .with_region(region)
        .with_bucket_name(&cfg.s3_bucket)
        .with_access_key_id(&cfg.s3_access_key)
        .with_secret_access_key(&cfg.s3_secret_key)
        .with_virtual_hosted_style_request(false)
        .with_client_options(options)
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        })
        .build()
        .map_err(|e| ApiError::Internal(format!("backup store client: {e}")))?;
    Ok(Arc::new(s3))
}

/// v1's key: `volumes/<owner>/<volume>/<UTC RFC 3339>.ext4.zst` (with milliseconds, so two
/// backups in one second do not overwrite each other).
pub(crate) fn key(owner: &str, volume: &str, at: SystemTime) -> String {
    let at = humantime::format_rfc3339_millis(at);
    format!("volumes/{owner}/{volume}/{at}.ext4.zst")
}

fn store_error(what: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::BadGateway(format!("backup store: {what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("backup work: {e}")))?
}

/// Removes temporary files, whatever happened.
async fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        files::remove(p).await;
    }
}

/// Backs up the volume file to `key`; answers the compressed size.
pub(crate) async fn upload(cfg: &BackupConfig, volume_file: &Path, key: &str) -> ApiResult<u64> {
    let snap = beside(volume_file, ".backup-tmp");
    let zst = beside(volume_file, ".backup-tmp.zst");
    let result = upload_inner(cfg, volume_file, &snap, &zst, key).await;
    remove_all(&[snap, zst]).await;
    result
}

async fn upload_inner(
    cfg: &BackupConfig,
    volume_file: &Path,
    snap: &Path,
    zst: &Path,
    key: &str,
) -> ApiResult<u64> {
    files::copy(volume_file, snap).await?;
    let (from, to) = (snap.to_owned(), zst.to_owned());
    let size = blocking(move || compress(&from, &to)).await?;
    files::remove(snap).await;
    let bucket = bucket(cfg)?;
    let key = Key::from(key);
    tokio::time::timeout(TRANSFER_DEADLINE, send(bucket.as_ref(), &key, zst, size))
        .await
        .map_err(|_| store_error("upload", &"took longer than 30 minutes"))??;
    Ok(size)
}

/// zstd of `from` into `to`, streamed; the compressed size.
fn compress(from: &Path, to: &Path) -> ApiResult<u64> {
    use crate::volume_files::io;
    let input = std::fs::File::open(from).map_err(io("reading", from))?;
    let output = std::fs::File::create(to).map_err(io("writing", to))?;
    let mut encoder = zstd::stream::Encoder::new(output, LEVEL).map_err(io("compressing", to))?;
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, input), &mut encoder)
        .map_err(io("compressing", to))?;
    let output = encoder.finish().map_err(io("compressing", to))?;
    Ok(output.metadata().map_err(io("reading", to))?.len())
}

async fn send(bucket: &dyn ObjectStore, key: &Key, path: &Path, size: u64) -> ApiResult<()> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| io_error("reading", path, &e))?;
    let mut buf = vec![0u8; PART];
    if size <= PART as u64 {
        let n = read_full(&mut file, &mut buf, path).await?;
        buf.truncate(n);
        bucket.put(key, PutPayload::from(buf)).await.map_err(|e| store_error("upload", &e))?;
        return Ok(());
    }
    let upload = bucket.put_multipart(key).await.map_err(|e| store_error("upload", &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    loop {
        let n = read_full(&mut file, &mut buf, path).await?;
        if n == 0 {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(2).await {
            return Err(store_error("upload", &e));
        }
        writer.write(&buf[..n]);
    }
    writer.finish().await.map_err(|e| store_error("upload", &e))?;
    Ok(())
}

/// Reads until `buf` is full or the file ends.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8], path: &Path) -> ApiResult<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..]).await.map_err(|e| io_error("reading", path, &e))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Restores `key` over the volume file (see the module's notes). The volume is `size_mb` now:
/// a backup taken before a resize is grown to it (`e2fsck`, `resize2fs`, on the temporary
/// file), one of a larger volume is refused (the row's size and the quota would lie).
pub(crate) async fn restore(
    cfg: &BackupConfig,
    key: &str,
    volume_file: &Path,
    size_mb: u32,
) -> ApiResult<()> {
    let zst = beside(volume_file, ".restore-tmp.zst");
    let raw = beside(volume_file, ".restore-tmp");
    let result = restore_inner(cfg, key, volume_file, size_mb, &zst, &raw).await;
    remove_all(&[zst, raw]).await;
    result
}

async fn restore_inner(
    cfg: &BackupConfig,
    key: &str,
    volume_file: &Path,
    size_mb: u32,
    zst: &Path,
    raw: &Path,
) -> ApiResult<()> {
    let bucket = bucket(cfg)?;
    let key = Key::from(key);
    tokio::time::timeout(TRANSFER_DEADLINE, fetch(bucket.as_ref(), &key, zst))
        .await
        .map_err(|_| store_error("download", &"took longer than 30 minutes"))??;
    let (from, to) = (zst.to_owned(), raw.to_owned());
    let len = blocking(move || decompress(&from, &to)).await?;
    let want = u64::from(size_mb) << 20;
    if len > want {
        return Err(ApiError::BadRequest(format!(
            "the backup holds a {} MB volume, larger than this one ({size_mb} MB): resize the \
             volume first",
            len >> 20
        )));
    }
    if len < want {
        files::grow(raw, size_mb).await?;
    }
    let (to, file) = (raw.to_owned(), volume_file.to_owned());
    blocking(move || {
        std::fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("syncing", &to, &e))?;
        std::fs::rename(&to, &file).map_err(|e| io_error("replacing the volume", &file, &e))?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("syncing", dir, &e))?;
        }
        Ok(())
    })
    .await
}

async fn fetch(bucket: &dyn ObjectStore, key: &Key, to: &Path) -> ApiResult<()> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let got = bucket.get(key).await.map_err(|e| store_error("download", &e))?;
    let mut stream = got.into_stream();
    let mut out = tokio::fs::File::create(to).await.map_err(|e| io_error("writing", to, &e))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| store_error("download", &e))?;
        out.write_all(&chunk).await.map_err(|e| io_error("writing", to, &e))?;
    }
    out.flush().await.map_err(|e| io_error("writing", to, &e))?;
    Ok(())
}

/// Decompresses `from` into `to` keeping runs of zero blocks as holes, then fsyncs it;
/// answers its length.
fn decompress(from: &Path, to: &Path) -> ApiResult<u64> {
    let input = std::fs::File::open(from).map_err(|e| io_error("reading", from, &e))?;
    let output = std::fs::File::create(to).map_err(|e| io_error("writing", to, &e))?;
    let mut decoder = zstd::stream::Decoder::new(input).map_err(|e| damaged(&e))?;
    let mut sparse = Sparse { file: output, len: 0 };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = decoder.read(&mut buf).map_err(|e| damaged(&e))?;
        if n == 0 {
            break;
        }
        sparse.write_all(&buf[..n]).map_err(|e| io_error("writing", to, &e))?;
    }
    let len = sparse.len;
    sparse.finish().map_err(|e| io_error("writing", to, &e))?;
    Ok(len)
}

fn damaged(e: &dyn std::fmt::Display) -> ApiError {
    store_error("the backup cannot be decompressed", e)
}

/// A writer that seeks over all-zero 4 KiB blocks instead of writing them.
struct Sparse {
    file: std::fs::File,
    len: u64,
}

impl Sparse {
    fn finish(self) -> std::io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_all()
    }
}

impl Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for block in buf.chunks(4096) {
            if block.iter().all(|b| *b == 0) {
                self.file.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                self.file.write_all(block)?;
            }
            self.len += block.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Deletes `key` (a failure is logged and ignored, as v1).
pub(crate) async fn delete(cfg: &BackupConfig, key: &str) {
    let deleted = match bucket(cfg) {
        Ok(bucket) => {
            let key = Key::from(key);
            match tokio::time::timeout(Duration::from_secs(60), bucket.delete(&key)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("took longer than a minute".into()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = deleted {
        tracing::warn!(key, "deleting a backup object: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_v1s_layout() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_796_661_000_123);
        assert_eq!(
            key("usr_1", "data", at),
            "volumes/usr_1/data/2026-12-07T16:30:00.123Z.ext4.zst"
        );
    }

    #[test]
    fn round_trip_keeps_holes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, zst, out) =
            (dir.path().join("v"), dir.path().join("v.zst"), dir.path().join("v.out"));
        let mut data = vec![0u8; 3 << 20];
        data[5000..5010].copy_from_slice(b"0123456789");
        data[(2 << 20) + 1] = 7;
        std::fs::write(&raw, &data).unwrap();
        compress(&raw, &zst).unwrap();
        decompress(&zst, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&out).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks: holes were written");
        // A damaged object is refused before anything is renamed.
        std::fs::write(&zst, b"not zstd at all").unwrap();
        assert!(decompress(&zst, &out).is_err());
    }
}
