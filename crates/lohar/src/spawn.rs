//! Building the commands the agent runs: environment, credentials, process group or session.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

/// The unprivileged user every exec runs as unless root is requested.
pub const USER_UID: u32 = 1000;
/// Its primary group.
pub const USER_GID: u32 = 1000;
/// Its home directory inside the guest.
pub const USER_HOME: &str = "/home/lohar";
/// The standard PATH for execs and for the agent itself.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// uid/gid 1000 with its supplementary groups from /etc/group.
    User,
    /// root.
    Root,
}

impl RunAs {
    /// `"root"` selects root; anything else the unprivileged user.
    pub fn from_request(user: Option<&str>) -> Self {
        if user == Some("root") { RunAs::Root } else { RunAs::User }
    }
}

/// How the child is detached from the agent's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// New process group (one-shot exec): KILL signals `-pid`.
    ProcessGroup,
    /// New session (sessions, detached exec).
    Session,
    /// New session with fd 0 as controlling terminal (TTY sessions).
    SessionWithTty,
}

/// The environment of an exec: defaults, then the agent's config env, then the request's env.
pub fn build_env(
    run_as: RunAs,
    config_env: &BTreeMap<String, String>,
    request_env: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let home = match run_as {
        RunAs::User => USER_HOME,
        RunAs::Root => "/root",
    };
    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("TERM", "xterm-256color"),
        ("HOME", home),
        ("LANG", "en_US.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(config_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(extra) = request_env {
        env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env
}

/// Looks `program` up in the exec's PATH in the agent, so the child makes exactly one `execve`
/// (std's child-side search tries every PATH entry in turn, and each failed exec in the forked
/// child is slow under emulation). Names with a `/` and names not found are left to `execve`,
/// which reports the error.
fn resolve_program(program: &str, env: &BTreeMap<String, String>) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return program.into();
    }
    let path = env.get("PATH").map(String::as_str).unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| program.into())
}

/// Supplementary groups of the unprivileged user, from /etc/group. v1 ran execs with no
/// supplementary groups at all, so a user in the `docker` group could not use docker. Parsing
/// two files on every exec showed up in profiles, so the result is cached until /etc/passwd or
/// /etc/group changes (`usermod -aG` takes effect for the next exec).
fn supplementary_groups() -> Vec<libc::gid_t> {
    type Cache = Option<((Option<SystemTime>, Option<SystemTime>), Vec<libc::gid_t>)>;
    static CACHE: Mutex<Cache> = Mutex::new(None);
    let mtime = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stamp = (mtime("/etc/passwd"), mtime("/etc/group"));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match &*cache {
        Some((cached, groups)) if *cached == stamp => groups.clone(),
        _ => {
            let groups = read_supplementary_groups();
            *cache = Some((stamp, groups.clone()));
            groups
        }
    }
}

fn read_supplementary_groups() -> Vec<libc::gid_t> {
    let user = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let uid = fields.nth(1)?;
                (uid == USER_UID.to_string()).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| "lohar".to_owned());
    let mut groups = vec![USER_GID];
    if let Ok(group_file) = std::fs::read_to_string("/etc/group") {
        for line in group_file.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let [_, _, gid, members] = fields[..]
                && members.split(',').any(|m| m == user)
                && let Ok(gid) = gid.parse::<libc::gid_t>()
                && !groups.contains(&gid)
            {
                groups.push(gid);
            }
        }
    }
    groups
}

/// A command for `argv` with a clean environment, the working directory, credentials and
/// grouping applied. `argv[0]` is looked up in the PATH of `env` (std does this when PATH is set
/// explicitly), which fixes v1's lookup against the agent's own PATH.
pub fn command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    run_as: RunAs,
    grouping: Grouping,
) -> io::Result<Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(resolve_program(program, env));
    cmd.args(args).env_clear().envs(env);
    if let Some(dir) = cwd.filter(|d| !d.is_empty()) {
        // Checked here so the error names the directory (a failed chdir in the child only
        // says "No such file or directory", as if the program were missing).
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("working directory {dir:?} is not a directory"),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("working directory {dir:?}: {e}")));
            }
        }
        cmd.current_dir(Path::new(dir));
    }
    if grouping == Grouping::ProcessGroup {
        cmd.process_group(0);
    }
    // Dropping privileges needs setgroups before setuid, which std cannot express (it clears
    // supplementary groups), so credentials are applied here. Only root can change them; in a
    // non-root test run the command keeps the agent's identity.
    let creds = match run_as {
        RunAs::User if nix::unistd::geteuid().is_root() => Some(supplementary_groups()),
        _ => None,
    };
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (sigprocmask, setsid, ioctl, setgroups, setgid, setuid) on data allocated before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The agent blocks SIGCHLD/SIGTERM/SIGINT in every thread for its reaper; commands
            // must start with nothing blocked or they cannot be terminated.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if grouping != Grouping::ProcessGroup && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if grouping == Grouping::SessionWithTty
                && libc::ioctl(0, libc::TIOCSCTTY as _, 0 as libc::c_int) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(groups) = &creds
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(USER_GID) < 0
                    || libc::setuid(USER_UID) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}
