#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Frame encoding, reading, `try_parse`, limits, exactness and concurrency.
//!
//! Covers v1's `frame_test.go` inventory (spec §5.1) plus the cases v1 left implicit: partial
//! headers of every length, "invalid vs need more" in `try_parse`, and allocation before
//! validation.

use std::io::{self, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use proto::limits::{HEADER_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, PAYLOAD_OFFSET};
use proto::messages::ExecRequest;
use proto::payload::{decode_exit, encode_exit};
use proto::{
    Frame, FrameError, FrameType, ParsedFrame, encode_frame, read_frame, send_json, try_parse,
    write_frame,
};

/// Writes a frame into a fresh buffer and reads it back, asserting the buffer is fully consumed.
fn round_trip(kind: FrameType, payload: &[u8]) -> Frame {
    let mut buf = Vec::new();
    write_frame(&mut buf, kind, payload).unwrap();
    assert_eq!(buf.len(), PAYLOAD_OFFSET + payload.len());
    let mut cursor = Cursor::new(&buf[..]);
    let frame = read_frame(&mut cursor).unwrap().expect("one frame");
    assert_eq!(cursor.position() as usize, buf.len(), "frame not fully consumed");
    assert!(read_frame(&mut cursor).unwrap().is_none(), "expected clean EOF after the frame");
    frame
}

/// A deterministic, non-constant payload so a shifted or truncated copy is noticed.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// A header claiming `len` bytes of type + payload.
fn header(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

/// Hands out `data`, then panics if asked for anything more: proves a reader never reads past a
/// point (for example, never tries to read the body of an oversize frame).
struct PanicAfter<'a> {
    data: &'a [u8],
}

impl Read for PanicAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(!self.data.is_empty(), "read_frame read past the header of an invalid frame");
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Hands out one byte per `read` call, with an `Interrupted` error before each byte.
struct Trickle<'a> {
    data: &'a [u8],
    interrupt_next: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupt_next {
            self.interrupt_next = false;
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        self.interrupt_next = true;
        if self.data.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.data[0];
        self.data = &self.data[1..];
        Ok(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and exact bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_empty_payload() {
    let frame = round_trip(FrameType::KILL, &[]);
    assert_eq!(frame.kind, FrameType::KILL);
    assert!(frame.payload.is_empty());
}

#[test]
fn round_trip_one_byte_payload() {
    let frame = round_trip(FrameType::STDIN, b"x");
    assert_eq!(frame.kind, FrameType::STDIN);
    assert_eq!(frame.payload, b"x");
}

#[test]
fn round_trip_64_kib_payload() {
    let payload = pattern(64 * 1024);
    let frame = round_trip(FrameType::STDOUT, &payload);
    assert_eq!(frame.kind, FrameType::STDOUT);
    assert_eq!(frame.payload, payload);
}

#[test]
fn round_trip_largest_legal_payload() {
    assert_eq!(MAX_PAYLOAD_LEN, 1_048_575);
    let payload = pattern(MAX_PAYLOAD_LEN);
    let mut buf = Vec::new();
    write_frame(&mut buf, FrameType::STDOUT, &payload).unwrap();
    // Largest wire frame: 4 + 1 + 1,048,575 = 1,048,580 bytes, LEN = 1,048,576 = MAX_FRAME_LEN.
    assert_eq!(buf.len(), 1_048_580);
    assert_eq!(buf[..4], header(MAX_FRAME_LEN as u32));
    let frame = round_trip(FrameType::STDOUT, &payload);
    assert_eq!(frame.payload.len(), MAX_PAYLOAD_LEN);
    assert_eq!(frame.payload, payload);
}

#[test]
fn every_known_frame_type_round_trips() {
    for kind in FrameType::ALL {
        let payload = format!("payload of {kind:?}");
        let frame = round_trip(kind, payload.as_bytes());
        assert_eq!(frame.kind, kind);
        assert_eq!(frame.payload, payload.as_bytes());
        assert_eq!(frame.text(), payload);
    }
}

#[test]
fn unknown_frame_types_round_trip() {
    for byte in [0x00, 0x08, 0x0f, 0x12, 0x62, 0x7f, 0xfe, 0xff] {
        let kind = FrameType(byte);
        assert!(kind.name().is_none(), "{kind} should be unassigned");
        let frame = round_trip(kind, b"?");
        assert_eq!(frame.kind, kind);
    }
}

#[test]
fn nil_and_empty_payload_encode_identically() {
    let nil: &[u8] = &[];
    let empty = Vec::<u8>::new();
    let with_capacity = Vec::<u8>::with_capacity(64);
    let a = encode_frame(FrameType::EXEC_LIST_REQ, nil).unwrap();
    let b = encode_frame(FrameType::EXEC_LIST_REQ, &empty).unwrap();
    let c = encode_frame(FrameType::EXEC_LIST_REQ, &with_capacity).unwrap();
    let mut d = Vec::new();
    write_frame(&mut d, FrameType::EXEC_LIST_REQ, &[]).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
    assert_eq!(a, [0x00, 0x00, 0x00, 0x01, 0x30]);
}

#[test]
fn empty_exit_frame_exact_bytes() {
    // LEN counts the type byte and the payload: an empty EXIT has LEN 1.
    let bytes = encode_frame(FrameType::EXIT, &[]).unwrap();
    assert_eq!(bytes, [0x00, 0x00, 0x00, 0x01, 0x05]);
}

#[test]
fn exit_42_frame_exact_bytes() {
    let bytes = encode_frame(FrameType::EXIT, &encode_exit(42)).unwrap();
    assert_eq!(bytes, [0x00, 0x00, 0x00, 0x05, 0x05, 0x00, 0x00, 0x00, 0x2a]);
}

#[test]
fn stdout_text_frame_exact_bytes() {
    let bytes = encode_frame(FrameType::STDOUT, b"hi\n").unwrap();
    assert_eq!(bytes, [0x00, 0x00, 0x00, 0x04, 0x02, b'h', b'i', b'\n']);
}

#[test]
fn length_header_is_big_endian() {
    let payload = pattern(0x0102 - 1);
    let bytes = encode_frame(FrameType::STDIN, &payload).unwrap();
    assert_eq!(bytes[..5], [0x00, 0x00, 0x01, 0x02, 0x01]);
}

#[test]
fn write_frame_writes_exactly_what_encode_frame_returns() {
    let payload = pattern(300);
    let mut written = Vec::new();
    write_frame(&mut written, FrameType::FILE_WRITE_REQ, &payload).unwrap();
    assert_eq!(written, encode_frame(FrameType::FILE_WRITE_REQ, &payload).unwrap());
}

#[test]
fn write_frame_works_through_dyn_write() {
    let mut buf = Vec::new();
    let w: &mut dyn Write = &mut buf;
    write_frame(w, FrameType::KILL, &[]).unwrap();
    assert_eq!(buf, [0, 0, 0, 1, 0x07]);
}

// ---------------------------------------------------------------------------------------------
// EOF handling
// ---------------------------------------------------------------------------------------------

#[test]
fn read_empty_reader_is_clean_eof() {
    let mut r = Cursor::new(Vec::<u8>::new());
    assert!(read_frame(&mut r).unwrap().is_none());
    // And again: EOF is sticky, not an error the second time.
    assert!(read_frame(&mut r).unwrap().is_none());
}

#[test]
fn read_empty_reader_through_dyn_read_is_clean_eof() {
    let mut empty = io::empty();
    let r: &mut dyn Read = &mut empty;
    assert!(read_frame(r).unwrap().is_none());
}

fn assert_unexpected_eof(bytes: &[u8]) {
    let result = read_frame(&mut Cursor::new(bytes));
    assert!(
        matches!(result, Err(FrameError::UnexpectedEof)),
        "{} bytes {bytes:02x?}: expected UnexpectedEof, got {result:?}",
        bytes.len()
    );
}

#[test]
fn partial_header_of_1_byte_is_unexpected_eof() {
    assert_unexpected_eof(&[0x00]);
}

#[test]
fn partial_header_of_2_bytes_is_unexpected_eof() {
    assert_unexpected_eof(&[0x00, 0x00]);
}

#[test]
fn partial_header_of_3_bytes_is_unexpected_eof() {
    assert_unexpected_eof(&[0x00, 0x00, 0x00]);
}

#[test]
fn header_without_type_byte_is_unexpected_eof() {
    assert_unexpected_eof(&header(1));
    assert_unexpected_eof(&header(10));
}

#[test]
fn short_body_is_unexpected_eof() {
    // Header says 10 (type + 9 payload bytes); only the type and 2 payload bytes follow.
    let mut bytes = header(10).to_vec();
    bytes.extend_from_slice(&[0x02, b'a', b'b']);
    assert_eq!(bytes.len(), 4 + 3);
    assert_unexpected_eof(&bytes);
}

#[test]
fn body_one_byte_short_is_unexpected_eof() {
    let mut bytes = encode_frame(FrameType::STDOUT, &pattern(100)).unwrap();
    bytes.pop();
    assert_unexpected_eof(&bytes);
}

#[test]
fn unexpected_eof_error_message() {
    assert_eq!(FrameError::UnexpectedEof.to_string(), "unexpected EOF inside a frame");
}

#[test]
fn io_errors_propagate() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
        }
    }
    match read_frame(&mut Broken) {
        Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected Io error, got {other:?}"),
    }

    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    match write_frame(&mut Full, FrameType::STDIN, b"x") {
        Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[test]
fn reader_that_trickles_one_byte_per_call_with_interrupts() {
    let mut bytes = encode_frame(FrameType::STDOUT, b"slowly").unwrap();
    bytes.extend(encode_frame(FrameType::EXIT, &encode_exit(3)).unwrap());
    let mut r = Trickle { data: &bytes, interrupt_next: true };
    let a = read_frame(&mut r).unwrap().unwrap();
    assert_eq!((a.kind, a.payload.as_slice()), (FrameType::STDOUT, &b"slowly"[..]));
    let b = read_frame(&mut r).unwrap().unwrap();
    assert_eq!(b.kind, FrameType::EXIT);
    assert_eq!(decode_exit(&b.payload), Ok(3));
    assert!(read_frame(&mut r).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Size limits
// ---------------------------------------------------------------------------------------------

#[test]
fn write_rejects_payload_of_1_mib_and_writes_nothing() {
    // A 1,048,576-byte payload makes LEN = 1,048,577 = MAX_FRAME_LEN + 1.
    let payload = vec![0xaa; MAX_FRAME_LEN];
    let mut out = Vec::new();
    let err = write_frame(&mut out, FrameType::STDOUT, &payload).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len: 1_048_577 }), "{err:?}");
    assert_eq!(err.to_string(), "frame too large: 1048577 > 1048576");
    assert!(out.is_empty(), "an oversize frame must write nothing, wrote {} bytes", out.len());
}

#[test]
fn write_oversize_frame_never_calls_the_writer() {
    struct MustNotWrite;
    impl Write for MustNotWrite {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            panic!("write_frame wrote part of an oversize frame");
        }
        fn flush(&mut self) -> io::Result<()> {
            panic!("write_frame flushed an oversize frame");
        }
    }
    let payload = vec![0; MAX_FRAME_LEN + 100];
    let err = write_frame(&mut MustNotWrite, FrameType::STDIN, &payload).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME_LEN + 101));
}

#[test]
fn encode_rejects_payload_of_1_mib() {
    let err = encode_frame(FrameType::STDOUT, &vec![0; MAX_FRAME_LEN]).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME_LEN + 1));
}

#[test]
fn send_json_rejects_oversize_value_and_writes_nothing() {
    let huge = "x".repeat(MAX_FRAME_LEN);
    let mut out = Vec::new();
    let err = send_json(&mut out, FrameType::STDOUT, &huge).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
    assert!(out.is_empty());
}

#[test]
fn read_rejects_2_mib_header_before_reading_the_body() {
    let head = header(2 * 1024 * 1024);
    let err = read_frame(&mut PanicAfter { data: &head }).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len: 2_097_152 }), "{err:?}");
}

#[test]
fn read_rejects_max_plus_one_header_before_reading_the_body() {
    let head = header(MAX_FRAME_LEN as u32 + 1);
    let err = read_frame(&mut PanicAfter { data: &head }).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME_LEN + 1), "{err:?}");
}

#[test]
fn read_rejects_u32_max_header_before_reading_the_body() {
    let head = header(u32::MAX);
    let err = read_frame(&mut PanicAfter { data: &head }).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len } if len == u32::MAX as usize), "{err:?}");
}

#[test]
fn read_oversize_header_consumes_exactly_4_bytes() {
    let mut bytes = header(MAX_FRAME_LEN as u32 + 1).to_vec();
    bytes.extend(pattern(4096));
    let mut cursor = Cursor::new(&bytes[..]);
    assert!(matches!(read_frame(&mut cursor), Err(FrameError::TooLarge { .. })));
    assert_eq!(cursor.position(), HEADER_LEN as u64);
}

#[test]
fn read_accepts_header_of_exactly_max() {
    // LEN = MAX_FRAME_LEN is legal; the body is missing, so this is EOF, not TooLarge.
    let head = header(MAX_FRAME_LEN as u32);
    assert!(matches!(read_frame(&mut Cursor::new(head)), Err(FrameError::UnexpectedEof)));
}

#[test]
fn read_zero_length_header_is_an_error_without_hanging() {
    let head = header(0);
    // PanicAfter proves nothing past the 4 header bytes is read (no wait for a type byte).
    let err = read_frame(&mut PanicAfter { data: &head }).unwrap_err();
    assert!(matches!(err, FrameError::ZeroLength), "{err:?}");
    assert_eq!(err.to_string(), "invalid frame: length is 0");

    // Same with a live socket that never sends more: must return, not block.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.write_all(&head).unwrap();
    assert!(matches!(read_frame(&mut b), Err(FrameError::ZeroLength)));
}

// ---------------------------------------------------------------------------------------------
// try_parse
// ---------------------------------------------------------------------------------------------

#[test]
fn try_parse_fewer_than_4_bytes_needs_more() {
    let full = encode_frame(FrameType::STDOUT, b"abc").unwrap();
    for n in 0..HEADER_LEN {
        assert_eq!(try_parse(&full[..n]).unwrap(), None, "{n} bytes");
    }
}

#[test]
fn try_parse_valid_header_alone_needs_more() {
    assert_eq!(try_parse(&header(1)).unwrap(), None);
    assert_eq!(try_parse(&header(10)).unwrap(), None);
    assert_eq!(try_parse(&header(MAX_FRAME_LEN as u32)).unwrap(), None);
}

#[test]
fn try_parse_complete_frame() {
    // v1's case: a 6-byte frame, type STDOUT, 1 payload byte.
    let bytes = encode_frame(FrameType::STDOUT, b"z").unwrap();
    assert_eq!(bytes.len(), 6);
    let parsed = try_parse(&bytes).unwrap().unwrap();
    assert_eq!(parsed, ParsedFrame { kind: FrameType::STDOUT, payload: b"z", total_len: 6 });

    let empty = encode_frame(FrameType::KILL, &[]).unwrap();
    let parsed = try_parse(&empty).unwrap().unwrap();
    assert_eq!(parsed, ParsedFrame { kind: FrameType::KILL, payload: b"", total_len: 5 });
}

#[test]
fn try_parse_ignores_trailing_bytes() {
    let mut bytes = encode_frame(FrameType::ERROR, b"boom").unwrap();
    let frame_len = bytes.len();
    bytes.extend_from_slice(b"\xff\xff\xff\xff junk that is not a frame");
    let parsed = try_parse(&bytes).unwrap().unwrap();
    assert_eq!(parsed.kind, FrameType::ERROR);
    assert_eq!(parsed.payload, b"boom");
    assert_eq!(parsed.total_len, frame_len);
    // The rest of the buffer parses (and fails) on its own.
    assert!(try_parse(&bytes[parsed.total_len..]).is_err());
}

#[test]
fn try_parse_partial_body_needs_more() {
    // Header says 10 with only 6 bytes in the buffer, as in v1's test.
    let mut bytes = header(10).to_vec();
    bytes.extend_from_slice(&[0x02, b'a']);
    assert_eq!(bytes.len(), 6);
    assert_eq!(try_parse(&bytes).unwrap(), None);

    let full = encode_frame(FrameType::STDOUT, &pattern(50)).unwrap();
    for n in HEADER_LEN..full.len() {
        assert_eq!(try_parse(&full[..n]).unwrap(), None, "{n} of {} bytes", full.len());
    }
    assert!(try_parse(&full).unwrap().is_some());
}

#[test]
fn try_parse_zero_length_is_invalid() {
    assert!(matches!(try_parse(&header(0)), Err(FrameError::ZeroLength)));
    let mut bytes = header(0).to_vec();
    bytes.extend_from_slice(&encode_frame(FrameType::STDOUT, b"next").unwrap());
    assert!(matches!(try_parse(&bytes), Err(FrameError::ZeroLength)));
}

#[test]
fn try_parse_oversize_length_is_invalid_even_with_only_the_header() {
    // The "invalid vs need more" distinction v1 could not make: 4 bytes are enough to know that
    // no further input can ever complete this frame.
    let only_header = header(MAX_FRAME_LEN as u32 + 1);
    assert!(matches!(
        try_parse(&only_header),
        Err(FrameError::TooLarge { len }) if len == MAX_FRAME_LEN + 1
    ));
    assert!(matches!(try_parse(&header(u32::MAX)), Err(FrameError::TooLarge { .. })));
    let mut longer = only_header.to_vec();
    longer.extend(pattern(100));
    assert!(matches!(try_parse(&longer), Err(FrameError::TooLarge { .. })));
}

#[test]
fn try_parse_largest_legal_frame() {
    let payload = pattern(MAX_PAYLOAD_LEN);
    let bytes = encode_frame(FrameType::STDOUT, &payload).unwrap();
    let parsed = try_parse(&bytes).unwrap().unwrap();
    assert_eq!(parsed.total_len, HEADER_LEN + MAX_FRAME_LEN);
    assert_eq!(parsed.payload, &payload[..]);
    assert_eq!(try_parse(&bytes[..bytes.len() - 1]).unwrap(), None);
}

#[test]
fn try_parse_walks_a_buffer_of_frames() {
    let mut buf = Vec::new();
    for (i, kind) in FrameType::ALL.iter().enumerate() {
        write_frame(&mut buf, *kind, &pattern(i)).unwrap();
    }
    let mut rest = &buf[..];
    for (i, kind) in FrameType::ALL.iter().enumerate() {
        let parsed = try_parse(rest).unwrap().unwrap();
        assert_eq!(parsed.kind, *kind);
        assert_eq!(parsed.payload, &pattern(i)[..]);
        rest = &rest[parsed.total_len..];
    }
    assert!(rest.is_empty());
    assert_eq!(try_parse(rest).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Read exactness and sequences
// ---------------------------------------------------------------------------------------------

#[test]
fn read_leaves_bytes_after_the_frame_untouched() {
    // The forward port: a FWD_RESP frame, then raw tunnel bytes that are not frames.
    let raw = b"\x00\x00\x00\x00HTTP/1.1 200 OK\r\n\r\n";
    let mut bytes = encode_frame(FrameType::FWD_RESP, br#"{"status":"ok"}"#).unwrap();
    let frame_len = bytes.len();
    bytes.extend_from_slice(raw);

    let mut cursor = Cursor::new(&bytes[..]);
    let frame = read_frame(&mut cursor).unwrap().unwrap();
    assert_eq!(frame.kind, FrameType::FWD_RESP);
    assert_eq!(cursor.position() as usize, frame_len);
    let mut rest = Vec::new();
    cursor.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, raw);
}

#[test]
fn read_leaves_bytes_after_the_frame_untouched_on_a_socket() {
    let (mut host, mut guest) = UnixStream::pair().unwrap();
    write_frame(&mut host, FrameType::FWD_REQ, br#"{"port":8080}"#).unwrap();
    host.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    drop(host);
    let frame = read_frame(&mut guest).unwrap().unwrap();
    assert_eq!(frame.kind, FrameType::FWD_REQ);
    let mut rest = Vec::new();
    guest.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"GET / HTTP/1.0\r\n\r\n");
}

#[test]
fn ten_sequential_frames_read_back_in_order_then_eof() {
    let frames: Vec<(FrameType, Vec<u8>)> = vec![
        (FrameType::AUTH, b"0123456789abcdef0123456789abcdef".to_vec()),
        (FrameType::EXEC_REQ, br#"{"argv":["cat"]}"#.to_vec()),
        (FrameType::STDIN, b"line one\n".to_vec()),
        (FrameType::RESIZE, vec![0, 24, 0, 80]),
        (FrameType::STDIN, Vec::new()),
        (FrameType::STDOUT, b"line one\n".to_vec()),
        (FrameType::STDERR, b"warning\n".to_vec()),
        (FrameType::KILL, Vec::new()),
        (FrameType::ERROR, b"session not found".to_vec()),
        (FrameType::EXIT, encode_exit(137).to_vec()),
    ];
    let mut buf = Vec::new();
    for (kind, payload) in &frames {
        write_frame(&mut buf, *kind, payload).unwrap();
    }
    let mut cursor = Cursor::new(&buf[..]);
    for (i, (kind, payload)) in frames.iter().enumerate() {
        let frame = read_frame(&mut cursor).unwrap().unwrap_or_else(|| panic!("frame {i}"));
        assert_eq!(frame.kind, *kind, "frame {i}");
        assert_eq!(&frame.payload, payload, "frame {i}");
    }
    assert!(read_frame(&mut cursor).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Concurrency and duplex
// ---------------------------------------------------------------------------------------------

/// A writer shared between threads that takes the lock once per `write` call, like a stream
/// behind a mutex. `write_frame` issues one `write_all` of the whole frame, and `Vec::write`
/// accepts all of it, so each frame is one locked append.
struct LockedWriter<'a>(&'a Mutex<Vec<u8>>);

impl Write for LockedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn concurrent_writers_never_interleave_frames() {
    const THREADS: u8 = 2;
    const PER_THREAD: u32 = 1000;
    let shared = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..THREADS {
            let shared = &shared;
            s.spawn(move || {
                let mut w = LockedWriter(shared);
                for seq in 0..PER_THREAD {
                    // [thread, seq (BE u32), filler of varying length].
                    let mut payload = vec![t];
                    payload.extend_from_slice(&seq.to_be_bytes());
                    payload.extend(std::iter::repeat_n(t ^ 0x5a, (seq % 97) as usize));
                    write_frame(&mut w, FrameType::STDOUT, &payload).unwrap();
                }
            });
        }
    });

    let buf = shared.into_inner().unwrap();
    let mut cursor = Cursor::new(&buf[..]);
    let mut next = [0u32; THREADS as usize];
    let mut total = 0;
    while let Some(frame) = read_frame(&mut cursor).unwrap() {
        assert_eq!(frame.kind, FrameType::STDOUT);
        let t = frame.payload[0];
        let seq = u32::from_be_bytes(frame.payload[1..5].try_into().unwrap());
        assert!(t < THREADS, "bad thread id {t}");
        assert_eq!(seq, next[t as usize], "thread {t} out of order");
        let filler = &frame.payload[5..];
        assert_eq!(filler.len(), (seq % 97) as usize);
        assert!(filler.iter().all(|b| *b == t ^ 0x5a), "frame of thread {t} seq {seq} mixed");
        next[t as usize] += 1;
        total += 1;
    }
    assert_eq!(total, u32::from(THREADS) * PER_THREAD);
    assert_eq!(next, [PER_THREAD; THREADS as usize]);
    assert_eq!(cursor.position() as usize, buf.len(), "buffer not fully consumed");
}

#[test]
fn duplex_exec_over_a_unix_socket_pair() {
    let (mut host, mut guest) = UnixStream::pair().unwrap();

    let guest_thread = thread::spawn(move || {
        let frame = read_frame(&mut guest).unwrap().expect("an EXEC_REQ");
        assert_eq!(frame.kind, FrameType::EXEC_REQ);
        let req: ExecRequest = frame.json().unwrap();
        assert_eq!(req.argv, ["echo", "hi"]);
        write_frame(&mut guest, FrameType::STDOUT, b"hi\n").unwrap();
        write_frame(&mut guest, FrameType::EXIT, &encode_exit(42)).unwrap();
        // The host closes after EXIT; the guest then sees a clean EOF.
        assert!(read_frame(&mut guest).unwrap().is_none());
    });

    send_json(&mut host, FrameType::EXEC_REQ, &ExecRequest::command(["echo", "hi"])).unwrap();
    let stdout = read_frame(&mut host).unwrap().unwrap();
    assert_eq!(stdout.kind, FrameType::STDOUT);
    assert_eq!(stdout.payload, b"hi\n");
    let exit = read_frame(&mut host).unwrap().unwrap();
    assert_eq!(exit.kind, FrameType::EXIT);
    assert_eq!(decode_exit(&exit.payload), Ok(42));
    drop(host);
    guest_thread.join().unwrap();
}

#[test]
fn duplex_concurrent_streams_in_both_directions() {
    // Both ends write 200 frames while the other reads them, so neither side can rely on the
    // socket buffer holding a whole conversation.
    const N: u32 = 200;
    let (host, guest) = UnixStream::pair().unwrap();
    let mut host_r = host.try_clone().unwrap();
    let mut guest_w = guest.try_clone().unwrap();
    let (mut host_w, mut guest_r) = (host, guest);

    thread::scope(|s| {
        s.spawn(move || {
            for i in 0..N {
                write_frame(&mut host_w, FrameType::STDIN, &pattern(i as usize * 50)).unwrap();
            }
            write_frame(&mut host_w, FrameType::KILL, &[]).unwrap();
        });
        s.spawn(move || {
            for i in 0..N {
                write_frame(&mut guest_w, FrameType::STDOUT, &pattern(i as usize * 70)).unwrap();
            }
            write_frame(&mut guest_w, FrameType::EXIT, &encode_exit(-1)).unwrap();
        });
        s.spawn(move || {
            for i in 0..N {
                let f = read_frame(&mut guest_r).unwrap().unwrap();
                assert_eq!((f.kind, f.payload), (FrameType::STDIN, pattern(i as usize * 50)));
            }
            assert_eq!(read_frame(&mut guest_r).unwrap().unwrap().kind, FrameType::KILL);
        });
        for i in 0..N {
            let f = read_frame(&mut host_r).unwrap().unwrap();
            assert_eq!((f.kind, f.payload), (FrameType::STDOUT, pattern(i as usize * 70)));
        }
        let exit = read_frame(&mut host_r).unwrap().unwrap();
        assert_eq!(decode_exit(&exit.payload), Ok(-1));
    });
}

// ---------------------------------------------------------------------------------------------
// FrameType and Frame formatting
// ---------------------------------------------------------------------------------------------

#[test]
fn frame_type_display_is_0x_and_two_lowercase_hex_digits() {
    assert_eq!(FrameType(0x0a).to_string(), "0x0a");
    assert_eq!(FrameType::HELLO.to_string(), "0x70");
    assert_eq!(FrameType::STDIN.to_string(), "0x01");
    assert_eq!(FrameType(0x00).to_string(), "0x00");
    assert_eq!(FrameType(0xff).to_string(), "0xff");
    assert_eq!(FrameType::FILE_LS_RESP.to_string(), "0x57");
    // v1's error string is built from this.
    assert_eq!(format!("unexpected frame type {}", FrameType(0xab)), "unexpected frame type 0xab");
    for byte in 0..=u8::MAX {
        let s = FrameType(byte).to_string();
        assert_eq!(s.len(), 4);
        assert!(s.starts_with("0x"));
        assert!(s[2..].chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{s}");
    }
}

#[test]
fn frame_type_debug_shows_the_name_of_known_types() {
    assert_eq!(format!("{:?}", FrameType::EXEC_REQ), "EXEC_REQ");
    assert_eq!(format!("{:?}", FrameType::HELLO_ACK), "HELLO_ACK");
    assert_eq!(format!("{:?}", FrameType(0x99)), "FrameType(0x99)");
    for kind in FrameType::ALL {
        assert_eq!(format!("{kind:?}"), kind.name().unwrap());
    }
}

#[test]
fn frame_type_table_matches_v1() {
    let expected: [(u8, &str); 34] = [
        (0x01, "STDIN"),
        (0x02, "STDOUT"),
        (0x03, "STDERR"),
        (0x04, "RESIZE"),
        (0x05, "EXIT"),
        (0x06, "ERROR"),
        (0x07, "KILL"),
        (0x10, "EXEC_REQ"),
        (0x11, "AUTH"),
        (0x20, "FWD_REQ"),
        (0x21, "FWD_RESP"),
        (0x30, "EXEC_LIST_REQ"),
        (0x31, "EXEC_LIST_RESP"),
        (0x32, "EXEC_KILL"),
        (0x33, "SESSION_INFO"),
        (0x40, "ACTIVITY_REQ"),
        (0x41, "ACTIVITY_RESP"),
        (0x50, "FILE_READ_REQ"),
        (0x51, "FILE_READ_RESP"),
        (0x52, "FILE_WRITE_REQ"),
        (0x53, "FILE_WRITE_RESP"),
        (0x54, "FILE_STAT_REQ"),
        (0x55, "FILE_STAT_RESP"),
        (0x56, "FILE_LS_REQ"),
        (0x57, "FILE_LS_RESP"),
        (0x60, "SYSTEMCTL_REQ"),
        (0x61, "SYSTEMCTL_RESP"),
        (0x70, "HELLO"),
        (0x71, "HELLO_ACK"),
        (0x72, "SET_TIME"),
        (0x73, "SET_NET"),
        (0x74, "SET_IDENTITY"),
        (0x75, "WATCH_REQ"),
        (0x76, "WATCH_EVENT"),
    ];
    let actual: Vec<(u8, &str)> = FrameType::ALL.iter().map(|k| (k.0, k.name().unwrap())).collect();
    assert_eq!(actual, expected);
    // ALL is strictly increasing, so also free of duplicates.
    assert!(FrameType::ALL.windows(2).all(|w| w[0] < w[1]));
    // Exactly the listed bytes have names.
    let named = (0..=u8::MAX).filter(|b| FrameType(*b).name().is_some()).count();
    assert_eq!(named, FrameType::ALL.len());
}

#[test]
fn frame_debug_shows_length_not_payload() {
    let frame = Frame::new(FrameType::AUTH, b"secret-token".to_vec());
    let debug = format!("{frame:?}");
    assert_eq!(debug, "Frame { kind: AUTH, payload_len: 12 }");
    assert!(!debug.contains("secret"));
}

#[test]
fn frame_text_replaces_invalid_utf8() {
    let frame = Frame::new(FrameType::ERROR, &b"bad \xff byte"[..]);
    assert_eq!(frame.text(), "bad \u{fffd} byte");
}
