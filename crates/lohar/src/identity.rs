//! SET_IDENTITY: what a guest renews when a checkpoint is resumed as a new sandbox (the clone
//! contract): entropy, machine ID, hostname, outside TCP connections, the agent's token.
//!
//! Every field is validated before anything changes (a bad one is an ERROR and nothing is
//! applied). Then the fields are applied in a fixed order, token last, so a failure part-way
//! leaves the old token working and the host can retry; the ERROR names the field that failed.
//!
//! File paths are taken relative to a root directory so the logic is testable outside a VM; in
//! test mode the system calls (`sethostname`, the RNG ioctls, the connection reset) are skipped,
//! they would change the host.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proto::messages::SetIdentity;

use crate::token::Token;

/// Most entropy accepted, in decoded bytes (the kernel caps one `RNDADDENTROPY` far higher; the
/// host sends 64).
pub const MAX_ENTROPY_BYTES: usize = 512;

/// A SET_IDENTITY whose fields have all been checked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    entropy: Option<Vec<u8>>,
    machine_id: Option<String>,
    hostname: Option<String>,
    reset_connections: bool,
    token: Option<String>,
}

/// Why SET_IDENTITY failed: the field (its JSON name) and the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// `entropy`, `machine_id`, `hostname`, `reset_connections` or `token`.
    pub field: &'static str,
    /// What was wrong or what failed.
    pub why: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "set identity: {}: {}", self.field, self.why)
    }
}

fn fail(field: &'static str, why: impl Into<String>) -> Failure {
    Failure { field, why: why.into() }
}

/// Checks every field; nothing is applied unless all are valid.
pub fn validate(req: &SetIdentity) -> Result<Plan, Failure> {
    let entropy = req
        .entropy
        .as_deref()
        .map(|hex| decode_entropy(hex).map_err(|why| fail("entropy", why)))
        .transpose()?;
    if let Some(id) = req.machine_id.as_deref() {
        check_machine_id(id).map_err(|why| fail("machine_id", why))?;
    }
    if let Some(name) = req.hostname.as_deref() {
        check_hostname(name).map_err(|why| fail("hostname", why))?;
    }
    if let Some(token) = req.token.as_deref() {
        Token::check(token).map_err(|why| fail("token", why))?;
    }
    Ok(Plan {
        entropy,
        machine_id: req.machine_id.clone(),
        hostname: req.hostname.clone(),
        reset_connections: req.reset_connections,
        token: req.token.clone(),
    })
}

/// A hostname is one RFC 1123 label: 1 to 63 letters, digits and hyphens, not starting or
/// ending with a hyphen.
pub fn check_hostname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty hostname");
    }
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("only letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with '-'");
    }
    Ok(())
}

/// A machine ID is exactly 32 lowercase hex digits (machine-id(5)), not all zero.
pub fn check_machine_id(id: &str) -> Result<(), &'static str> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("must be 32 lowercase hex digits");
    }
    if id.bytes().all(|b| b == b'0') {
        return Err("must not be all zero");
    }
    Ok(())
}

/// Decodes hex entropy: an even number of hex digits, 1 to [`MAX_ENTROPY_BYTES`] bytes.
pub fn decode_entropy(hex: &str) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("empty".into());
    }
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    if hex.len() / 2 > MAX_ENTROPY_BYTES {
        return Err(format!("more than {MAX_ENTROPY_BYTES} bytes"));
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err("not hex".to_owned()),
        })
        .collect()
}

/// Where and how the plan is applied.
#[derive(Debug, Clone)]
pub struct Target {
    /// The root directory the `/etc` files are written under (`/` in the VM).
    pub root: PathBuf,
    /// Whether to make the system calls (the VM); test mode only writes the files.
    pub live: bool,
}

/// Applies a validated plan in order: entropy, machine ID, hostname, connections, token. Stops
/// at the first failure (later fields, the token among them, are left as they were).
pub fn apply(plan: &Plan, target: &Target, token: &Token) -> Result<(), Failure> {
    if let Some(bytes) = &plan.entropy
        && target.live
    {
        add_entropy(bytes).map_err(|e| fail("entropy", e.to_string()))?;
    }
    if let Some(id) = &plan.machine_id {
        write_machine_id(&target.root, id).map_err(|e| fail("machine_id", e.to_string()))?;
    }
    if let Some(name) = &plan.hostname {
        set_hostname(target, name).map_err(|e| fail("hostname", e))?;
    }
    if plan.reset_connections && target.live {
        match crate::tcp_reset::reset_outside_connections() {
            Ok(report) => eprintln!("lohar: set identity: {report}"),
            Err(e) => return Err(fail("reset_connections", e)),
        }
    }
    if let Some(new) = &plan.token {
        token.renew(new).map_err(|why| fail("token", why))?;
    }
    Ok(())
}

/// Writes `text` to `path` atomically: a temporary file beside it, fsynced, renamed over it.
/// Readers see the old content or the new one, never a partial file.
pub fn write_atomic(path: &Path, text: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.lohar-tmp"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(text)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `/etc/machine-id`, and `/var/lib/dbus/machine-id` when that is a file of its own (not a
/// link to the first).
fn write_machine_id(root: &Path, id: &str) -> std::io::Result<()> {
    let text = format!("{id}\n");
    write_atomic(&root.join("etc/machine-id"), text.as_bytes(), 0o444)?;
    let dbus = root.join("var/lib/dbus/machine-id");
    if std::fs::symlink_metadata(&dbus).is_ok_and(|m| m.file_type().is_file()) {
        write_atomic(&dbus, text.as_bytes(), 0o444)?;
    }
    Ok(())
}

/// `sethostname(2)` (live only), then `/etc/hostname`, the old name's entries in `/etc/hosts`,
/// and `/etc/mailname` if there is one.
fn set_hostname(target: &Target, name: &str) -> Result<(), String> {
    let etc = target.root.join("etc");
    let old = std::fs::read_to_string(etc.join("hostname"))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let old = match (old, target.live) {
        (Some(old), _) => Some(old),
        (None, true) => nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
        (None, false) => None,
    };
    if target.live {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
    }
    let line = format!("{name}\n");
    write_atomic(&etc.join("hostname"), line.as_bytes(), 0o644)
        .map_err(|e| format!("/etc/hostname: {e}"))?;
    let hosts = etc.join("hosts");
    let current = std::fs::read_to_string(&hosts).unwrap_or_default();
    let renamed = rename_in_hosts(&current, old.as_deref(), name);
    if renamed != current {
        write_atomic(&hosts, renamed.as_bytes(), 0o644).map_err(|e| format!("/etc/hosts: {e}"))?;
    }
    let mailname = etc.join("mailname");
    if std::fs::symlink_metadata(&mailname).is_ok_and(|m| m.file_type().is_file()) {
        write_atomic(&mailname, line.as_bytes(), 0o644)
            .map_err(|e| format!("/etc/mailname: {e}"))?;
    }
    Ok(())
}

/// `/etc/hosts` with the old hostname replaced by the new one on the loopback lines
/// (`127.0.0.1`, `127.0.1.1`, `::1`); a file without any loopback line naming the host gets
/// `127.0.1.1 <name>` appended so the name resolves.
pub fn rename_in_hosts(text: &str, old: Option<&str>, new: &str) -> String {
    let mut out = String::with_capacity(text.len() + new.len());
    let mut named = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let addr = fields.next().unwrap_or("");
        let loopback = matches!(addr, "127.0.0.1" | "127.0.1.1" | "::1");
        if !loopback || line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let names: Vec<&str> = fields.map(|n| if Some(n) == old { new } else { n }).collect();
        if names.contains(&new) {
            named = true;
        }
        out.push_str(addr);
        for n in names {
            out.push(' ');
            out.push_str(n);
        }
        out.push('\n');
    }
    if !named {
        out.push_str(&format!("127.0.1.1 {new}\n"));
    }
    out
}

/// `RNDADDENTROPY` (`_IOW('R', 0x03, int[2])` in linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` (`_IO('R', 0x07)`).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds `bytes` to the kernel's input pool crediting every bit, then reseeds the CRNG so the
/// very next read of `/dev/urandom` depends on them.
fn add_entropy(bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let urandom = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    let bits = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    // Whole u32 words, as the struct's buf is declared.
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a valid rand_pool_info of `len` bytes of data, alive for the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(annotate("RNDADDENTROPY", std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if rc != 0 {
        return Err(annotate("RNDRESEEDCRNG", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn annotate(what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        let rows: &[(&str, &str, bool)] = &[
            ("simple", "dev", true),
            ("digits and hyphen", "sb-01", true),
            ("upper case", "Dev", true),
            ("63 characters", &"a".repeat(63), true),
            ("empty", "", false),
            ("64 characters", &"a".repeat(64), false),
            ("dot", "a.b", false),
            ("underscore", "a_b", false),
            ("leading hyphen", "-a", false),
            ("trailing hyphen", "a-", false),
            ("space", "a b", false),
            ("newline", "a\nb", false),
            ("non ascii", "h\u{e9}", false),
        ];
        for (name, input, ok) in rows {
            assert_eq!(check_hostname(input).is_ok(), *ok, "{name}");
        }
    }

    #[test]
    fn machine_ids() {
        let rows: &[(&str, &str, bool)] = &[
            ("lowercase hex", "0123456789abcdef0123456789abcdef", true),
            ("uppercase", "0123456789ABCDEF0123456789ABCDEF", false),
            ("31 digits", &"a".repeat(31), false),
            ("33 digits", &"a".repeat(33), false),
            ("uuid with dashes", "01234567-89ab-cdef-0123-456789abcdef", false),
            ("not hex", &"g".repeat(32), false),
            ("all zero", &"0".repeat(32), false),
            ("trailing newline", "0123456789abcdef0123456789abcde\n", false),
        ];
        for (name, input, ok) in rows {
            assert_eq!(check_machine_id(input).is_ok(), *ok, "{name}");
        }
    }

    #[test]
    fn entropy_decoding() {
        assert_eq!(decode_entropy("00ff10Ab").unwrap(), vec![0, 0xff, 0x10, 0xab]);
        assert_eq!(decode_entropy(&"ab".repeat(512)).unwrap().len(), 512);
        let rows: &[(&str, &str)] = &[
            ("empty", ""),
            ("odd", "abc"),
            ("not hex", "zz"),
            ("sign", "+1"),
            ("too long", &"ab".repeat(513)),
        ];
        for (name, input) in rows {
            assert!(decode_entropy(input).is_err(), "{name}");
        }
    }

    #[test]
    fn validation_names_the_first_bad_field_in_order() {
        let good = SetIdentity {
            token: Some("t".repeat(32)),
            hostname: Some("clone-1".into()),
            machine_id: Some("a".repeat(32)),
            entropy: Some("ab".repeat(64)),
            reset_connections: true,
        };
        let plan = validate(&good).unwrap();
        assert_eq!(plan.entropy.as_ref().map(Vec::len), Some(64));
        let bad = |f: fn(&mut SetIdentity)| {
            let mut req = good.clone();
            f(&mut req);
            validate(&req).unwrap_err().field
        };
        assert_eq!(bad(|r| r.entropy = Some("x".into())), "entropy");
        assert_eq!(bad(|r| r.machine_id = Some("X".into())), "machine_id");
        assert_eq!(bad(|r| r.hostname = Some("a_b".into())), "hostname");
        assert_eq!(bad(|r| r.token = Some(String::new())), "token");
        assert_eq!(validate(&SetIdentity::default()).unwrap(), Plan::default());
    }

    #[test]
    fn hosts_lines_follow_the_hostname() {
        let rows: &[(&str, &str, Option<&str>, &str)] = &[
            (
                "lohar's own file",
                "127.0.0.1 localhost old\n::1 localhost old\n",
                Some("old"),
                "127.0.0.1 localhost new\n::1 localhost new\n",
            ),
            (
                "debian 127.0.1.1 line",
                "127.0.0.1\tlocalhost\n127.0.1.1\told\n10.0.0.9 other\n",
                Some("old"),
                "127.0.0.1 localhost\n127.0.1.1 new\n10.0.0.9 other\n",
            ),
            (
                "no line names the host",
                "127.0.0.1 localhost\n",
                Some("old"),
                "127.0.0.1 localhost\n127.0.1.1 new\n",
            ),
            ("empty file", "", None, "127.0.1.1 new\n"),
            (
                "old name elsewhere is kept",
                "# old\n10.0.0.2 old\n127.0.0.1 localhost old\n",
                Some("old"),
                "# old\n10.0.0.2 old\n127.0.0.1 localhost new\n",
            ),
        ];
        for (name, text, old, want) in rows {
            assert_eq!(rename_in_hosts(text, *old, "new"), *want, "{name}");
        }
    }

    #[test]
    fn atomic_write_replaces_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        std::fs::write(&path, "old\n").unwrap();
        write_atomic(&path, b"new\n", 0o444).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o444);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left");
        // A directory in the way fails and leaves no temporary file behind.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write_atomic(&blocked, b"x", 0o644).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn apply_writes_files_in_order_and_stops_before_the_token() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(root.path().join("var/lib/dbus")).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hostname"), "old\n").unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost old\n").unwrap();
        std::fs::write(root.path().join("var/lib/dbus/machine-id"), "x\n").unwrap();
        let target = Target { root: root.path().to_owned(), live: false };
        let token = Token::new("before".into());
        let id = "0123456789abcdef0123456789abcdef";
        let req = SetIdentity {
            token: Some("after".into()),
            hostname: Some("new".into()),
            machine_id: Some(id.into()),
            ..Default::default()
        };
        apply(&validate(&req).unwrap(), &target, &token).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("etc/machine-id"), format!("{id}\n"));
        assert_eq!(read("var/lib/dbus/machine-id"), format!("{id}\n"));
        assert_eq!(read("etc/hostname"), "new\n");
        assert_eq!(read("etc/hosts"), "127.0.0.1 localhost new\n");
        assert_eq!(token.current(), "after");

        // The machine ID cannot be written: hostname and token stay as they were.
        std::fs::remove_file(etc.join("machine-id")).unwrap();
        std::fs::create_dir_all(etc.join("machine-id/blocked")).unwrap();
        let again = SetIdentity {
            token: Some("third".into()),
            hostname: Some("newer".into()),
            machine_id: Some(id.into()),
            ..Default::default()
        };
        let err = apply(&validate(&again).unwrap(), &target, &token).unwrap_err();
        assert_eq!(err.field, "machine_id");
        assert!(err.to_string().starts_with("set identity: machine_id: "), "{err}");
        assert_eq!(read("etc/hostname"), "new\n");
        assert_eq!(token.current(), "after");
    }
}
