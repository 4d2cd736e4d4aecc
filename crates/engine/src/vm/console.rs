//! The guest's serial console: a log the guest writes, kept bounded, and its tail for error
//! messages.

use std::path::PathBuf;

use crate::layout::SandboxFiles;

/// The serial console is rotated once it passes this size (the guest writes it, so it must
/// not grow without bound): the newest part moves to `serial.log.1`, the log starts again.
pub const SERIAL_LOG_CAP: u64 = 1024 * 1024;
/// How much of the console an error message carries.
pub(super) const CONSOLE_TAIL: u64 = 16 * 1024;

/// The last `max` bytes of the serial console (the rotated generation included).
pub fn console_tail(files: &SandboxFiles, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let tail = |path: PathBuf, max: u64| -> Vec<u8> {
        let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(len.saturating_sub(max))).is_ok() {
            let _ = file.take(max).read_to_end(&mut buf);
        }
        buf
    };
    let newest = tail(files.serial_log(), max);
    let rest = max.saturating_sub(newest.len() as u64);
    let mut text = if rest > 0 { tail(files.serial_log_old(), rest) } else { Vec::new() };
    text.extend_from_slice(&newest);
    String::from_utf8_lossy(&text).into_owned()
}

/// Keeps the console log bounded: past [`SERIAL_LOG_CAP`], its newest 64 KiB move to the old
/// generation and the log is truncated (QEMU appends, so it goes on writing at the new end).
pub fn cap_console(files: &SandboxFiles) -> std::io::Result<bool> {
    let len = std::fs::metadata(files.serial_log()).map(|m| m.len()).unwrap_or(0);
    if len <= SERIAL_LOG_CAP {
        return Ok(false);
    }
    std::fs::write(
        files.serial_log_old(),
        console_tail(&SandboxFiles::new(files.dir()), 64 * 1024),
    )?;
    std::fs::OpenOptions::new().write(true).open(files.serial_log())?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_capped_and_its_tail_survives() {
        let dir = tempfile::tempdir().unwrap();
        let files = SandboxFiles::new(dir.path());
        std::fs::write(files.serial_log(), b"boot line\n").unwrap();
        assert!(!cap_console(&files).unwrap());
        let big = vec![b'x'; SERIAL_LOG_CAP as usize + 10];
        let mut content = big.clone();
        content.extend_from_slice(b"last words\n");
        std::fs::write(files.serial_log(), &content).unwrap();
        assert!(cap_console(&files).unwrap());
        assert_eq!(std::fs::metadata(files.serial_log()).unwrap().len(), 0);
        assert!(std::fs::metadata(files.serial_log_old()).unwrap().len() <= 64 * 1024);
        assert!(console_tail(&files, 100).ends_with("last words\n"));
    }
}
