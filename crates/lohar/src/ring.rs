//! Fixed-capacity scrollback: the newest `capacity` bytes written, oldest first.
//!
//! No locking inside; a session keeps its ring under its own mutex. Writes are chunked copies,
//! not byte loops, so the ring costs a memcpy per chunk of output. [`StreamRing`] adds which
//! stream (stdout or stderr) each byte came from, for sessions that keep stderr apart.

use std::collections::VecDeque;

/// A circular byte buffer that keeps the most recent `capacity` bytes.
#[derive(Debug)]
pub struct RingBuffer {
    buf: Box<[u8]>,
    /// Next write position.
    head: usize,
    /// True once the buffer has been filled at least once.
    full: bool,
}

impl RingBuffer {
    /// An empty ring of `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { buf: vec![0; capacity.max(1)].into_boxed_slice(), head: 0, full: false }
    }

    /// Bytes currently held.
    pub fn len(&self) -> usize {
        if self.full { self.buf.len() } else { self.head }
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data`, overwriting the oldest bytes once full.
    pub fn write(&mut self, mut data: &[u8]) {
        let cap = self.buf.len();
        if data.len() >= cap {
            // Only the last `cap` bytes can survive; store them as a fresh, full buffer.
            data = &data[data.len() - cap..];
            self.buf.copy_from_slice(data);
            self.head = 0;
            self.full = true;
            return;
        }
        let first = data.len().min(cap - self.head);
        self.buf[self.head..self.head + first].copy_from_slice(&data[..first]);
        let rest = &data[first..];
        self.buf[..rest.len()].copy_from_slice(rest);
        let end = self.head + data.len();
        if end >= cap {
            self.full = true;
        }
        self.head = end % cap;
    }

    /// The held bytes, oldest first.
    pub fn snapshot(&self) -> Vec<u8> {
        if !self.full {
            return self.buf[..self.head].to_vec();
        }
        let mut out = Vec::with_capacity(self.buf.len());
        out.extend_from_slice(&self.buf[self.head..]);
        out.extend_from_slice(&self.buf[..self.head]);
        out
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The child's stdout (or its terminal).
    Out,
    /// The child's stderr (sessions that keep it apart).
    Err,
}

/// A [`RingBuffer`] that remembers which stream each held byte came from, as runs of
/// `(stream, length)` covering the held bytes oldest first. Consecutive writes of one stream
/// share a run, so interleaving, not volume, is what adds runs; there are never more runs than
/// held bytes.
#[derive(Debug)]
pub struct StreamRing {
    bytes: RingBuffer,
    runs: VecDeque<(Stream, usize)>,
    /// Sum of the runs' lengths; equals `bytes.len()` after every write.
    total: usize,
}

impl StreamRing {
    /// An empty ring of `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { bytes: RingBuffer::new(capacity), runs: VecDeque::new(), total: 0 }
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `data` from `stream`, overwriting the oldest bytes once full.
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes.write(data);
        match self.runs.back_mut() {
            Some((last, len)) if *last == stream => *len += data.len(),
            _ => self.runs.push_back((stream, data.len())),
        }
        self.total += data.len();
        // Drop what the ring overwrote, oldest runs first.
        let mut excess = self.total - self.bytes.len();
        while excess > 0 {
            let Some(front) = self.runs.front_mut() else { break };
            if front.1 <= excess {
                excess -= front.1;
                self.total -= front.1;
                self.runs.pop_front();
            } else {
                front.1 -= excess;
                self.total -= excess;
                excess = 0;
            }
        }
    }

    /// The held bytes, oldest first, whatever stream they came from.
    pub fn merged(&self) -> Vec<u8> {
        self.bytes.snapshot()
    }

    /// The held bytes as runs of one stream each, oldest first.
    pub fn runs(&self) -> Vec<(Stream, Vec<u8>)> {
        let all = self.bytes.snapshot();
        let mut at = 0;
        self.runs
            .iter()
            .map(|(stream, len)| {
                let run = all[at..at + len].to_vec();
                at += len;
                (*stream, run)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{RingBuffer, Stream, StreamRing};

    #[test]
    fn stream_ring_keeps_the_stream_of_every_byte() {
        type Runs<'a> = &'a [(Stream, &'a str)];
        let rows: [(&str, usize, Runs<'_>, Runs<'_>); 5] = [
            (
                "one stream is one run",
                16,
                &[(Stream::Out, "ab"), (Stream::Out, "cd")],
                &[(Stream::Out, "abcd")],
            ),
            (
                "alternating streams keep their order",
                16,
                &[(Stream::Out, "o1"), (Stream::Err, "e1"), (Stream::Out, "o2")],
                &[(Stream::Out, "o1"), (Stream::Err, "e1"), (Stream::Out, "o2")],
            ),
            (
                "an overwritten run shrinks from the front",
                6,
                &[(Stream::Out, "1234"), (Stream::Err, "abcd")],
                &[(Stream::Out, "34"), (Stream::Err, "abcd")],
            ),
            (
                "a run overwritten whole is gone",
                4,
                &[(Stream::Out, "12"), (Stream::Err, "ab"), (Stream::Out, "xyz")],
                &[(Stream::Err, "b"), (Stream::Out, "xyz")],
            ),
            (
                "a write larger than the ring keeps its tail",
                3,
                &[(Stream::Err, "e"), (Stream::Out, "abcdef")],
                &[(Stream::Out, "def")],
            ),
        ];
        for (name, cap, writes, want) in rows {
            let mut ring = StreamRing::new(cap);
            for (stream, data) in writes {
                ring.write(*stream, data.as_bytes());
            }
            let got: Vec<(Stream, String)> =
                ring.runs().into_iter().map(|(s, b)| (s, String::from_utf8(b).unwrap())).collect();
            let want: Vec<(Stream, String)> =
                want.iter().map(|(s, d)| (*s, (*d).to_owned())).collect();
            assert_eq!(got, want, "{name}");
            let merged: String = want.iter().map(|(_, d)| d.as_str()).collect();
            assert_eq!(ring.merged(), merged.as_bytes(), "{name}");
        }
    }

    #[test]
    fn stream_ring_matches_a_naive_model() {
        for cap in [1usize, 2, 5, 64] {
            let mut ring = StreamRing::new(cap);
            let mut model: Vec<(Stream, u8)> = Vec::new();
            for i in 0..400usize {
                let stream = if (i * 31) % 3 == 0 { Stream::Err } else { Stream::Out };
                let chunk: Vec<u8> =
                    (0..(i * 7919) % (cap * 2 + 2)).map(|j| (i + j) as u8).collect();
                ring.write(stream, &chunk);
                model.extend(chunk.iter().map(|b| (stream, *b)));
                let keep = model.len().min(cap);
                let want = &model[model.len() - keep..];
                let got: Vec<(Stream, u8)> = ring
                    .runs()
                    .into_iter()
                    .flat_map(|(s, b)| b.into_iter().map(move |x| (s, x)))
                    .collect();
                assert_eq!(got, want, "cap {cap} step {i}");
            }
        }
    }

    #[test]
    fn empty_ring_snapshots_nothing() {
        let ring = RingBuffer::new(8);
        assert!(ring.is_empty());
        assert_eq!(ring.snapshot(), b"");
    }

    #[test]
    fn writes_below_capacity_come_back_in_order() {
        let mut ring = RingBuffer::new(8);
        ring.write(b"abc");
        ring.write(b"de");
        assert_eq!(ring.snapshot(), b"abcde");
        assert_eq!(ring.len(), 5);
    }

    #[test]
    fn exact_fill_then_wrap_keeps_newest_bytes_oldest_first() {
        let mut ring = RingBuffer::new(8);
        ring.write(b"12345678");
        assert_eq!(ring.snapshot(), b"12345678");
        ring.write(b"9");
        assert_eq!(ring.snapshot(), b"23456789");
        ring.write(b"hello world!");
        assert_eq!(ring.snapshot(), b"o world!");
    }

    #[test]
    fn overflow_across_the_seam() {
        let mut ring = RingBuffer::new(8);
        ring.write(b"hello");
        ring.write(b" world!");
        assert_eq!(ring.snapshot(), b"o world!");
        assert_eq!(ring.len(), 8);
    }

    #[test]
    fn oversized_write_keeps_its_tail() {
        let mut ring = RingBuffer::new(4);
        ring.write(b"xy");
        ring.write(b"abcdefgh");
        assert_eq!(ring.snapshot(), b"efgh");
        ring.write(b"i");
        assert_eq!(ring.snapshot(), b"fghi");
    }

    #[test]
    fn matches_a_naive_model_for_many_write_patterns() {
        for cap in [1usize, 2, 3, 7, 64] {
            let mut ring = RingBuffer::new(cap);
            let mut model: Vec<u8> = Vec::new();
            for i in 0..500usize {
                let chunk: Vec<u8> =
                    (0..(i * 7919) % (cap * 2 + 3)).map(|j| (i + j) as u8).collect();
                ring.write(&chunk);
                model.extend_from_slice(&chunk);
                let keep = model.len().min(cap);
                assert_eq!(ring.snapshot(), model[model.len() - keep..], "cap {cap} step {i}");
            }
        }
    }

    #[test]
    fn scrollback_of_86k_output_is_exactly_64k_and_loses_the_oldest_lines() {
        let mut ring = RingBuffer::new(64 * 1024);
        let mut all = Vec::new();
        for i in 0..8000 {
            let line = format!("line {i:05}\n");
            ring.write(line.as_bytes());
            all.extend_from_slice(line.as_bytes());
        }
        assert!(all.len() > 86_000);
        let snap = ring.snapshot();
        assert_eq!(snap.len(), 65_536);
        assert_eq!(snap, all[all.len() - 65_536..]);
        assert!(!String::from_utf8_lossy(&snap).contains("line 00000"));
    }

    #[test]
    fn many_sessions_with_concurrent_access() {
        use std::sync::{Arc, Mutex};
        let rings: Vec<_> = (0..16).map(|_| Arc::new(Mutex::new(RingBuffer::new(1024)))).collect();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let rings = rings.clone();
                std::thread::spawn(move || {
                    for i in 0..2000usize {
                        let ring = &rings[(t + i) % rings.len()];
                        ring.lock().unwrap().write(&[t as u8; 10]);
                        if i % 100 == 0 {
                            let snap = ring.lock().unwrap().snapshot();
                            // Every write is 10 bytes of one writer's id, so the ring always
                            // holds whole writes except possibly a cut-off oldest one.
                            assert!(snap.len() <= 1024);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: usize = rings.iter().map(|r| r.lock().unwrap().len()).sum();
        assert_eq!(total, 16 * 1024);
        for ring in &rings {
            let snap = ring.lock().unwrap().snapshot();
            // 1024 = 102 whole writes + 4 bytes of the oldest surviving one.
            for chunk in snap[4..].chunks(10) {
                assert!(chunk.iter().all(|b| *b == chunk[0]), "torn write in {chunk:?}");
            }
        }
    }
}
