//! `bhatti user create|list|delete|rotate-key`: v1 has no HTTP surface for users; these open
//! the daemon's store (`<data_dir>/state.db`, WAL: safe while the daemon runs). A key is shown
//! once, when made; only its SHA-256 is kept.

use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use super::error::{CliError, exit};
use super::print_json;
use super::ui::{confirm, table};

/// `bhatti user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its API key (once).
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: Limits,
    },
    /// Change a user's limits (only those given).
    Update {
        /// The user's name.
        name: String,
        #[command(flatten)]
        limits: Limits,
    },
    /// List users.
    #[command(visible_alias = "ls")]
    List,
    /// Delete a user that owns nothing live.
    #[command(visible_alias = "rm")]
    Delete {
        /// The user's name.
        name: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Replace a user's key (the old one stops working at once) and print the new one.
    RotateKey {
        /// The user's name.
        name: String,
    },
}

/// Every per-user limit (`create`: unset ones get v1's defaults; `update`: unset ones stay).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Limits {
    /// Live sandboxes at most (default 5).
    #[arg(long)]
    max_sandboxes: Option<u32>,
    /// vCPUs per sandbox at most (default 4).
    #[arg(long)]
    max_cpus: Option<u32>,
    /// Memory per sandbox at most, MB (default 4096).
    #[arg(long, value_name = "MB")]
    max_memory: Option<u32>,
    /// The disks of all live sandboxes together at most, MB (default 51200).
    #[arg(long, value_name = "MB")]
    max_disk: Option<u32>,
    /// Volume storage at most, MB (default 20480).
    #[arg(long, value_name = "MB")]
    max_volume_storage: Option<u32>,
    /// Own images at most (default 10).
    #[arg(long)]
    max_images: Option<u32>,
    /// Named snapshots at most (default 5).
    #[arg(long)]
    max_snapshots: Option<u32>,
    /// Execs running at once at most (default 32).
    #[arg(long)]
    max_execs: Option<u32>,
}

impl Limits {
    /// `base` with the limits given here.
    fn apply(&self, base: store::Quotas) -> store::Quotas {
        store::Quotas {
            max_sandboxes: self.max_sandboxes.unwrap_or(base.max_sandboxes),
            max_cpus_per_sandbox: self.max_cpus.unwrap_or(base.max_cpus_per_sandbox),
            max_memory_mb_per_sandbox: self.max_memory.unwrap_or(base.max_memory_mb_per_sandbox),
            max_volume_storage_mb: self.max_volume_storage.unwrap_or(base.max_volume_storage_mb),
            max_images: self.max_images.unwrap_or(base.max_images),
            max_snapshots: self.max_snapshots.unwrap_or(base.max_snapshots),
            max_disk_mb: self.max_disk.unwrap_or(base.max_disk_mb),
            max_concurrent_execs: self.max_execs.unwrap_or(base.max_concurrent_execs),
        }
    }

    fn is_empty(&self) -> bool {
        [
            self.max_sandboxes,
            self.max_cpus,
            self.max_memory,
            self.max_disk,
            self.max_volume_storage,
            self.max_images,
            self.max_snapshots,
            self.max_execs,
        ]
        .iter()
        .all(Option::is_none)
    }
}

/// v1's user JSON (the key hash never appears; a fresh key only in create's and rotate's).
#[derive(Debug, Serialize)]
struct UserJson {
    id: String,
    name: String,
    max_sandboxes: u32,
    max_cpus_per_sandbox: u32,
    max_memory_mb_per_sandbox: u32,
    subnet_index: u32,
    max_volume_storage_mb: u32,
    max_images: u32,
    max_snapshots: u32,
    /// Ours.
    max_disk_mb: u32,
    /// Ours.
    max_concurrent_execs: u32,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
}

fn to_json(u: &store::User, key: Option<&store::ApiKey>) -> UserJson {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(u.created_at.millis()).unwrap_or(0));
    UserJson {
        id: u.id.clone(),
        name: u.name.clone(),
        max_sandboxes: u.quotas.max_sandboxes,
        max_cpus_per_sandbox: u.quotas.max_cpus_per_sandbox,
        max_memory_mb_per_sandbox: u.quotas.max_memory_mb_per_sandbox,
        subnet_index: u.subnet_index,
        max_volume_storage_mb: u.quotas.max_volume_storage_mb,
        max_images: u.quotas.max_images,
        max_snapshots: u.quotas.max_snapshots,
        max_disk_mb: u.quotas.max_disk_mb,
        max_concurrent_execs: u.quotas.max_concurrent_execs,
        created_at: humantime::format_rfc3339_millis(at).to_string(),
        api_key: key.map(|k| k.expose().to_owned()),
    }
}

/// A store error as a CLI failure: not found is exit 3, the rest exit 1 with its message.
fn store_err(e: store::StoreError) -> anyhow::Error {
    if e.kind() == store::ErrorKind::NotFound {
        CliError::NotFound(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

fn open(data_dir: &Path) -> anyhow::Result<store::Store> {
    let path = data_dir.join("state.db");
    if !path.exists() {
        return Err(CliError::NotFound(format!(
            "no store at {}: point --data-dir (or BHATTI_DATA_DIR) at the daemon's data directory",
            path.display()
        ))
        .into());
    }
    // The store's error names the file.
    Ok(store::Store::open(&path)?)
}

fn event(kind: &str, user: &store::User) -> store::NewEvent {
    store::NewEvent {
        user_id: user.id.clone(),
        meta: serde_json::json!({ "name": user.name, "via": "cli" }).to_string(),
        ..store::NewEvent::now(kind)
    }
}

fn print_key(user: &store::User, key: &store::ApiKey, verb: &str) {
    println!("User {verb}:");
    println!("  ID:      {}", user.id);
    println!("  Name:    {}", user.name);
    println!("  Subnet:  {}", user.subnet_index);
    println!("  API key: {}", key.expose());
    println!();
    println!("The key is shown only now. To use it:");
    println!("  export BHATTI_TOKEN={}", key.expose());
}

/// Runs a user command against the store in `data_dir`.
pub fn run(data_dir: &Path, cmd: UserCommand, json: bool) -> anyhow::Result<u8> {
    let mut s = open(data_dir)?;
    match cmd {
        UserCommand::Create { name, limits } => {
            let quotas = limits.apply(store::Quotas::default());
            let (user, key) = s.create_user(&name, quotas).map_err(store_err)?;
            // The event log is best effort: the user exists either way.
            let _ = s.record_events(&[event("user.created", &user)]);
            if json {
                print_json(&to_json(&user, Some(&key)))?;
            } else {
                print_key(&user, &key, "created");
            }
        }
        UserCommand::Update { name, limits } => {
            if limits.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give at least one --max-* limit".into(),
                )
                .into());
            }
            let user = s.user_by_name(&name).map_err(store_err)?;
            s.set_quotas(&user.id, limits.apply(user.quotas)).map_err(store_err)?;
            let user = s.user(&user.id).map_err(store_err)?;
            let _ = s.record_events(&[event("user.updated", &user)]);
            if json {
                print_json(&to_json(&user, None))?;
            } else {
                let q = user.quotas;
                println!("user/{} updated", user.name);
                println!(
                    "  sandboxes {}, cpus {}, memory {} MB, disk {} MB, volume storage {} MB, \
                     images {}, snapshots {}, execs {}",
                    q.max_sandboxes,
                    q.max_cpus_per_sandbox,
                    q.max_memory_mb_per_sandbox,
                    q.max_disk_mb,
                    q.max_volume_storage_mb,
                    q.max_images,
                    q.max_snapshots,
                    q.max_concurrent_execs
                );
            }
        }
        UserCommand::List => {
            let users = s.list_users().map_err(store_err)?;
            if json {
                let list: Vec<UserJson> = users.iter().map(|u| to_json(u, None)).collect();
                return print_json(&list).map(|()| exit::OK);
            }
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.id.clone(),
                        u.name.clone(),
                        u.quotas.max_sandboxes.to_string(),
                        u.quotas.max_cpus_per_sandbox.to_string(),
                        u.quotas.max_memory_mb_per_sandbox.to_string(),
                        u.quotas.max_disk_mb.to_string(),
                        u.quotas.max_concurrent_execs.to_string(),
                        u.subnet_index.to_string(),
                    ]
                })
                .collect();
            let headers = [
                "ID",
                "NAME",
                "MAX_SANDBOXES",
                "MAX_CPUS",
                "MAX_MEMORY_MB",
                "MAX_DISK_MB",
                "MAX_EXECS",
                "SUBNET",
            ];
            print!("{}", table(&headers, &rows));
        }
        UserCommand::Delete { name, yes } => {
            let user = s.user_by_name(&name).map_err(store_err)?;
            if !confirm(&format!("Delete user {} ({})?", user.name, user.id), yes)? {
                return Ok(exit::OK);
            }
            s.delete_user(&user.id).map_err(store_err)?;
            let _ = s.record_events(&[event("user.deleted", &user)]);
            if json {
                print_json(&serde_json::json!({ "status": "deleted", "id": user.id }))?;
            } else {
                println!("user/{} deleted", user.name);
            }
        }
        UserCommand::RotateKey { name } => {
            let user = s.user_by_name(&name).map_err(store_err)?;
            let key = s.rotate_api_key(&user.id).map_err(store_err)?;
            let _ = s.record_events(&[event("user.key_rotated", &user)]);
            if json {
                print_json(&to_json(&user, Some(&key)))?;
            } else {
                print_key(&user, &key, "key rotated");
            }
        }
    }
    Ok(exit::OK)
}
