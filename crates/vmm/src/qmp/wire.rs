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

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `STOP`, `RESUME`, `SHUTDOWN`, `MIGRATION`.
    pub name: String,
    /// Event data (`null` when absent).
    pub data: Value,
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
        return Ok(Message::Event(Event { name: name.to_owned(), data }));
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
        assert_eq!(
            parse(line).unwrap(),
            Message::Event(Event { name: "STOP".into(), data: serde_json::Value::Null })
        );
        let line = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#;
        match parse(line).unwrap() {
            Message::Event(e) => {
                assert_eq!(e.name, "SHUTDOWN");
                assert_eq!(e.data["reason"], "guest-shutdown");
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
