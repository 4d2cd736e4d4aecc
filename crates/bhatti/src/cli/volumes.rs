//! `bhatti volume`: v1's nine subcommands over `/volumes` (host.md 1.19 and 5), and the
//! `create --volume name:/mount[:ro]` parser.

use std::time::Duration;

use clap::Subcommand;
use http::Method;

use super::client::{QUICK, enc};
use super::error::{CliError, exit};
use super::ui::{Spinner, age, confirm, table};
use super::{Ctx, print_json};

/// Making, growing and copying a volume file.
const FILE_WORK: Duration = Duration::from_secs(600);
/// A backup or restore: the daemon's own deadline is 30 minutes per transfer.
const TRANSFER: Duration = Duration::from_secs(65 * 60);

/// The `volume` subcommands.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a persistent volume (an empty ext4 file system).
    Create {
        /// Name.
        #[arg(long)]
        name: String,
        /// Size in MB.
        #[arg(long, value_name = "MB")]
        size: u32,
    },
    /// List your volumes.
    #[command(visible_alias = "ls")]
    List,
    /// Delete a volume (refused while attached).
    #[command(visible_alias = "rm")]
    Delete {
        /// Volume name.
        name: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Grow a detached volume.
    Resize {
        /// Volume name.
        name: String,
        /// The new size in MB (larger than the current one).
        #[arg(long, value_name = "MB")]
        size: u32,
    },
    /// Copy a detached volume into a new, independent one.
    Clone {
        /// The volume to copy.
        source: String,
        /// The new volume's name.
        #[arg(long)]
        name: String,
    },
    /// Back a volume up to the daemon's S3 bucket now.
    Backup {
        /// Volume name.
        name: String,
    },
    /// List a volume's backups, newest first.
    BackupList {
        /// Volume name.
        name: String,
    },
    /// Restore a detached volume from one of its backups.
    Restore {
        /// Volume name.
        name: String,
        /// The backup (from `backup-list`).
        #[arg(long)]
        backup_id: String,
    },
    /// Delete a backup.
    BackupDelete {
        /// Volume name.
        name: String,
        /// The backup's ID.
        backup_id: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
}

fn vol_path(name: &str, rest: &str) -> String {
    format!("/volumes/{}{rest}", enc(name))
}

fn mb(n: u32) -> String {
    format!("{n}MB")
}

fn one_line(v: &api::PersistentVolume) -> String {
    format!("{} {} {} {}", v.id, v.name, mb(v.size_mb), v.status)
}

/// Runs a `volume` subcommand.
pub async fn run(ctx: &Ctx, cmd: VolumeCommand) -> anyhow::Result<u8> {
    match cmd {
        VolumeCommand::Create { name, size } => {
            let body = api::CreateVolumeRequest { name: name.clone(), size_mb: size };
            let spinner = Spinner::start(format!("creating volume {name}"));
            let v: api::PersistentVolume =
                ctx.client.json(Method::POST, "/volumes", Some(&body), FILE_WORK).await?;
            drop(spinner);
            if ctx.json {
                return print_json(&v).map(|()| exit::OK);
            }
            println!("{}", one_line(&v));
        }
        VolumeCommand::List => {
            let list: Vec<api::PersistentVolume> = ctx.client.get("/volumes").await?;
            if ctx.json {
                return print_json(&list).map(|()| exit::OK);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| {
                    let attached = if v.attachments.is_empty() {
                        "-".to_owned()
                    } else {
                        v.attachments
                            .iter()
                            .map(|a| {
                                let ro = if a.read_only { ":ro" } else { "" };
                                format!("{}:{}{ro}", a.sandbox_id, a.mount)
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    vec![
                        v.name.clone(),
                        mb(v.size_mb),
                        v.status.clone(),
                        attached,
                        age(&v.created_at),
                        v.id.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "SIZE", "STATUS", "ATTACHED", "AGE", "ID"], &rows));
        }
        VolumeCommand::Delete { name, yes } => {
            if !confirm(&format!("Delete volume {name}?"), yes)? {
                return Ok(exit::OK);
            }
            let body: api::StatusOnly =
                ctx.client.json::<_, ()>(Method::DELETE, &vol_path(&name, ""), None, QUICK).await?;
            if ctx.json {
                return print_json(&body).map(|()| exit::OK);
            }
            println!("volume/{name} deleted");
        }
        VolumeCommand::Resize { name, size } => {
            let body = api::ResizeVolumeRequest { size_mb: size };
            let spinner = Spinner::start(format!("resizing volume {name}"));
            let r: api::VolumeResized = ctx
                .client
                .json(Method::POST, &vol_path(&name, "/resize"), Some(&body), FILE_WORK)
                .await?;
            drop(spinner);
            if ctx.json {
                return print_json(&r).map(|()| exit::OK);
            }
            println!("volume/{name} resized to {}", mb(r.size_mb));
        }
        VolumeCommand::Clone { source, name } => {
            let body = api::CloneVolumeRequest { name: name.clone() };
            let spinner = Spinner::start(format!("cloning volume {source} to {name}"));
            let v: api::PersistentVolume = ctx
                .client
                .json(Method::POST, &vol_path(&source, "/snapshot"), Some(&body), FILE_WORK)
                .await?;
            drop(spinner);
            if ctx.json {
                return print_json(&v).map(|()| exit::OK);
            }
            println!("{}", one_line(&v));
        }
        VolumeCommand::Backup { name } => {
            let spinner = Spinner::start(format!("backing up volume {name}"));
            let b: api::VolumeBackup = ctx
                .client
                .json::<_, ()>(Method::POST, &vol_path(&name, "/backups"), None, TRANSFER)
                .await?;
            drop(spinner);
            if ctx.json {
                return print_json(&b).map(|()| exit::OK);
            }
            println!("backup {} of volume/{name} created ({} bytes)", b.id, b.size_bytes);
        }
        VolumeCommand::BackupList { name } => {
            let list: Vec<api::VolumeBackup> = ctx.client.get(&vol_path(&name, "/backups")).await?;
            if ctx.json {
                return print_json(&list).map(|()| exit::OK);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        b.id.clone(),
                        b.size_bytes.to_string(),
                        b.created_at.clone(),
                        b.s3_key.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "BYTES", "CREATED", "KEY"], &rows));
        }
        VolumeCommand::Restore { name, backup_id } => {
            let body = api::RestoreRequest { backup_id };
            let spinner = Spinner::start(format!("restoring volume {name}"));
            let r: api::Restored = ctx
                .client
                .json(Method::POST, &vol_path(&name, "/backups/restore"), Some(&body), TRANSFER)
                .await?;
            drop(spinner);
            if ctx.json {
                return print_json(&r).map(|()| exit::OK);
            }
            println!("volume/{name} restored from backup {}", r.backup_id);
        }
        VolumeCommand::BackupDelete { name, backup_id, yes } => {
            if !confirm(&format!("Delete backup {backup_id} of volume {name}?"), yes)? {
                return Ok(exit::OK);
            }
            let path = vol_path(&name, &format!("/backups/{}", enc(&backup_id)));
            let body: api::StatusOnly =
                ctx.client.json::<_, ()>(Method::DELETE, &path, None, QUICK).await?;
            if ctx.json {
                return print_json(&body).map(|()| exit::OK);
            }
            println!("backup {backup_id} deleted");
        }
    }
    Ok(exit::OK)
}

/// `--volume name:/mount[:ro]` (v1's syntax; never auto-created).
pub fn parse_volume_flag(text: &str) -> Result<api::CreateVolume, CliError> {
    let bad = || CliError::Usage(format!("--volume {text:?}: use name:/mount[:ro]"));
    let (name, rest) = text.split_once(':').ok_or_else(bad)?;
    let (mount, read_only) = match rest.rsplit_once(':') {
        Some((mount, "ro")) => (mount, true),
        Some((mount, "rw")) => (mount, false),
        Some(_) => return Err(bad()),
        None => (rest, false),
    };
    if name.is_empty() || mount.is_empty() {
        return Err(bad());
    }
    Ok(api::CreateVolume {
        name: name.to_owned(),
        mount: mount.to_owned(),
        size_mb: 0,
        auto_create: false,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flag_as_v1() {
        type Parsed<'a> = Option<(&'a str, &'a str, bool)>;
        let rows: [(&str, &str, Parsed<'_>); 7] = [
            ("read-write", "data:/data", Some(("data", "/data", false))),
            ("read-only", "data:/mnt/ro:ro", Some(("data", "/mnt/ro", true))),
            ("explicit rw", "data:/data:rw", Some(("data", "/data", false))),
            ("no mount", "data", None),
            ("empty name", ":/data", None),
            ("empty mount", "data:", None),
            ("unknown mode", "data:/d:rx", None),
        ];
        for (name, input, want) in rows {
            let got = parse_volume_flag(input).ok().map(|v| (v.name, v.mount, v.read_only));
            let want = want.map(|(n, m, ro)| (n.to_owned(), m.to_owned(), ro));
            assert_eq!(got, want, "{name}");
        }
    }
}
