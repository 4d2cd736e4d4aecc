//! bhatti's host-guest wire protocol, byte-compatible with bhatti v1.
//!
//! A frame is `LEN (u32 big-endian) | TYPE (u8) | PAYLOAD (LEN - 1 bytes)`; `LEN` counts the type
//! byte and the payload, never the 4 header bytes. See [`frame`] for reading and writing frames,
//! [`payload`] for the two binary payloads (resize, exit) and [`messages`] for the JSON payloads.
//!
//! This crate is pure: no async runtime and no IO beyond `std::io`, so the guest agent, the host
//! client and the fuzzer all share exactly the same code.
//!
//! # Connection reuse extension
//!
//! v1 runs exactly one request per connection. Opening a TCP connection into a TCG guest costs
//! about 5 ms while a request on an open connection costs about 0.3 ms, so this crate defines an
//! optional, backwards-compatible extension:
//!
//! 1. After the optional `AUTH` frame, the host sends [`FrameType::HELLO`] (`0x70`) with a JSON
//!    [`messages::Hello`] payload.
//! 2. A v1 agent does not know the type and answers `ERROR "unexpected frame type 0x70"` and closes
//!    the connection; the host then falls back to v1 behaviour (one request per connection) for that
//!    agent.
//! 3. Our agent answers [`FrameType::HELLO_ACK`] (`0x71`) with the features it grants. With
//!    `"reuse"` granted, after each request completes (its final `EXIT`, response frame or
//!    `FILE_WRITE_RESP`), the agent reads the next request from the same connection. Stray
//!    `STDIN`, `RESIZE` and `KILL` frames that arrive between requests (they raced with the end of
//!    the previous request) are discarded. The agent closes the connection after any `ERROR`
//!    frame, after a session (TTY, piped or attach) ends, and when the host closes its side.
//! 4. A host that never sends `HELLO` sees exactly v1 behaviour.
//!
//! A third: [`FrameType::SET_TIME`] (`0x72`) sets the guest's wall clock, which stands still
//! while a VM is paused or suspended. The agent answers EXIT 0 or ERROR; a v1 agent answers its
//! unknown-type error, which the host may ignore.
//!
//! A fourth: [`FrameType::SET_NET`] (`0x73`) moves the guest's interface to a new address and
//! MAC, for a checkpoint resumed while its source still holds the old address. The agent answers
//! EXIT 0 first and applies the change a moment later (the change ends the connection).
//!
//! A fifth: [`FrameType::SET_IDENTITY`] (`0x74`) renews the guest's identity when a checkpoint
//! is resumed as a new sandbox: today its agent token (the resumed sandbox must not answer to
//! its source's). The agent answers EXIT 0 or ERROR; later connections AUTH with the new token.
//!
//! A sixth, under the HELLO feature `"watch"`: [`FrameType::WATCH_REQ`] (`0x75`, JSON
//! [`messages::WatchRequest`]) watches a directory (inotify in the guest). The agent answers
//! ERROR (missing path, not a directory, too many directories) or a stream of
//! [`FrameType::WATCH_EVENT`] (`0x76`, JSON [`messages::WatchEvent`]) frames, the first of kind
//! `started`, until the host closes the connection, which ends the watch. A connection whose
//! HELLO did not ask for `"watch"` gets v1's `unexpected frame type 0x75`.
//!
//! A seventh, without a frame of its own: the `procs` feature of HELLO
//! ([`messages::FEATURE_PROCS`]). An agent that grants it honours optional fields that v1
//! agents ignore: `stderr`, `tag` and `meta` on EXEC_REQ (a piped session with a separate
//! stderr, sent as STDERR frames to clients that ask; a tag and opaque host data kept with the
//! session), `pid`, `stderr`, `tag`, `meta` in SESSION_INFO / EXEC_LIST_RESP, and `signal` on
//! EXEC_KILL. A host that sends none of them sees v1's behaviour.
//!
//! One more compatible extension: an empty `STDIN` frame (which v1 treats as a zero-byte write,
//! a no-op) closes the child's stdin, so a host can send EOF to a one-shot exec or a piped
//! session.

#![forbid(unsafe_code)]

pub mod frame;
pub mod guest;
pub mod limits;
pub mod messages;
pub mod payload;

pub use frame::{
    Frame, FrameError, FrameType, ParsedFrame, encode_frame, read_frame, send_json, try_parse,
    write_frame,
};
