#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]
//! Frame throughput against a `memcpy` baseline, small-frame encode rate and JSON encoding.
//!
//! Targets (from the issue): a 1 MiB frame within 2x of a plain copy of its payload, and at
//! least 5 million small frames encoded per second. Run with
//! `cargo bench -p bhatti-proto --bench frames`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::limits::MAX_PAYLOAD_LEN;
use proto::messages::ExecRequest;
use proto::{FrameType, encode_frame, read_frame, write_frame};

/// (group label, payload bytes). "1MiB" is the largest legal payload, 1 MiB - 1 byte.
const SIZES: [(&str, usize); 3] = [("64B", 64), ("4KiB", 4 * 1024), ("1MiB", MAX_PAYLOAD_LEN)];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Per payload size: the memcpy baseline, `write_frame` into a reused Vec and `read_frame` from a
/// Cursor over a pre-encoded frame, all in one group so the report compares them directly.
fn frame_throughput(c: &mut Criterion) {
    for (label, len) in SIZES {
        let data = payload(len);
        let encoded = encode_frame(FrameType::STDOUT, &data).unwrap();
        let mut group = c.benchmark_group(format!("frame/{label}"));
        group.throughput(Throughput::Bytes(len as u64));

        let mut copy = vec![0u8; len];
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                copy.copy_from_slice(black_box(&data));
                black_box(&mut copy);
            });
        });

        let mut out = Vec::with_capacity(encoded.len());
        group.bench_function("write_frame", |b| {
            b.iter(|| {
                out.clear();
                write_frame(&mut out, FrameType::STDOUT, black_box(&data)).unwrap();
                black_box(&mut out);
            });
        });

        group.bench_function("read_frame", |b| {
            b.iter(|| {
                let mut cursor = Cursor::new(black_box(&encoded[..]));
                black_box(read_frame(&mut cursor).unwrap().unwrap())
            });
        });

        group.finish();
    }
}

/// Small frames per second: the per-frame fixed cost (header, allocation) dominates.
fn small_frames(c: &mut Criterion) {
    let data = payload(16);
    let mut group = c.benchmark_group("small_frame_16B");
    group.throughput(Throughput::Elements(1));

    group.bench_function("encode_frame", |b| {
        b.iter(|| black_box(encode_frame(FrameType::STDOUT, black_box(&data)).unwrap()));
    });

    let mut out = Vec::with_capacity(64);
    group.bench_function("write_frame", |b| {
        b.iter(|| {
            out.clear();
            write_frame(&mut out, FrameType::STDOUT, black_box(&data)).unwrap();
            black_box(&mut out);
        });
    });

    let encoded = encode_frame(FrameType::STDOUT, &data).unwrap();
    group.bench_function("read_frame", |b| {
        b.iter(|| {
            let mut cursor = Cursor::new(black_box(&encoded[..]));
            black_box(read_frame(&mut cursor).unwrap().unwrap())
        });
    });

    group.finish();
}

/// JSON encoding of a typical exec request (argv of 3, env of 2, cwd).
fn json(c: &mut Criterion) {
    let req = ExecRequest {
        argv: vec!["bash".into(), "-lc".into(), "make test".into()],
        env: Some(BTreeMap::from([
            ("HOME".to_owned(), "/home/lohar".to_owned()),
            ("TERM".to_owned(), "xterm-256color".to_owned()),
        ])),
        cwd: Some("/workspace/project".into()),
        ..ExecRequest::default()
    };
    let mut group = c.benchmark_group("json_exec_request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("serde_json::to_vec", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&req)).unwrap()));
    });
    let mut out = Vec::with_capacity(256);
    group.bench_function("send_json", |b| {
        b.iter(|| {
            out.clear();
            proto::send_json(&mut out, FrameType::EXEC_REQ, black_box(&req)).unwrap();
            black_box(&mut out);
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = frame_throughput, small_frames, json
}
criterion_main!(benches);
