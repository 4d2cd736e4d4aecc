#![allow(clippy::unwrap_used, clippy::expect_used)]
//! JSON payloads: every message type goes value -> `send_json` -> frame bytes -> `read_frame` ->
//! decode, and the key names and omission rules are pinned to v1's (Go `encoding/json`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;

use proto::messages::{
    ActivityInfo, DetachedExec, ExecRequest, FEATURE_PROCS, FEATURE_REUSE, FileInfo,
    FileReadRequest, FileReadResponse, FileWriteRequest, FileWriteResponse, ForwardRequest,
    ForwardResponse, Hello, KillRequest, PathRequest, STATUS_OK, SessionInfo, format_mode,
    parse_mode,
};
use proto::{FrameError, FrameType, read_frame, send_json};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Sends `value` as a JSON frame of type `kind`, reads the frame back, decodes it, asserts it is
/// equal to `value` and returns the JSON text that crossed the wire.
fn through_frame<T>(kind: FrameType, value: &T) -> String
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut wire = Vec::new();
    send_json(&mut wire, kind, value).unwrap();
    let mut cursor = Cursor::new(&wire[..]);
    let frame = read_frame(&mut cursor).unwrap().expect("a frame");
    assert_eq!(cursor.position() as usize, wire.len());
    assert_eq!(frame.kind, kind);
    let decoded: T = frame.json().unwrap();
    assert_eq!(&decoded, value);
    String::from_utf8(frame.payload).unwrap()
}

fn decode<T: DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).unwrap()
}

fn decode_err<T: DeserializeOwned + Debug>(json: &str) {
    let result = serde_json::from_str::<T>(json);
    assert!(result.is_err(), "{json} should not decode, got {result:?}");
}

/// An extra, unknown key with a nested value, inserted after the opening brace.
fn with_unknown_field(json: &str) -> String {
    assert!(json.starts_with('{'));
    format!(r#"{{"future_field":{{"nested":[1,null,"x"]}},{}"#, &json[1..])
}

// ---------------------------------------------------------------------------------------------
// ExecRequest
// ---------------------------------------------------------------------------------------------

fn full_exec_request() -> ExecRequest {
    ExecRequest {
        argv: vec!["bash".into(), "-lc".into(), "echo \"$HOME\" <&>".into()],
        env: Some(BTreeMap::from([
            ("B".to_owned(), "two".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ])),
        tty: Some(true),
        rows: Some(50),
        cols: Some(132),
        cwd: Some("/workspace".into()),
        session_id: Some("s7".into()),
        max_idle_sec: Some(300),
        if_detached: Some(true),
        detach: Some(false),
        output_file: Some("/tmp/out.log".into()),
        session: Some(true),
        user: Some("root".into()),
        stderr: None,
        tag: None,
        meta: None,
    }
}

#[test]
fn exec_request_with_every_field_round_trips() {
    let req = full_exec_request();
    let text = through_frame(FrameType::EXEC_REQ, &req);
    assert_eq!(
        text,
        concat!(
            r#"{"argv":["bash","-lc","echo \"$HOME\" <&>"],"env":{"A":"1","B":"two"},"#,
            r#""tty":true,"rows":50,"cols":132,"cwd":"/workspace","session_id":"s7","#,
            r#""max_idle_sec":300,"if_detached":true,"detach":false,"#,
            r#""output_file":"/tmp/out.log","session":true,"user":"root"}"#
        )
    );
}

#[test]
fn exec_request_with_no_options_is_just_argv() {
    let req = ExecRequest::command(["ls", "-la", "/"]);
    assert_eq!(req.env, None);
    assert_eq!(req.tty, None);
    let text = through_frame(FrameType::EXEC_REQ, &req);
    assert_eq!(text, r#"{"argv":["ls","-la","/"]}"#);
    for absent in [
        "env",
        "tty",
        "rows",
        "cols",
        "cwd",
        "session_id",
        "max_idle_sec",
        "if_detached",
        "detach",
        "output_file",
        "session",
        "user",
    ] {
        assert!(!text.contains(absent), "{absent} should be omitted");
    }
}

#[test]
fn exec_request_optional_fields_round_trip_one_at_a_time() {
    // v1's TestExecRequestOptionalFields: each pointer field survives alone.
    let base = ExecRequest::command(["sh"]);
    let cases = [
        (ExecRequest { tty: Some(true), ..base.clone() }, r#""tty":true"#),
        (ExecRequest { tty: Some(false), ..base.clone() }, r#""tty":false"#),
        (ExecRequest { rows: Some(24), ..base.clone() }, r#""rows":24"#),
        (ExecRequest { cols: Some(80), ..base.clone() }, r#""cols":80"#),
        (ExecRequest { cwd: Some("/tmp".into()), ..base.clone() }, r#""cwd":"/tmp""#),
        (ExecRequest { max_idle_sec: Some(-1), ..base.clone() }, r#""max_idle_sec":-1"#),
        (ExecRequest { env: Some(BTreeMap::new()), ..base.clone() }, r#""env":{}"#),
    ];
    for (req, fragment) in cases {
        let text = through_frame(FrameType::EXEC_REQ, &req);
        assert_eq!(text, format!(r#"{{"argv":["sh"],{fragment}}}"#));
    }
}

#[test]
fn exec_request_null_or_missing_argv_decodes_as_empty() {
    let null: ExecRequest = decode(r#"{"argv":null,"session_id":"s1"}"#);
    assert!(null.argv.is_empty());
    assert_eq!(null.session_id.as_deref(), Some("s1"));
    let missing: ExecRequest = decode(r#"{"session_id":"s1"}"#);
    assert!(missing.argv.is_empty());
    assert_eq!(null, missing);
    let empty: ExecRequest = decode("{}");
    assert_eq!(empty, ExecRequest::default());
}

#[test]
fn exec_request_empty_argv_is_omitted_on_encode() {
    // An attach carries no argv; the key is left out rather than sent as [] or null.
    let attach = ExecRequest { session_id: Some("s2".into()), ..ExecRequest::default() };
    let text = through_frame(FrameType::EXEC_REQ, &attach);
    assert_eq!(text, r#"{"session_id":"s2"}"#);
}

#[test]
fn exec_request_go_null_env_decodes_as_none() {
    let req: ExecRequest = decode(r#"{"argv":["env"],"env":null}"#);
    assert_eq!(req.env, None);
    // Every optional field accepts Go's null.
    let all_null: ExecRequest = decode(
        r#"{"argv":["x"],"env":null,"tty":null,"rows":null,"cols":null,"cwd":null,
            "session_id":null,"max_idle_sec":null,"if_detached":null,"detach":null,
            "output_file":null,"session":null,"user":null}"#,
    );
    assert_eq!(all_null, ExecRequest::command(["x"]));
}

#[test]
fn exec_request_decodes_go_encoder_output() {
    // Go sorts struct fields by declaration, escapes <>& and may put keys in any order.
    let req: ExecRequest =
        decode(r#"{"tty":true,"argv":["echo","a\u003cb\u0026c"],"env":{"PATH":"/bin"},"rows":40}"#);
    assert_eq!(req.argv, ["echo", "a<b&c"]);
    assert_eq!(req.tty, Some(true));
    assert_eq!(req.rows, Some(40));
    assert_eq!(req.env.unwrap()["PATH"], "/bin");
}

#[test]
fn exec_request_rejects_wrong_types() {
    decode_err::<ExecRequest>(r#"{"argv":"ls"}"#);
    decode_err::<ExecRequest>(r#"{"argv":["ls"],"rows":70000}"#);
    decode_err::<ExecRequest>(r#"{"argv":["ls"],"cols":-1}"#);
    decode_err::<ExecRequest>(r#"{"argv":["ls"],"tty":"yes"}"#);
    decode_err::<ExecRequest>("not json");
}

#[test]
fn exec_request_ignores_unknown_fields() {
    let json = r#"{"argv":["ls"],"cwd":"/"}"#;
    let req: ExecRequest = decode(&with_unknown_field(json));
    assert_eq!(req, decode::<ExecRequest>(json));
}

// ---------------------------------------------------------------------------------------------
// Sessions, activity, kill, detached exec
// ---------------------------------------------------------------------------------------------

fn running_session() -> SessionInfo {
    SessionInfo {
        session_id: "s1".into(),
        argv: "bash -l".into(),
        tty: true,
        running: true,
        exit_code: None,
        attached: true,
        created_at: 1_760_000_000,
        ..SessionInfo::default()
    }
}

#[test]
fn session_info_omits_exit_code_while_running() {
    let text = through_frame(FrameType::SESSION_INFO, &running_session());
    assert_eq!(
        text,
        r#"{"session_id":"s1","argv":"bash -l","tty":true,"running":true,"attached":true,"created_at":1760000000}"#
    );
    assert!(!text.contains("exit_code"));
}

#[test]
fn session_info_carries_exit_code_once_exited() {
    for code in [0, 1, -1, 137] {
        let info = SessionInfo {
            running: false,
            exit_code: Some(code),
            attached: false,
            ..running_session()
        };
        let text = through_frame(FrameType::SESSION_INFO, &info);
        // Zero is present, unlike a Go omitempty int.
        assert!(text.contains(&format!(r#""exit_code":{code}"#)), "{text}");
    }
}

#[test]
fn session_info_decodes_v1_json_and_ignores_unknown_fields() {
    let json = r#"{"session_id":"init","argv":"/sbin/init","tty":false,"running":false,"exit_code":null,"attached":false,"created_at":5}"#;
    let info: SessionInfo = decode(json);
    assert_eq!(info.session_id, "init");
    assert_eq!(info.exit_code, None);
    let again: SessionInfo = decode(&with_unknown_field(json));
    assert_eq!(again, info);
}

#[test]
fn session_list_round_trips_and_empty_list_is_brackets() {
    let list = vec![
        running_session(),
        SessionInfo {
            session_id: "s2".into(),
            argv: "python3 -m http.server".into(),
            tty: false,
            running: false,
            exit_code: Some(143),
            attached: false,
            created_at: 1_760_000_100,
            ..SessionInfo::default()
        },
    ];
    through_frame(FrameType::EXEC_LIST_RESP, &list);
    let empty: Vec<SessionInfo> = Vec::new();
    assert_eq!(through_frame(FrameType::EXEC_LIST_RESP, &empty), "[]");
}

#[test]
fn activity_info_round_trips() {
    let info = ActivityInfo {
        last_activity_unix: 1_760_000_000,
        active_sessions: 3,
        attached_sessions: 1,
    };
    let text = through_frame(FrameType::ACTIVITY_RESP, &info);
    assert_eq!(
        text,
        r#"{"last_activity_unix":1760000000,"active_sessions":3,"attached_sessions":1}"#
    );
    // Nothing happened since boot: zeros, all keys still present.
    let text = through_frame(FrameType::ACTIVITY_RESP, &ActivityInfo::default());
    assert_eq!(text, r#"{"last_activity_unix":0,"active_sessions":0,"attached_sessions":0}"#);
    let json = r#"{"last_activity_unix":7,"active_sessions":0,"attached_sessions":0}"#;
    assert_eq!(decode::<ActivityInfo>(&with_unknown_field(json)).last_activity_unix, 7);
}

#[test]
fn kill_request_round_trips() {
    let req = KillRequest { session_id: "s3".into(), signal: None };
    assert_eq!(through_frame(FrameType::EXEC_KILL, &req), r#"{"session_id":"s3"}"#);
    assert_eq!(decode::<KillRequest>(&with_unknown_field(r#"{"session_id":"s3"}"#)), req);
}

#[test]
fn detached_exec_round_trips() {
    let info = DetachedExec { pid: 4242, output_file: "/tmp/bhatti-detach-1760000000.log".into() };
    let text = through_frame(FrameType::STDOUT, &info);
    assert_eq!(text, r#"{"pid":4242,"output_file":"/tmp/bhatti-detach-1760000000.log"}"#);
    let json = r#"{"pid":1,"output_file":"/x"}"#;
    assert_eq!(decode::<DetachedExec>(&with_unknown_field(json)).pid, 1);
}

// ---------------------------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------------------------

#[test]
fn forward_request_is_exactly_port() {
    let req = ForwardRequest { port: 8080 };
    assert_eq!(through_frame(FrameType::FWD_REQ, &req), r#"{"port":8080}"#);
    for port in [0, 1, 65535] {
        through_frame(FrameType::FWD_REQ, &ForwardRequest { port });
    }
}

#[test]
fn forward_request_port_out_of_range_fails_to_decode() {
    decode_err::<ForwardRequest>(r#"{"port":70000}"#);
    decode_err::<ForwardRequest>(r#"{"port":65536}"#);
    decode_err::<ForwardRequest>(r#"{"port":-1}"#);
    decode_err::<ForwardRequest>(r#"{"port":"8080"}"#);
    decode_err::<ForwardRequest>(r#"{"port":80.5}"#);
}

#[test]
fn forward_request_ignores_unknown_fields() {
    let req: ForwardRequest = decode(&with_unknown_field(r#"{"port":22}"#));
    assert_eq!(req, ForwardRequest { port: 22 });
}

#[test]
fn forward_response_ok_has_no_message_key() {
    let ok = ForwardResponse::ok();
    assert!(ok.is_ok());
    assert_eq!(ok.status, STATUS_OK);
    assert_eq!(through_frame(FrameType::FWD_RESP, &ok), r#"{"status":"ok"}"#);
    let decoded: ForwardResponse = decode(r#"{"status":"ok"}"#);
    assert_eq!(decoded, ok);
}

#[test]
fn forward_response_error_carries_message() {
    let err = ForwardResponse::error("dial tcp 127.0.0.1:59999: connect: connection refused");
    assert!(!err.is_ok());
    let text = through_frame(FrameType::FWD_RESP, &err);
    assert_eq!(
        text,
        r#"{"status":"error","message":"dial tcp 127.0.0.1:59999: connect: connection refused"}"#
    );
    let decoded: ForwardResponse = decode(&text);
    assert!(decoded.message.unwrap().contains("connection refused"));
    let json = r#"{"status":"error","message":"m"}"#;
    assert_eq!(decode::<ForwardResponse>(&with_unknown_field(json)), ForwardResponse::error("m"));
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[test]
fn file_read_request_omits_absent_options() {
    let req = FileReadRequest { path: "/etc/hosts".into(), ..FileReadRequest::default() };
    assert_eq!(through_frame(FrameType::FILE_READ_REQ, &req), r#"{"path":"/etc/hosts"}"#);
}

#[test]
fn file_read_request_with_every_option_round_trips() {
    let req = FileReadRequest {
        path: "/var/log/syslog".into(),
        offset: Some(10),
        limit: Some(20),
        max_bytes: Some(4096),
    };
    assert_eq!(
        through_frame(FrameType::FILE_READ_REQ, &req),
        r#"{"path":"/var/log/syslog","offset":10,"limit":20,"max_bytes":4096}"#
    );
    let only_limit = FileReadRequest { limit: Some(5), ..FileReadRequest::default() };
    assert_eq!(through_frame(FrameType::FILE_READ_REQ, &only_limit), r#"{"path":"","limit":5}"#);
    let nulls: FileReadRequest =
        decode(r#"{"path":"/x","offset":null,"limit":null,"max_bytes":null}"#);
    assert_eq!(nulls, FileReadRequest { path: "/x".into(), ..FileReadRequest::default() });
    let unknown: FileReadRequest = decode(&with_unknown_field(r#"{"path":"/x","limit":1}"#));
    assert_eq!(unknown.limit, Some(1));
}

#[test]
fn file_read_response_round_trips() {
    let resp = FileReadResponse { mode: "0644".into(), size: 1_234_567 };
    assert_eq!(
        through_frame(FrameType::FILE_READ_RESP, &resp),
        r#"{"mode":"0644","size":1234567}"#
    );
    let json = r#"{"mode":"0600","size":0}"#;
    assert_eq!(decode::<FileReadResponse>(&with_unknown_field(json)).mode, "0600");
}

#[test]
fn file_write_request_round_trips() {
    let req = FileWriteRequest { path: "/home/u/a.txt".into(), mode: "0600".into(), size: 5 };
    assert_eq!(
        through_frame(FrameType::FILE_WRITE_REQ, &req),
        r#"{"path":"/home/u/a.txt","mode":"0600","size":5}"#
    );
    // Missing mode means the default (0644), decoded as the empty string.
    let no_mode: FileWriteRequest = decode(r#"{"path":"/a","size":0}"#);
    assert_eq!(no_mode.mode, "");
    let json = r#"{"path":"/a","mode":"0755","size":1}"#;
    assert_eq!(decode::<FileWriteRequest>(&with_unknown_field(json)).mode, "0755");
}

#[test]
fn file_write_response_round_trips() {
    let resp = FileWriteResponse { status: STATUS_OK.into() };
    assert_eq!(through_frame(FrameType::FILE_WRITE_RESP, &resp), r#"{"status":"ok"}"#);
    assert_eq!(decode::<FileWriteResponse>(&with_unknown_field(r#"{"status":"ok"}"#)), resp);
}

#[test]
fn path_request_round_trips_for_stat_and_ls() {
    let req = PathRequest { path: "/etc".into() };
    assert_eq!(through_frame(FrameType::FILE_STAT_REQ, &req), r#"{"path":"/etc"}"#);
    assert_eq!(through_frame(FrameType::FILE_LS_REQ, &req), r#"{"path":"/etc"}"#);
    assert_eq!(decode::<PathRequest>(&with_unknown_field(r#"{"path":"/etc"}"#)), req);
}

#[test]
fn file_info_round_trips() {
    let info = FileInfo {
        name: "hosts".into(),
        size: 174,
        mode: "0644".into(),
        is_dir: false,
        mtime: 1_760_000_000,
    };
    assert_eq!(
        through_frame(FrameType::FILE_STAT_RESP, &info),
        r#"{"name":"hosts","size":174,"mode":"0644","is_dir":false,"mtime":1760000000}"#
    );
    let json = r#"{"name":"d","size":4096,"mode":"0755","is_dir":true,"mtime":1}"#;
    assert!(decode::<FileInfo>(&with_unknown_field(json)).is_dir);
}

#[test]
fn file_listing_round_trips_with_truncation_sentinel() {
    let listing = vec![
        FileInfo { name: "bin".into(), size: 4096, mode: "0755".into(), is_dir: true, mtime: 1 },
        FileInfo { name: "link".into(), size: 7, mode: "0777".into(), is_dir: false, mtime: 2 },
        FileInfo {
            name: "... truncated at 10000 entries (10001 total)".into(),
            size: 0,
            mode: String::new(),
            is_dir: false,
            mtime: 0,
        },
    ];
    let text = through_frame(FrameType::FILE_LS_RESP, &listing);
    assert!(text.contains(r#""mode":"""#), "sentinel keeps its empty mode: {text}");
    assert_eq!(through_frame(FrameType::FILE_LS_RESP, &Vec::<FileInfo>::new()), "[]");
}

// ---------------------------------------------------------------------------------------------
// Hello extension
// ---------------------------------------------------------------------------------------------

#[test]
fn hello_round_trips() {
    let hello = Hello { version: 1, features: vec![FEATURE_REUSE.into()] };
    assert_eq!(through_frame(FrameType::HELLO, &hello), r#"{"version":1,"features":["reuse"]}"#);
    assert_eq!(
        through_frame(FrameType::HELLO_ACK, &hello),
        r#"{"version":1,"features":["reuse"]}"#
    );
    let none_granted = Hello { version: 1, features: Vec::new() };
    assert_eq!(
        through_frame(FrameType::HELLO_ACK, &none_granted),
        r#"{"version":1,"features":[]}"#
    );
}

#[test]
fn hello_null_or_missing_features_decode_as_empty() {
    let null: Hello = decode(r#"{"version":1,"features":null}"#);
    assert!(null.features.is_empty());
    let missing: Hello = decode(r#"{"version":2}"#);
    assert_eq!(missing, Hello { version: 2, features: Vec::new() });
    let unknown: Hello = decode(&with_unknown_field(r#"{"version":1,"features":["reuse","x"]}"#));
    assert_eq!(unknown.features, ["reuse", "x"]);
}

// ---------------------------------------------------------------------------------------------
// send_json failure and Frame::json
// ---------------------------------------------------------------------------------------------

#[test]
fn send_json_encode_failure_is_a_json_error_and_writes_nothing() {
    // JSON object keys must be strings; a tuple key cannot be encoded.
    let bad = BTreeMap::from([((1u8, 2u8), 3u8)]);
    let mut out = Vec::new();
    let err = send_json(&mut out, FrameType::STDOUT, &bad).unwrap_err();
    assert!(matches!(err, FrameError::Json(_)), "{err:?}");
    assert!(out.is_empty());
}

#[test]
fn frame_json_reports_bad_payloads() {
    let frame = proto::Frame::new(FrameType::EXEC_REQ, b"{\"argv\":".to_vec());
    assert!(frame.json::<ExecRequest>().is_err());
    let frame = proto::Frame::new(FrameType::EXEC_REQ, Vec::new());
    assert!(frame.json::<ExecRequest>().is_err(), "an empty payload is not a JSON object");
}

#[test]
fn frame_json_can_borrow_from_the_payload() {
    #[derive(serde::Deserialize)]
    struct Borrowed<'a> {
        path: &'a str,
    }
    let frame = proto::Frame::new(FrameType::FILE_STAT_REQ, br#"{"path":"/srv"}"#.to_vec());
    let borrowed: Borrowed<'_> = frame.json().unwrap();
    assert_eq!(borrowed.path, "/srv");
}

// ---------------------------------------------------------------------------------------------
// File modes
// ---------------------------------------------------------------------------------------------

#[test]
fn format_mode_keeps_only_permission_bits() {
    assert_eq!(format_mode(0o100644), "0644"); // regular file
    assert_eq!(format_mode(0o040755), "0755"); // directory
    assert_eq!(format_mode(0o120777), "0777"); // symlink
    assert_eq!(format_mode(0o104755), "0755"); // setuid dropped
    assert_eq!(format_mode(0o102755), "0755"); // setgid dropped
    assert_eq!(format_mode(0o041777), "0777"); // sticky dropped
    assert_eq!(format_mode(0o600), "0600");
    assert_eq!(format_mode(0o7), "0007");
    assert_eq!(format_mode(0), "0000");
    assert_eq!(format_mode(u32::MAX), "0777");
}

#[test]
fn parse_mode_accepts_three_and_four_digit_octal() {
    assert_eq!(parse_mode("600"), Some(0o600));
    assert_eq!(parse_mode("0600"), Some(0o600));
    assert_eq!(parse_mode("0644"), Some(0o644));
    assert_eq!(parse_mode("755"), Some(0o755));
    assert_eq!(parse_mode("0007"), Some(0o7));
    assert_eq!(parse_mode("1"), Some(0o1));
}

#[test]
fn parse_mode_rejects_empty_invalid_and_zero() {
    for bad in ["", "abc", "0", "0000", "8", "0698", "-644", " 644", "644 ", "0x1a4", "0o644"] {
        assert_eq!(parse_mode(bad), None, "{bad:?}");
    }
    // Overflowing u32 is invalid, not truncated.
    assert_eq!(parse_mode("777777777777777"), None);
}

#[test]
fn parse_mode_treats_a_value_with_no_mode_bits_as_zero() {
    // Regression: the zero check used to run before the 0o7777 mask, so these returned Some(0)
    // and the agent's `parse_mode(..).unwrap_or(0o644)` created a mode-0 file.
    for no_bits in ["10000", "100000", "040000", "170000"] {
        assert_eq!(parse_mode(no_bits), None, "{no_bits:?}");
    }
    // File-type bits above the permission bits are dropped, the permissions kept.
    assert_eq!(parse_mode("100644"), Some(0o644));
}

#[test]
fn format_then_parse_round_trips_permission_bits() {
    for mode in 1..=0o777u32 {
        assert_eq!(parse_mode(&format_mode(mode)), Some(mode), "{mode:o}");
    }
    assert_eq!(parse_mode(&format_mode(0o100000)), None, "zero permissions parse as unset");
}

#[test]
fn watch_request_and_events_have_exact_json() {
    use proto::messages::{WatchEvent, WatchKind, WatchRequest};
    let req = WatchRequest { path: "/tmp/w".into(), recursive: true };
    assert_eq!(through_frame(FrameType::WATCH_REQ, &req), r#"{"path":"/tmp/w","recursive":true}"#);
    // `recursive` may be left out.
    assert!(!decode::<WatchRequest>(r#"{"path":"/x"}"#).recursive);
    decode_err::<WatchRequest>(r#"{"recursive":true}"#);
    let rows = [
        (WatchKind::Started, "started"),
        (WatchKind::Create, "create"),
        (WatchKind::Write, "write"),
        (WatchKind::Remove, "remove"),
        (WatchKind::Rename, "rename"),
        (WatchKind::Chmod, "chmod"),
        (WatchKind::Overflow, "overflow"),
    ];
    for (kind, text) in rows {
        let event = WatchEvent { name: "sub/a.txt".into(), kind };
        let json = through_frame(FrameType::WATCH_EVENT, &event);
        assert_eq!(json, format!(r#"{{"name":"sub/a.txt","kind":"{text}"}}"#));
    }
    decode_err::<WatchEvent>(r#"{"name":"a","kind":"exploded"}"#);
    let overflow: WatchEvent = decode(r#"{"kind":"overflow"}"#);
    assert_eq!(overflow, WatchEvent { name: String::new(), kind: WatchKind::Overflow });
}

// ---------------------------------------------------------------------------------------------
// Process extension (`procs`): separate stderr, tags, host data, guest PIDs, kill signals
// ---------------------------------------------------------------------------------------------

#[test]
fn exec_request_process_fields_are_exact_bytes_and_omitted_when_unset() {
    let req = ExecRequest {
        session: Some(true),
        stderr: Some(true),
        tag: Some("web".into()),
        meta: Some(r#"{"cmd":"sleep"}"#.into()),
        ..ExecRequest::command(["sleep", "9"])
    };
    assert_eq!(
        through_frame(FrameType::EXEC_REQ, &req),
        r#"{"argv":["sleep","9"],"session":true,"stderr":true,"tag":"web","meta":"{\"cmd\":\"sleep\"}"}"#
    );
    // A v1 host never sends them: its requests are byte for byte what they were.
    let v1 = through_frame(FrameType::EXEC_REQ, &ExecRequest::command(["sh"]));
    for absent in ["stderr", "tag", "meta"] {
        assert!(!v1.contains(absent), "{absent} in {v1}");
    }
}

#[test]
fn session_info_process_fields_are_exact_bytes_and_v1_json_still_decodes() {
    let info = SessionInfo {
        pid: Some(4242),
        stderr: true,
        tag: Some("web".into()),
        meta: Some("m".into()),
        ..running_session()
    };
    assert_eq!(
        through_frame(FrameType::SESSION_INFO, &info),
        concat!(
            r#"{"session_id":"s1","argv":"bash -l","tty":true,"running":true,"attached":true,"#,
            r#""created_at":1760000000,"pid":4242,"stderr":true,"tag":"web","meta":"m"}"#
        )
    );
    // A merged session without tag or data adds only its PID.
    let plain = SessionInfo { pid: Some(7), ..running_session() };
    assert!(
        through_frame(FrameType::SESSION_INFO, &plain)
            .ends_with(r#""created_at":1760000000,"pid":7}"#)
    );
    // What a v1 agent sends decodes with the extension unset.
    let v1: SessionInfo = decode(
        r#"{"session_id":"s2","argv":"sh","tty":false,"running":true,"attached":false,"created_at":1}"#,
    );
    assert_eq!((v1.pid, v1.stderr, v1.tag, v1.meta), (None, false, None, None));
}

#[test]
fn kill_request_signal_is_a_number_and_absent_means_sigkill() {
    let term = KillRequest { session_id: "s3".into(), signal: Some(15) };
    assert_eq!(through_frame(FrameType::EXEC_KILL, &term), r#"{"session_id":"s3","signal":15}"#);
    assert_eq!(decode::<KillRequest>(r#"{"session_id":"s3"}"#).signal, None);
    decode_err::<KillRequest>(r#"{"session_id":"s3","signal":"SIGTERM"}"#);
}

#[test]
fn hello_can_ask_for_reuse_and_procs() {
    let hello = Hello { version: 1, features: vec![FEATURE_REUSE.into(), FEATURE_PROCS.into()] };
    assert_eq!(
        through_frame(FrameType::HELLO, &hello),
        r#"{"version":1,"features":["reuse","procs"]}"#
    );
}
