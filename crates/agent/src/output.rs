//! Bounded buffers for a buffered exec's output: stdout keeps its beginning, stderr its end.
//!
//! A command that prints too much usually fails at the end, and its error is the last thing on
//! stderr; the beginning of stdout is what a caller parses. So stdout keeps its first bytes (as
//! v1 did) and stderr its last ones ([`TailBuffer`]). Each stream is capped on its own and says
//! whether it was cut.

use std::collections::VecDeque;

use proto::limits::MAX_EXEC_OUTPUT_BYTES;

/// Result of a buffered exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// Output was dropped on either stream (`stdout_truncated || stderr_truncated`).
    pub truncated: bool,
    /// Stdout went past its cap (10 MiB): what is kept is its beginning.
    pub stdout_truncated: bool,
    /// Stderr went past its cap (10 MiB): what is kept is its end, where errors are.
    pub stderr_truncated: bool,
}

impl ExecOutput {
    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// How many more bytes a buffered exec may keep: the caller's memory budget (the daemon's is
/// shared by every buffered exec). Called from the exec's task for each chunk; must not block.
pub trait OutputRoom: Send + Sync {
    /// With `kept` bytes held, how many of `want` more may be kept (at most `want`).
    fn room(&self, kept: usize, want: usize) -> usize;
}

/// No budget beyond the per-stream caps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbounded;

impl OutputRoom for Unbounded {
    fn room(&self, _kept: usize, want: usize) -> usize {
        want
    }
}

/// The last `cap` bytes written to it, in order; remembers whether anything was dropped.
#[derive(Debug, Clone, Default)]
pub struct TailBuffer {
    bytes: VecDeque<u8>,
    cap: usize,
    dropped: bool,
}

impl TailBuffer {
    /// An empty buffer that keeps at most `cap` bytes. Memory grows with what is kept, not with
    /// `cap`.
    pub fn new(cap: usize) -> Self {
        Self { bytes: VecDeque::new(), cap, dropped: false }
    }

    /// Appends `data`, dropping the oldest bytes beyond the cap, and beyond `len() + room`: a
    /// caller whose memory budget is spent passes `room` 0 and the buffer keeps its size while
    /// still ending with the newest bytes.
    pub fn push(&mut self, data: &[u8], room: usize) {
        let limit = self.cap.min(self.bytes.len().saturating_add(room));
        let total = self.bytes.len() + data.len();
        if total > limit {
            self.dropped = true;
        }
        if data.len() >= limit {
            self.bytes.clear();
            self.bytes.extend(&data[data.len() - limit..]);
            return;
        }
        let excess = total.saturating_sub(limit);
        self.bytes.drain(..excess);
        self.bytes.extend(data);
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes `push(data, usize::MAX)` would add to [`len`](Self::len).
    pub fn growth(&self, incoming: usize) -> usize {
        (self.bytes.len() + incoming).min(self.cap) - self.bytes.len()
    }

    /// True once any byte was dropped.
    pub fn dropped(&self) -> bool {
        self.dropped
    }

    /// The kept bytes, oldest first.
    pub fn into_vec(self) -> Vec<u8> {
        self.bytes.into()
    }
}

/// Collects a buffered exec's output within per-stream caps (and, through the `room` arguments,
/// within a caller's memory budget).
#[derive(Debug, Clone)]
pub struct OutputCollector {
    stdout: Vec<u8>,
    stdout_cap: usize,
    stdout_truncated: bool,
    stderr: TailBuffer,
}

impl Default for OutputCollector {
    fn default() -> Self {
        Self::new(MAX_EXEC_OUTPUT_BYTES)
    }
}

impl OutputCollector {
    /// Keeps at most `cap` bytes of each stream.
    pub fn new(cap: usize) -> Self {
        Self {
            stdout: Vec::new(),
            stdout_cap: cap,
            stdout_truncated: false,
            stderr: TailBuffer::new(cap),
        }
    }

    /// Bytes held now, both streams.
    pub fn held(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }

    /// How much [`held`](Self::held) would grow if `incoming` bytes of the stream were kept.
    pub fn growth(&self, stdout: bool, incoming: usize) -> usize {
        if stdout {
            incoming.min(self.stdout_cap.saturating_sub(self.stdout.len()))
        } else {
            self.stderr.growth(incoming)
        }
    }

    /// Keeps what fits of a stdout chunk (its beginning), growing by at most `room` bytes.
    pub fn push_stdout(&mut self, data: &[u8], room: usize) {
        let take = self.growth(true, data.len()).min(room);
        self.stdout_truncated |= take < data.len();
        self.stdout.extend_from_slice(&data[..take]);
    }

    /// Keeps a stderr chunk, dropping the oldest stderr beyond the cap, growing by at most
    /// `room` bytes.
    pub fn push_stderr(&mut self, data: &[u8], room: usize) {
        self.stderr.push(data, room);
    }

    /// The result, with the exit code.
    pub fn finish(self, exit_code: i32) -> ExecOutput {
        let stderr_truncated = self.stderr.dropped();
        ExecOutput {
            stdout: self.stdout,
            stderr: self.stderr.into_vec(),
            exit_code,
            truncated: self.stdout_truncated || stderr_truncated,
            stdout_truncated: self.stdout_truncated,
            stderr_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tail_buffer_keeps_the_last_bytes_in_order() {
        let mut t = TailBuffer::new(5);
        t.push(b"ab", usize::MAX);
        t.push(b"cd", usize::MAX);
        assert!(!t.dropped());
        t.push(b"efg", usize::MAX);
        assert!(t.dropped());
        assert_eq!(t.clone().into_vec(), b"cdefg");
        // A chunk larger than the cap leaves only its own end.
        t.push(b"0123456789", usize::MAX);
        assert_eq!(t.len(), 5);
        assert_eq!(t.into_vec(), b"56789");
    }

    #[test]
    fn tail_buffer_exact_fill_and_empty_pushes_drop_nothing() {
        let mut t = TailBuffer::new(4);
        t.push(b"", usize::MAX);
        t.push(b"abcd", usize::MAX);
        t.push(b"", usize::MAX);
        assert!(!t.dropped());
        assert_eq!(t.growth(3), 0);
        assert_eq!(t.into_vec(), b"abcd");
    }

    #[test]
    fn tail_buffer_without_room_keeps_its_size_and_the_newest_bytes() {
        let mut t = TailBuffer::new(100);
        t.push(b"abc", usize::MAX);
        t.push(b"de", 0);
        assert_eq!(t.len(), 3);
        assert!(t.dropped());
        t.push(b"fgh", 1);
        assert_eq!(t.into_vec(), b"efgh");
    }

    #[test]
    fn tail_buffer_matches_a_naive_model() {
        // Every chunking of a stream leaves the same tail as keeping everything and cutting.
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        for cap in [1, 7, 64, 1000, 5000] {
            for chunk in [1, 3, 64, 999, 4096] {
                let mut t = TailBuffer::new(cap);
                for c in data.chunks(chunk) {
                    t.push(c, usize::MAX);
                }
                let want = &data[data.len().saturating_sub(cap)..];
                assert_eq!(t.dropped(), data.len() > cap, "cap {cap} chunk {chunk}");
                assert_eq!(t.into_vec(), want, "cap {cap} chunk {chunk}");
            }
        }
    }

    #[test]
    fn collector_keeps_stdout_head_and_stderr_tail_per_stream() {
        let mut c = OutputCollector::new(4);
        c.push_stdout(b"abc", usize::MAX);
        c.push_stderr(b"123", usize::MAX);
        c.push_stdout(b"def", usize::MAX);
        c.push_stderr(b"456", usize::MAX);
        assert_eq!(c.held(), 8);
        let out = c.finish(3);
        assert_eq!(out.stdout, b"abcd");
        assert_eq!(out.stderr, b"3456");
        assert!(out.stdout_truncated && out.stderr_truncated && out.truncated);
        assert_eq!(out.exit_code, 3);
    }

    #[test]
    fn collector_respects_room() {
        let mut c = OutputCollector::new(100);
        c.push_stdout(b"abcdef", 2);
        assert_eq!(c.growth(true, 10), 10);
        let out = c.finish(0);
        assert_eq!(out.stdout, b"ab");
        assert!(out.stdout_truncated && !out.stderr_truncated);
    }
}
