//! QMP messages as they arrive on the socket: one JSON object per line.

use serde_json::Value;

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting sent on connect: `{"QMP": {"version": ..., "capabilities": [...]}}`.
    Greeting {
        /// QEMU's version triple.
        version: (u64, u64, u64),
    },
    /// A successful reply: `{"return": ..., "id": ...}`.
    Return {
        /// The id we sent, if any.
        id: Option<u64>,
        /// The command's result.
        value: Value,
    },
    /// A failed reply: `{"error": {"class": ..., "desc": ...}, "id": ...}`.
    Error {
        /// The id we sent, if any.
        id: Option<u64>,
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
    /// An asynchronous event: `{"event": ..., "data": ..., "timestamp": ...}`.
    Event(Event),
}

/// An asynchronous QMP event, typed once here so callers match variants, never names.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The vCPUs stopped (a `stop`, the end of an outgoing migration, an I/O error whose
    /// action is `stop`).
    Stop,
    /// The vCPUs run again.
    Resume,
    /// The guest or QEMU is shutting down.
    Shutdown {
        /// The guest asked for it (power off, reboot with `-no-reboot`).
        guest: bool,
        /// QEMU's reason, e.g. `guest-shutdown`, `host-qmp-quit`.
        reason: String,
    },
    /// A disk request failed on the host.
    BlockIoError {
        /// The device's id (`root`, `cfg`, `vol0`, ...), empty when it has none.
        device: String,
        /// `read` or `write`.
        operation: String,
        /// What QEMU did about it.
        action: IoErrorAction,
        /// The host's disk is full (ENOSPC).
        nospace: bool,
        /// QEMU's description of the error.
        reason: String,
    },
    /// A migration (our state save or load) changed state: `active`, `completed`, `failed`, ...
    Migration {
        /// The new status.
        status: String,
    },
    /// Any event the engine does not act on, kept by name for logs.
    Other {
        /// Event name.
        name: String,
        /// Event data (`null` when absent).
        data: Value,
    },
}

/// What QEMU does after a failed disk request (`-drive werror=`/`rerror=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoErrorAction {
    /// The error was passed to the guest.
    Report,
    /// The error was ignored.
    Ignore,
    /// The VM was stopped (`werror=enospc` on a full host disk).
    Stop,
    /// An action this client does not know.
    Other(String),
}

impl Event {
    /// Types an event from its name and data. Missing fields read as empty or false: QEMU
    /// always sends them, and an odd event must never break the reader.
    pub fn from_wire(name: &str, data: Value) -> Self {
        let text = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        let flag = |k: &str| data[k].as_bool().unwrap_or(false);
        match name {
            "STOP" => Event::Stop,
            "RESUME" => Event::Resume,
            "SHUTDOWN" => Event::Shutdown { guest: flag("guest"), reason: text("reason") },
            "BLOCK_IO_ERROR" => Event::BlockIoError {
                device: text("device"),
                operation: text("operation"),
                action: match data["action"].as_str().unwrap_or_default() {
                    "report" => IoErrorAction::Report,
                    "ignore" => IoErrorAction::Ignore,
                    "stop" => IoErrorAction::Stop,
                    other => IoErrorAction::Other(other.to_owned()),
                },
                nospace: flag("nospace"),
                reason: text("reason"),
            },
            "MIGRATION" => Event::Migration { status: text("status") },
            _ => Event::Other { name: name.to_owned(), data },
        }
    }
}

/// Parses one line. Anything that is not one of the four QMP shapes is a protocol error.
pub fn parse(line: &str) -> Result<Message, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    let obj = value.as_object().ok_or_else(|| format!("not a JSON object: {line}"))?;
    let id = obj.get("id").and_then(Value::as_u64);
    if let Some(greeting) = obj.get("QMP") {
        let v = &greeting["version"]["qemu"];
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        return Ok(Message::Greeting { version: (n("major"), n("minor"), n("micro")) });
    }
    if let Some(ret) = obj.get("return") {
        return Ok(Message::Return { id, value: ret.clone() });
    }
    if let Some(err) = obj.get("error") {
        let text = |k: &str| err[k].as_str().unwrap_or("").to_owned();
        return Ok(Message::Error { id, class: text("class"), desc: text("desc") });
    }
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        let data = obj.get("data").cloned().unwrap_or(Value::Null);
        return Ok(Message::Event(Event::from_wire(name, data)));
    }
    Err(format!("unknown QMP message: {line}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Lines recorded from QEMU 10.0.2 (`-M microvm`), trimmed of their trailing `\r\n`.
    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#;

    #[test]
    fn greeting() {
        assert_eq!(parse(GREETING).unwrap(), Message::Greeting { version: (10, 0, 2) });
    }

    #[test]
    fn returns_with_and_without_id() {
        assert_eq!(
            parse(r#"{"return": {}, "id": 0}"#).unwrap(),
            Message::Return { id: Some(0), value: json!({}) }
        );
        assert_eq!(
            parse(r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 7}"#).unwrap(),
            Message::Return { id: Some(7), value: json!({"status": "running", "singlestep": false, "running": true}) }
        );
        assert_eq!(
            parse(r#"{"return": {}}"#).unwrap(),
            Message::Return { id: None, value: json!({}) }
        );
    }

    #[test]
    fn errors() {
        let line = r#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}"#;
        assert_eq!(
            parse(line).unwrap(),
            Message::Error {
                id: Some(3),
                class: "CommandNotFound".into(),
                desc: "The command nosuch has not been found".into()
            }
        );
    }

    #[test]
    fn events() {
        let line =
            r#"{"timestamp": {"seconds": 1764028800, "microseconds": 12345}, "event": "STOP"}"#;
        assert_eq!(parse(line).unwrap(), Message::Event(Event::Stop));
        let line = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#;
        assert_eq!(
            parse(line).unwrap(),
            Message::Event(Event::Shutdown { guest: true, reason: "guest-shutdown".into() })
        );
        let line = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "completed"}}"#;
        assert_eq!(
            parse(line).unwrap(),
            Message::Event(Event::Migration { status: "completed".into() })
        );
        let line = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 1}}"#;
        assert_eq!(
            parse(line).unwrap(),
            Message::Event(Event::Other { name: "RTC_CHANGE".into(), data: json!({"offset": 1}) })
        );
    }

    #[test]
    fn a_full_host_disk_is_a_typed_io_error() {
        // As QEMU 10 sends it for a `werror=enospc` drive on a full filesystem.
        let line = r##"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BLOCK_IO_ERROR", "data": {"device": "vol0", "nospace": true, "node-name": "#block123", "reason": "No space left on device", "operation": "write", "action": "stop"}}"##;
        assert_eq!(
            parse(line).unwrap(),
            Message::Event(Event::BlockIoError {
                device: "vol0".into(),
                operation: "write".into(),
                action: IoErrorAction::Stop,
                nospace: true,
                reason: "No space left on device".into(),
            })
        );
        // An action this client does not know is kept, not mistaken for one it does.
        let line = r#"{"event": "BLOCK_IO_ERROR", "data": {"device": "", "operation": "read", "action": "retry"}}"#;
        match parse(line).unwrap() {
            Message::Event(Event::BlockIoError { action, nospace, .. }) => {
                assert_eq!(action, IoErrorAction::Other("retry".into()));
                assert!(!nospace);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(parse("").is_err());
        assert!(parse("not json").is_err());
        assert!(parse("[1,2]").is_err());
        assert!(parse(r#"{"something": "else"}"#).is_err());
    }
}
