#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests: the decoders never panic on hostile input, encode/decode round-trips for any
//! type byte and payload, and `try_parse` agrees with `read_frame` on every buffer.

use std::io::Cursor;

use proptest::prelude::*;
use proptest::sample::Index;
use proto::limits::{HEADER_LEN, MAX_FRAME_LEN, PAYLOAD_OFFSET};
use proto::payload::{WindowSize, decode_exit, decode_resize, encode_exit, encode_resize};
use proto::{FrameError, FrameType, encode_frame, read_frame, try_parse, write_frame};

/// Reads frames until EOF or an error; returns how many were read. Cannot loop forever: every
/// frame consumes at least 5 bytes.
fn drain(buf: &[u8]) -> usize {
    let mut cursor = Cursor::new(buf);
    let mut n = 0;
    while let Ok(Some(frame)) = read_frame(&mut cursor) {
        assert!(frame.payload.len() < MAX_FRAME_LEN);
        n += 1;
    }
    n
}

/// Walks `buf` with `try_parse`, checking the invariants of every frame it finds.
fn walk(mut buf: &[u8]) -> Result<(), TestCaseError> {
    while let Ok(Some(parsed)) = try_parse(buf) {
        prop_assert!(parsed.total_len <= buf.len());
        prop_assert!(parsed.total_len >= PAYLOAD_OFFSET);
        prop_assert_eq!(parsed.payload.len() + PAYLOAD_OFFSET, parsed.total_len);
        prop_assert_eq!(parsed.kind, FrameType(buf[HEADER_LEN]));
        buf = &buf[parsed.total_len..];
    }
    Ok(())
}

/// `try_parse` and `read_frame` must tell the same story about the front of `buf`:
/// a frame for both (same type, payload and length consumed); "need more" from `try_parse` is a
/// clean EOF (empty buffer) or an unexpected EOF from `read_frame`; an invalid header is the same
/// error for both, found after reading exactly the 4 header bytes.
fn agree_once(buf: &[u8]) -> Result<Option<usize>, TestCaseError> {
    let parsed = try_parse(buf);
    let mut cursor = Cursor::new(buf);
    let read = read_frame(&mut cursor);
    match (parsed, read) {
        (Ok(Some(p)), Ok(Some(f))) => {
            prop_assert_eq!(p.kind, f.kind);
            prop_assert_eq!(p.payload, &f.payload[..]);
            prop_assert_eq!(p.total_len as u64, cursor.position());
            Ok(Some(p.total_len))
        }
        (Ok(None), Ok(None)) => {
            prop_assert!(buf.is_empty());
            Ok(None)
        }
        (Ok(None), Err(FrameError::UnexpectedEof)) => {
            prop_assert!(!buf.is_empty());
            Ok(None)
        }
        (Err(FrameError::ZeroLength), Err(FrameError::ZeroLength)) => {
            prop_assert_eq!(cursor.position(), HEADER_LEN as u64);
            Ok(None)
        }
        (Err(FrameError::TooLarge { len: a }), Err(FrameError::TooLarge { len: b })) => {
            prop_assert_eq!(a, b);
            prop_assert!(a > MAX_FRAME_LEN);
            prop_assert_eq!(cursor.position(), HEADER_LEN as u64);
            Ok(None)
        }
        (p, r) => Err(TestCaseError::fail(format!(
            "disagree on {} bytes: try_parse {p:?}, read_frame {r:?}",
            buf.len()
        ))),
    }
}

/// Runs [`agree_once`] frame after frame along the whole buffer.
fn agree(mut buf: &[u8]) -> Result<(), TestCaseError> {
    while let Some(consumed) = agree_once(buf)? {
        buf = &buf[consumed..];
    }
    Ok(())
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..4096)
}

/// A header whose LEN is at or near the limit or far above it, then arbitrary bytes.
fn forged_large_header() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        (MAX_FRAME_LEN as u32 - 4)..=(MAX_FRAME_LEN as u32 + 4),
        (MAX_FRAME_LEN as u32)..=u32::MAX,
        Just(u32::MAX),
        Just(0),
    ];
    (len, prop::collection::vec(any::<u8>(), 0..2048)).prop_map(|(len, tail)| {
        let mut buf = len.to_be_bytes().to_vec();
        buf.extend(tail);
        buf
    })
}

/// Valid frames back to back, cut at an arbitrary point, followed by arbitrary junk: the
/// buffers a real reader sees most (complete frames, then a partial one or garbage).
fn truncated_frames() -> impl Strategy<Value = Vec<u8>> {
    let frame = (any::<u8>(), prop::collection::vec(any::<u8>(), 0..300));
    (prop::collection::vec(frame, 0..8), any::<Index>(), prop::collection::vec(any::<u8>(), 0..16))
        .prop_map(|(frames, cut, junk)| {
            let mut buf = Vec::new();
            for (kind, payload) in frames {
                write_frame(&mut buf, FrameType(kind), &payload).unwrap();
            }
            buf.truncate(cut.index(buf.len() + 1));
            buf.extend(junk);
            buf
        })
}

fn any_buffer() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![arbitrary_bytes(), forged_large_header(), truncated_frames()]
}

proptest! {
    #[test]
    fn read_frame_never_panics_on_arbitrary_bytes(buf in arbitrary_bytes()) {
        drain(&buf);
    }

    #[test]
    fn try_parse_never_panics_on_arbitrary_bytes(buf in arbitrary_bytes()) {
        walk(&buf)?;
    }

    #[test]
    fn decoders_never_panic_on_a_forged_large_header(buf in forged_large_header()) {
        drain(&buf);
        walk(&buf)?;
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        if len > MAX_FRAME_LEN {
            let read_too_large =
                matches!(read_frame(&mut Cursor::new(&buf)), Err(FrameError::TooLarge { .. }));
            prop_assert!(read_too_large);
            let parse_too_large = matches!(try_parse(&buf), Err(FrameError::TooLarge { .. }));
            prop_assert!(parse_too_large);
        }
    }

    #[test]
    fn try_parse_agrees_with_read_frame(buf in any_buffer()) {
        agree(&buf)?;
    }

    #[test]
    fn try_parse_agrees_with_read_frame_on_every_prefix(buf in truncated_frames()) {
        for end in 0..=buf.len().min(600) {
            agree_once(&buf[..end])?;
        }
    }

    #[test]
    fn frame_sequences_round_trip(
        frames in prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)),
            0..20,
        )
    ) {
        let mut wire = Vec::new();
        for (kind, payload) in &frames {
            write_frame(&mut wire, FrameType(*kind), payload).unwrap();
        }
        let mut cursor = Cursor::new(&wire[..]);
        let mut rest = &wire[..];
        for (kind, payload) in &frames {
            let frame = read_frame(&mut cursor).unwrap().unwrap();
            prop_assert_eq!(frame.kind, FrameType(*kind));
            prop_assert_eq!(&frame.payload, payload);
            let parsed = try_parse(rest).unwrap().unwrap();
            prop_assert_eq!(parsed.payload, &payload[..]);
            rest = &rest[parsed.total_len..];
        }
        prop_assert!(read_frame(&mut cursor).unwrap().is_none());
        prop_assert!(rest.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_decode_round_trips(
        kind in any::<u8>(),
        payload in prop::collection::vec(any::<u8>(), 0..=65536),
    ) {
        let kind = FrameType(kind);
        let wire = encode_frame(kind, &payload).unwrap();
        prop_assert_eq!(wire.len(), PAYLOAD_OFFSET + payload.len());
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, payload.len() + 1);
        prop_assert_eq!(wire[4], kind.0);
        prop_assert_eq!(&wire[5..], &payload[..]);

        let mut cursor = Cursor::new(&wire[..]);
        let frame = read_frame(&mut cursor).unwrap().unwrap();
        prop_assert_eq!(frame.kind, kind);
        prop_assert_eq!(&frame.payload, &payload);
        prop_assert_eq!(cursor.position() as usize, wire.len());

        let parsed = try_parse(&wire).unwrap().unwrap();
        prop_assert_eq!(parsed.kind, kind);
        prop_assert_eq!(parsed.payload, &payload[..]);
        prop_assert_eq!(parsed.total_len, wire.len());
    }
}

proptest! {
    #[test]
    fn resize_round_trips(rows in any::<u16>(), cols in any::<u16>()) {
        let size = WindowSize { rows, cols };
        let bytes = encode_resize(size);
        prop_assert_eq!(decode_resize(&bytes), Ok(size));
        prop_assert_eq!(&bytes[..2], &rows.to_be_bytes()[..]);
        prop_assert_eq!(&bytes[2..], &cols.to_be_bytes()[..]);
    }

    #[test]
    fn exit_round_trips(code in any::<i32>()) {
        let bytes = encode_exit(code);
        prop_assert_eq!(bytes, code.to_be_bytes());
        prop_assert_eq!(decode_exit(&bytes), Ok(code));
    }

    #[test]
    fn any_four_bytes_decode_and_re_encode_identically(bytes in any::<[u8; 4]>()) {
        prop_assert_eq!(encode_resize(decode_resize(&bytes).unwrap()), bytes);
        prop_assert_eq!(encode_exit(decode_exit(&bytes).unwrap()), bytes);
    }

    #[test]
    fn binary_payloads_of_other_lengths_are_rejected(
        payload in prop::collection::vec(any::<u8>(), 0..64)
            .prop_filter("not 4 bytes", |p| p.len() != 4)
    ) {
        prop_assert_eq!(decode_resize(&payload).unwrap_err().got, payload.len());
        prop_assert_eq!(decode_exit(&payload).unwrap_err().got, payload.len());
    }
}
