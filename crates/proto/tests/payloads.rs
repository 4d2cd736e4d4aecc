#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The two binary payloads: RESIZE (u16 rows, u16 cols) and EXIT (i32), both exactly 4
//! big-endian bytes.

use std::io::Cursor;

use proto::payload::{
    PayloadLengthError, WindowSize, decode_exit, decode_resize, encode_exit, encode_resize,
};
use proto::{FrameType, read_frame, write_frame};

#[test]
fn resize_round_trips_with_exact_bytes() {
    let cases = [
        (WindowSize { rows: 24, cols: 80 }, [0x00, 0x18, 0x00, 0x50]),
        (WindowSize { rows: 0, cols: 0 }, [0x00, 0x00, 0x00, 0x00]),
        (WindowSize { rows: u16::MAX, cols: u16::MAX }, [0xff, 0xff, 0xff, 0xff]),
        (WindowSize { rows: 0x0102, cols: 0x0304 }, [0x01, 0x02, 0x03, 0x04]),
    ];
    for (size, bytes) in cases {
        assert_eq!(encode_resize(size), bytes, "{size:?}");
        assert_eq!(decode_resize(&bytes), Ok(size), "{bytes:02x?}");
    }
}

#[test]
fn resize_rows_come_before_cols() {
    let size = decode_resize(&[0x00, 0x32, 0x00, 0x84]).unwrap();
    assert_eq!(size, WindowSize { rows: 50, cols: 132 });
}

#[test]
fn resize_rejects_payloads_that_are_not_4_bytes() {
    for len in [0, 2, 3, 5] {
        let payload = vec![0x01; len];
        assert_eq!(
            decode_resize(&payload),
            Err(PayloadLengthError { what: "resize", got: len }),
            "{len} bytes"
        );
    }
    let err = decode_resize(&[0, 24]).unwrap_err();
    assert_eq!(err.to_string(), "resize payload must be 4 bytes, got 2");
}

#[test]
fn resize_round_trips_through_a_frame() {
    let size = WindowSize { rows: 61, cols: 237 };
    let mut wire = Vec::new();
    write_frame(&mut wire, FrameType::RESIZE, &encode_resize(size)).unwrap();
    assert_eq!(wire, [0x00, 0x00, 0x00, 0x05, 0x04, 0x00, 0x3d, 0x00, 0xed]);
    let frame = read_frame(&mut Cursor::new(&wire)).unwrap().unwrap();
    assert_eq!(frame.kind, FrameType::RESIZE);
    assert_eq!(decode_resize(&frame.payload), Ok(size));
}

#[test]
fn exit_codes_round_trip() {
    for code in [0, 1, -1, 127, 137, 143, i32::MIN, i32::MAX] {
        let bytes = encode_exit(code);
        assert_eq!(bytes, code.to_be_bytes());
        assert_eq!(decode_exit(&bytes), Ok(code), "{code}");
    }
}

#[test]
fn exit_codes_exact_bytes() {
    assert_eq!(encode_exit(0), [0x00, 0x00, 0x00, 0x00]);
    assert_eq!(encode_exit(1), [0x00, 0x00, 0x00, 0x01]);
    assert_eq!(encode_exit(137), [0x00, 0x00, 0x00, 0x89]);
    // Two's complement, as v1's int32 -> uint32 cast.
    assert_eq!(encode_exit(-1), [0xff, 0xff, 0xff, 0xff]);
    assert_eq!(encode_exit(i32::MIN), [0x80, 0x00, 0x00, 0x00]);
    assert_eq!(encode_exit(i32::MAX), [0x7f, 0xff, 0xff, 0xff]);
    assert_eq!(decode_exit(&[0xff, 0xff, 0xff, 0x7f]), Ok(-129));
}

#[test]
fn exit_rejects_payloads_that_are_not_4_bytes() {
    for len in [0, 1, 3, 5] {
        let payload = vec![0x00; len];
        assert_eq!(
            decode_exit(&payload),
            Err(PayloadLengthError { what: "exit", got: len }),
            "{len} bytes"
        );
    }
    assert_eq!(decode_exit(&[7]).unwrap_err().to_string(), "exit payload must be 4 bytes, got 1");
}

#[test]
fn exit_round_trips_through_a_frame() {
    let mut wire = Vec::new();
    write_frame(&mut wire, FrameType::EXIT, &encode_exit(-15)).unwrap();
    assert_eq!(wire, [0x00, 0x00, 0x00, 0x05, 0x05, 0xff, 0xff, 0xff, 0xf1]);
    let frame = read_frame(&mut Cursor::new(&wire)).unwrap().unwrap();
    assert_eq!(frame.kind, FrameType::EXIT);
    assert_eq!(decode_exit(&frame.payload), Ok(-15));
}
