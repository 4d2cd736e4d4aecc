//! `snapshot` (v1's `create <sb> --name`, `list`, `resume <snap> [--name]`, `delete <snap>`,
//! plus `inspect <snap>`) and `template` (`create`, `list`, `inspect`, `delete`).

use std::time::Duration;

use clap::{Args, Subcommand};
use http::Method;

use super::client::{QUICK, enc, sb_path};
use super::error::{CliError, exit};
use super::ui::{Spinner, age, cache_edit, confirm, table};
use super::{Ctx, key_values, print_json};

/// A checkpoint copies the guest's RAM and disk; a resume starts a VM.
const SLOW: Duration = Duration::from_secs(600);

/// `bhatti snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Checkpoint a running sandbox as a named snapshot (it keeps running).
    Create {
        /// Name, ID or ID prefix of the sandbox.
        sandbox: String,
        /// The snapshot's name.
        #[arg(long)]
        name: String,
    },
    /// List your snapshots.
    #[command(visible_alias = "ls")]
    List,
    /// Show one snapshot.
    Inspect {
        /// The snapshot's name.
        snapshot: String,
    },
    /// Start a new sandbox from a snapshot (also beside its running source); prints
    /// `id<TAB>name<TAB>ip`.
    Resume {
        /// The snapshot's name.
        snapshot: String,
        /// The new sandbox's name (default `<snapshot>-<6 hex>`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a snapshot and its files.
    #[command(visible_alias = "rm")]
    Delete {
        /// The snapshot's name.
        snapshot: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
}

/// `bhatti template ...` (templates are global: every user sees them).
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Create a template.
    Create(TemplateArgs),
    /// List templates.
    #[command(visible_alias = "ls")]
    List,
    /// Show one template.
    Inspect {
        /// ID or name.
        template: String,
    },
    /// Delete a template (sandboxes made from it are not touched).
    #[command(visible_alias = "rm")]
    Delete {
        /// ID or name.
        template: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Prepare the template's shape snapshot now, so its first create restores instead of
    /// booting.
    Warm {
        /// ID or name.
        template: String,
    },
}

/// `bhatti template create`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Name.
    #[arg(long)]
    name: String,
    /// Image (the daemon's default when not given).
    #[arg(long)]
    image: Option<String>,
    /// vCPUs (default 1).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory in MB (default 2048, v1's).
    #[arg(long, value_name = "MB")]
    memory: Option<u32>,
    /// Disk size in MB.
    #[arg(long, value_name = "MB")]
    disk_size: Option<u32>,
    /// A secret injected as an environment variable (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// Label (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// A persistent volume to mount, `name:/mount[:ro]` (repeatable).
    #[arg(long = "volume", value_name = "NAME:MOUNT[:ro]")]
    volumes: Vec<String>,
    /// Create the `--volume`s when missing.
    #[arg(long)]
    auto_create: bool,
}

/// `name:/mount[:ro]`.
fn mount(spec: &str, auto_create: bool) -> Result<api::TemplateMount, CliError> {
    let (rest, readonly) = match spec.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (spec, false),
    };
    match rest.split_once(':') {
        Some((name, target)) if !name.is_empty() && target.starts_with('/') => {
            Ok(api::TemplateMount {
                volume_name: name.to_owned(),
                target: target.to_owned(),
                readonly,
                auto_create,
            })
        }
        _ => Err(CliError::Usage(format!("--volume {spec:?}: use NAME:/mount[:ro]"))),
    }
}

fn snap_path(name: &str, rest: &str) -> String {
    format!("/snapshots/{}{rest}", enc(name).replace('/', "%2F"))
}

fn template_path(id: &str) -> String {
    format!("/templates/{}", enc(id).replace('/', "%2F"))
}

/// Runs a `snapshot` command.
pub async fn snapshot(ctx: &Ctx, cmd: SnapshotCommand) -> anyhow::Result<u8> {
    match cmd {
        SnapshotCommand::Create { sandbox, name } => {
            let spinner = Spinner::start(format!("checkpointing {sandbox} as {name}"));
            let body = api::CheckpointRequest { name };
            let path = sb_path(&sandbox, "/checkpoint");
            let snap: api::Snapshot =
                ctx.client.json(Method::POST, &path, Some(&body), SLOW).await?;
            drop(spinner);
            if ctx.json {
                return print_json(&snap).map(|()| exit::OK);
            }
            println!("snapshot/{} created from {} ({} MB)", snap.name, sandbox, snap.size_mb);
        }
        SnapshotCommand::List => {
            let list: Vec<api::Snapshot> = ctx.client.get("/snapshots").await?;
            if ctx.json {
                return print_json(&list).map(|()| exit::OK);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.id.clone(),
                        s.source_sandbox.clone(),
                        format!("{} MB", s.size_mb),
                        age(&s.created_at),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "ID", "SOURCE", "SIZE", "CREATED"], &rows));
        }
        SnapshotCommand::Inspect { snapshot } => {
            let s: api::Snapshot = ctx.client.get(&snap_path(&snapshot, "")).await?;
            if ctx.json {
                return print_json(&s).map(|()| exit::OK);
            }
            println!("Name:     {}", s.name);
            println!("ID:       {}", s.id);
            println!("Source:   {}", s.source_sandbox);
            println!("Size:     {} MB", s.size_mb);
            println!("Created:  {} ({})", s.created_at, age(&s.created_at));
        }
        SnapshotCommand::Resume { snapshot, name } => {
            let spinner = Spinner::start(format!("resuming {snapshot}"));
            let body = api::ResumeRequest { name: name.unwrap_or_default() };
            let path = snap_path(&snapshot, "/resume");
            let sb: api::Sandbox = ctx.client.json(Method::POST, &path, Some(&body), SLOW).await?;
            drop(spinner);
            cache_edit(&sb.name, true);
            if ctx.json {
                return print_json(&sb).map(|()| exit::OK);
            }
            println!("{}\t{}\t{}", sb.id, sb.name, sb.ip);
        }
        SnapshotCommand::Delete { snapshot, yes } => {
            // Looked up first: a missing one is exit 3 before any question.
            let s: api::Snapshot = ctx.client.get(&snap_path(&snapshot, "")).await?;
            if !confirm(&format!("Delete snapshot/{} ({} MB)?", s.name, s.size_mb), yes)? {
                return Ok(exit::OK);
            }
            let path = snap_path(&s.name, "");
            let body: api::StatusBody =
                ctx.client.json::<_, ()>(Method::DELETE, &path, None, QUICK).await?;
            if ctx.json {
                return print_json(&body).map(|()| exit::OK);
            }
            println!("snapshot/{} deleted", s.name);
        }
    }
    Ok(exit::OK)
}

/// A template by ID, else by name (the only one of that name).
async fn find_template(ctx: &Ctx, key: &str) -> anyhow::Result<api::Template> {
    match ctx.client.get::<api::Template>(&template_path(key)).await {
        Ok(t) => return Ok(t),
        Err(e) if super::exit_code(&e) == exit::NOT_FOUND => {}
        Err(e) => return Err(e),
    }
    let list: Vec<api::Template> = ctx.client.get("/templates").await?;
    let mut named: Vec<api::Template> = list.into_iter().filter(|t| t.name == key).collect();
    match named.len() {
        1 => Ok(named.remove(0)),
        0 => Err(CliError::NotFound(format!("template {key:?} not found")).into()),
        n => anyhow::bail!("{n} templates are named {key:?}: use an ID (bhatti template list)"),
    }
}

/// Runs a `template` command.
pub async fn template(ctx: &Ctx, cmd: TemplateCommand) -> anyhow::Result<u8> {
    match cmd {
        TemplateCommand::Create(a) => {
            let body = api::Template {
                name: a.name,
                image: a.image.unwrap_or_default(),
                cpus: a.cpus.unwrap_or(0.0),
                memory_mb: a.memory.unwrap_or(0),
                disk_size_mb: a.disk_size.unwrap_or(0),
                secrets: a.secrets,
                labels: key_values(&a.labels, "--label")?,
                mounts: a
                    .volumes
                    .iter()
                    .map(|v| mount(v, a.auto_create))
                    .collect::<Result<_, _>>()?,
                ..api::Template::default()
            };
            let t: api::Template =
                ctx.client.json(Method::POST, "/templates", Some(&body), QUICK).await?;
            if ctx.json {
                return print_json(&t).map(|()| exit::OK);
            }
            println!("template/{} created", t.name);
            println!("  ID:    {}", t.id);
            println!("  Use:   bhatti create --template {}", t.name);
        }
        TemplateCommand::List => {
            let list: Vec<api::Template> = ctx.client.get("/templates").await?;
            if ctx.json {
                return print_json(&list).map(|()| exit::OK);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.id.clone(),
                        t.image.clone(),
                        t.cpus.to_string(),
                        format!("{} MB", t.memory_mb),
                        age(&t.created_at),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "ID", "IMAGE", "CPUS", "MEMORY", "CREATED"], &rows));
        }
        TemplateCommand::Inspect { template } => {
            let t = find_template(ctx, &template).await?;
            if ctx.json {
                return print_json(&t).map(|()| exit::OK);
            }
            println!("Name:     {}", t.name);
            println!("ID:       {}", t.id);
            println!("Image:    {}", t.image);
            println!("CPUs:     {}", t.cpus);
            println!("Memory:   {} MB", t.memory_mb);
            if t.disk_size_mb > 0 {
                println!("Disk:     {} MB", t.disk_size_mb);
            }
            if !t.secrets.is_empty() {
                println!("Secrets:  {}", t.secrets.join(", "));
            }
            if !t.labels.is_empty() {
                let labels: Vec<String> =
                    t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("Labels:   {}", labels.join(","));
            }
            for m in &t.mounts {
                let ro = if m.readonly { " (read-only)" } else { "" };
                println!("Volume:   {} at {}{ro}", m.volume_name, m.target);
            }
            println!("Created:  {} ({})", t.created_at, age(&t.created_at));
        }
        TemplateCommand::Delete { template, yes } => {
            let t = find_template(ctx, &template).await?;
            if !confirm(&format!("Delete template/{} ({})?", t.name, t.id), yes)? {
                return Ok(exit::OK);
            }
            let body: api::StatusBody = ctx
                .client
                .json::<_, ()>(Method::DELETE, &template_path(&t.id), None, QUICK)
                .await?;
            if ctx.json {
                return print_json(&body).map(|()| exit::OK);
            }
            println!("template/{} deleted", t.name);
        }
        TemplateCommand::Warm { template } => {
            let spinner = Spinner::start(format!("warming template {template}"));
            let path = format!("{}/warm", template_path(&template));
            let warmed: api::WarmResult =
                ctx.client.json::<_, ()>(Method::POST, &path, None, SLOW).await?;
            drop(spinner);
            if ctx.json {
                return print_json(&warmed).map(|()| exit::OK);
            }
            let what = if warmed.created { "captured" } else { "already there" };
            println!("template/{template}: shape {} {what} ({} ms)", warmed.key, warmed.took_ms);
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_table() {
        let table = [
            ("plain", "work:/work", Some(("work", "/work", false))),
            ("read-only", "data:/data:ro", Some(("data", "/data", true))),
            ("no mount", "work", None),
            ("a relative mount", "work:work", None),
            ("no name", ":/work", None),
        ];
        for (what, spec, want) in table {
            match (mount(spec, false), want) {
                (Ok(m), Some((name, target, ro))) => {
                    assert_eq!(
                        (m.volume_name.as_str(), m.target.as_str(), m.readonly),
                        (name, target, ro),
                        "{what}"
                    )
                }
                (Err(e), None) => assert!(e.to_string().contains("NAME:/mount"), "{what}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
