//! Feeds arbitrary bytes to every decoder in `proto`. Nothing may panic, and the decoders must
//! agree with each other:
//!
//! * `try_parse` and `read_frame` report the same frame, the same "need more bytes" and the same
//!   invalid header, frame after frame along the input;
//! * RESIZE and EXIT payloads decode only at exactly 4 bytes and re-encode to the same bytes;
//! * the payload of every parsed frame is decoded as each JSON message type, and whatever decodes
//!   re-encodes (through `send_json` and `read_frame`) to an equal value.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use proto::limits::{HEADER_LEN, MAX_FRAME_LEN, PAYLOAD_OFFSET};
use proto::messages::{
    ActivityInfo, DetachedExec, ExecRequest, FileInfo, FileReadRequest, FileReadResponse,
    FileWriteRequest, FileWriteResponse, ForwardRequest, ForwardResponse, Hello, KillRequest,
    PathRequest, SessionInfo, parse_mode,
};
use proto::payload::{decode_exit, decode_resize, encode_exit, encode_resize};
use proto::{Frame, FrameError, read_frame, send_json, try_parse};

/// Decodes the frame's payload as each listed type; a value that decodes must survive
/// `send_json` -> `read_frame` -> decode unchanged.
macro_rules! check_json {
    ($frame:expr, $($ty:ty),+ $(,)?) => {$(
        if let Ok(value) = $frame.json::<$ty>() {
            let mut wire = Vec::new();
            match send_json(&mut wire, $frame.kind, &value) {
                Ok(()) => {
                    let again = read_frame(&mut Cursor::new(&wire[..]))
                        .expect("re-encoded frame reads back")
                        .expect("re-encoded frame is present");
                    let decoded: $ty = again.json().expect("re-encoded JSON decodes");
                    assert_eq!(decoded, value, "JSON round trip changed a {}", stringify!($ty));
                }
                Err(FrameError::TooLarge { .. }) => {}
                Err(e) => panic!("re-encoding a decoded {} failed: {e}", stringify!($ty)),
            }
        }
    )+};
}

fn check_payload(frame: &Frame) {
    match decode_resize(&frame.payload) {
        Ok(size) => assert_eq!(encode_resize(size)[..], frame.payload[..]),
        Err(e) => assert!(frame.payload.len() != 4 && e.got == frame.payload.len()),
    }
    match decode_exit(&frame.payload) {
        Ok(code) => assert_eq!(encode_exit(code)[..], frame.payload[..]),
        Err(e) => assert!(frame.payload.len() != 4 && e.got == frame.payload.len()),
    }
    let _ = frame.text();
    if let Ok(text) = std::str::from_utf8(&frame.payload) {
        let _ = parse_mode(text);
    }
    check_json!(
        frame,
        ExecRequest,
        SessionInfo,
        Vec<SessionInfo>,
        ActivityInfo,
        KillRequest,
        DetachedExec,
        ForwardRequest,
        ForwardResponse,
        FileReadRequest,
        FileReadResponse,
        FileWriteRequest,
        FileWriteResponse,
        PathRequest,
        FileInfo,
        Vec<FileInfo>,
        Hello,
    );
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut cursor = Cursor::new(data);
    loop {
        let start = cursor.position() as usize;
        let parsed = try_parse(rest);
        let read = read_frame(&mut cursor);
        match (parsed, read) {
            (Ok(Some(p)), Ok(Some(frame))) => {
                assert_eq!(p.kind, frame.kind);
                assert_eq!(p.payload, &frame.payload[..]);
                assert_eq!(p.total_len, cursor.position() as usize - start);
                assert_eq!(p.total_len, PAYLOAD_OFFSET + p.payload.len());
                assert!(frame.payload.len() < MAX_FRAME_LEN);
                check_payload(&frame);
                rest = &rest[p.total_len..];
            }
            (Ok(None), Ok(None)) => {
                assert!(rest.is_empty());
                break;
            }
            (Ok(None), Err(FrameError::UnexpectedEof)) => {
                assert!(!rest.is_empty());
                break;
            }
            (Err(FrameError::ZeroLength), Err(FrameError::ZeroLength)) => {
                assert_eq!(cursor.position() as usize - start, HEADER_LEN);
                break;
            }
            (Err(FrameError::TooLarge { len: a }), Err(FrameError::TooLarge { len: b })) => {
                assert_eq!(a, b);
                assert!(a > MAX_FRAME_LEN);
                assert_eq!(cursor.position() as usize - start, HEADER_LEN);
                break;
            }
            (p, r) => panic!("try_parse {p:?} disagrees with read_frame {r:?}"),
        }
    }

    // The whole input as one payload, whatever framing it had.
    let whole = Frame::new(proto::FrameType::STDOUT, data.to_vec());
    check_payload(&whole);
});
