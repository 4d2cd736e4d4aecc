//! Sandbox commands: create, list, inspect, stop, start, destroy, ps, ports, version.
//!
//! Every route of the API resolves a name, an ID or a unique ID prefix itself (scoped to the
//! caller), so the CLI passes what it was given: one request, not v1's two.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use http::Method;

use super::client::{QUICK, decode, enc, sb_path};
use super::error::{CliError, exit};
use super::ui::{Spinner, age, cache_edit, cache_names, confirm, table};
use super::{Ctx, key_values, print_json};

/// Creating, stopping and starting wait for a VM: bounded, generously.
const LIFECYCLE: Duration = Duration::from_secs(600);
/// The API's JSON body cap is 1 MiB; base64 grows by a third.
const CREATE_FILES_CAP: u64 = 700 << 10;

/// `bhatti create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name (default `sandbox-<6 hex>`).
    #[arg(long)]
    name: Option<String>,
    /// vCPUs.
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory in MB (the daemon's default when not given).
    #[arg(long, value_name = "MB")]
    memory: Option<u32>,
    /// Disk size in MB.
    #[arg(long, value_name = "MB")]
    disk_size: Option<u32>,
    /// Image name.
    #[arg(long)]
    image: Option<String>,
    /// Environment for every command (repeatable; `A=1,B=2` sets two, as in v1).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    env: Vec<String>,
    /// Init script, run as the attachable session `init`.
    #[arg(long)]
    init: Option<String>,
    /// Label (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Never paused or stopped when idle.
    #[arg(long)]
    keep_hot: bool,
    /// A local file to put in the guest before init (repeatable; small files: the request
    /// carries them).
    #[arg(long = "file", value_name = "LOCAL:GUEST")]
    files: Vec<String>,
}

fn create_file(spec: &str) -> anyhow::Result<api::CreateFile> {
    use std::os::unix::fs::PermissionsExt;
    // The guest path is absolute: split at the last ":/".
    let Some(i) = spec.rfind(":/") else {
        return Err(CliError::Usage(format!("--file {spec:?}: use LOCAL:/guest/path")).into());
    };
    let (local, guest) = (PathBuf::from(&spec[..i]), &spec[i + 1..]);
    let meta = std::fs::metadata(&local).map_err(|e| {
        anyhow::Error::new(CliError::NotFound(format!("--file {}: {e}", local.display())))
    })?;
    if meta.len() > CREATE_FILES_CAP {
        anyhow::bail!(
            "--file {}: {} bytes is over the {} KiB a create carries; use `bhatti file write`",
            local.display(),
            meta.len(),
            CREATE_FILES_CAP >> 10
        );
    }
    let bytes = std::fs::read(&local)?;
    Ok(api::CreateFile {
        guest_path: guest.to_owned(),
        content: base64::engine::general_purpose::STANDARD.encode(bytes),
        mode: format!("{:04o}", meta.permissions().mode() & 0o7777),
    })
}

/// `bhatti create`.
pub async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<u8> {
    let body = api::CreateSandbox {
        name: a.name.unwrap_or_default(),
        image: a.image.unwrap_or_default(),
        cpus: a.cpus,
        memory_mb: a.memory,
        disk_size_mb: a.disk_size.unwrap_or(0),
        env: key_values(&super::split_env_args(&a.env), "--env")?,
        init: a.init.unwrap_or_default(),
        files: a.files.iter().map(|f| create_file(f)).collect::<anyhow::Result<_>>()?,
        labels: key_values(&a.labels, "--label")?,
        keep_hot: a.keep_hot,
        ..api::CreateSandbox::default()
    };
    let what = if body.name.is_empty() { "a sandbox".to_owned() } else { body.name.clone() };
    let spinner = Spinner::start(format!("creating {what}"));
    let resp = ctx.client.call_json(Method::POST, "/sandboxes", Some(&body), LIFECYCLE).await?;
    let existing = resp.headers().contains_key(api::EXISTING_HEADER);
    let sb: api::Sandbox = decode(resp).await?;
    drop(spinner);
    cache_edit(&sb.name, true);
    if ctx.json {
        print_json(&sb)?;
    } else if existing {
        println!("sandbox/{} unchanged (already exists)", sb.name);
    } else {
        let disk = if sb.disk_size_mb > 0 {
            format!(", {} MB disk", sb.disk_size_mb)
        } else {
            String::new()
        };
        println!("sandbox/{} created ({} vCPU, {} MB{disk})", sb.name, sb.cpus, sb.memory_mb);
        println!("  ID:    {}", sb.id);
        println!("  IP:    {}", if sb.ip.is_empty() { "-" } else { &sb.ip });
        println!("  Shell: bhatti shell {}", sb.name);
    }
    Ok(exit::OK)
}

/// `bhatti list`.
pub async fn list(ctx: &Ctx, labels: &[String]) -> anyhow::Result<u8> {
    key_values(labels, "--label")?;
    let query: Vec<String> = labels.iter().map(|l| format!("label={}", enc(l))).collect();
    let path = if query.is_empty() {
        "/sandboxes".to_owned()
    } else {
        format!("/sandboxes?{}", query.join("&"))
    };
    let list: Vec<api::Sandbox> = ctx.client.get(&path).await?;
    if labels.is_empty() {
        cache_names(list.iter().map(|s| s.name.as_str()));
    }
    if ctx.json {
        return print_json(&list).map(|()| exit::OK);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.id.clone(),
                s.status.clone(),
                s.thermal.clone().unwrap_or_else(|| "-".into()),
                if s.ip.is_empty() { "-".into() } else { s.ip.clone() },
                age(&s.created_at),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "ID", "STATUS", "THERMAL", "IP", "CREATED"], &rows));
    Ok(exit::OK)
}

/// `bhatti inspect`.
pub async fn inspect(ctx: &Ctx, sandbox: &str) -> anyhow::Result<u8> {
    let s: api::Sandbox = ctx.client.get(&sb_path(sandbox, "")).await?;
    if ctx.json {
        return print_json(&s).map(|()| exit::OK);
    }
    let dash = |v: &str| if v.is_empty() { "-".to_owned() } else { v.to_owned() };
    println!("Name:      {}", s.name);
    println!("ID:        {}", s.id);
    println!("Status:    {}", s.status);
    println!("Thermal:   {}", s.thermal.as_deref().unwrap_or("-"));
    println!("Image:     {}", dash(&s.image));
    println!("Created:   {} ({})", s.created_at, age(&s.created_at));
    if let Some(stopped) = &s.stopped_at {
        println!("Stopped:   {stopped}");
    }
    if !s.template_id.is_empty() {
        println!("Template:  {}", s.template_id);
    }
    println!("Resources:");
    println!("  CPUs:    {}", s.cpus);
    println!("  Memory:  {} MB", s.memory_mb);
    let disk =
        if s.disk_size_mb > 0 { format!("{} MB", s.disk_size_mb) } else { "image size".into() };
    println!("  Disk:    {disk}");
    println!("Network:");
    println!("  IP:      {}", dash(&s.ip));
    println!("Keep hot:  {}", s.keep_hot);
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("Labels:    {}", labels.join(","));
    }
    for url in &s.urls {
        println!("URL:       {url}");
    }
    Ok(exit::OK)
}

/// `bhatti edit` flags.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// Name, ID or ID prefix.
    pub sandbox: String,
    /// New name (the guest's hostname stays).
    #[arg(long)]
    pub name: Option<String>,
    /// Never pause or stop it (wakes it now).
    #[arg(long, conflicts_with = "allow_cold")]
    pub keep_hot: bool,
    /// Let the thermal manager pause and stop it again.
    #[arg(long)]
    pub allow_cold: bool,
    /// Set a label (k=v; repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long = "label-delete", value_name = "KEY")]
    pub label_delete: Vec<String>,
}

/// `bhatti edit`: PATCH; nothing to change is a usage error (v1).
pub async fn edit(ctx: &Ctx, args: EditArgs) -> anyhow::Result<u8> {
    let keep_hot = match (args.keep_hot, args.allow_cold) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let body = api::UpdateSandbox {
        name: args.name.clone(),
        keep_hot,
        labels_add: key_values(&args.labels, "label")?,
        labels_remove: args.label_delete.clone(),
        net_policy: None,
    };
    if body == api::UpdateSandbox::default() {
        return Err(CliError::Usage(
            "nothing to change: give --name, --keep-hot, --allow-cold, --label or --label-delete"
                .into(),
        )
        .into());
    }
    let path = sb_path(&args.sandbox, "");
    let s: api::Sandbox = ctx.client.json(Method::PATCH, &path, Some(&body), LIFECYCLE).await?;
    if args.name.is_some() {
        cache_edit(&args.sandbox, false);
        cache_edit(&s.name, true);
    }
    if ctx.json {
        print_json(&s)?;
    } else {
        println!("sandbox/{} updated", s.name);
        if args.name.is_some() {
            println!("(the guest's hostname is unchanged)");
        }
    }
    Ok(exit::OK)
}

/// `bhatti stop`.
pub async fn stop(ctx: &Ctx, sandbox: &str) -> anyhow::Result<u8> {
    let spinner = Spinner::start(format!("stopping {sandbox}"));
    let s: api::Sandbox =
        ctx.client.json::<_, ()>(Method::POST, &sb_path(sandbox, "/stop"), None, LIFECYCLE).await?;
    drop(spinner);
    if ctx.json {
        print_json(&s)?;
    } else {
        println!("sandbox/{} stopped", s.name);
    }
    Ok(exit::OK)
}

/// `bhatti start`.
pub async fn start(ctx: &Ctx, sandbox: &str, force: bool) -> anyhow::Result<u8> {
    let spinner = Spinner::start(format!("starting {sandbox}"));
    let body = api::StartRequest { force };
    let path = sb_path(sandbox, "/start");
    let s: api::Sandbox = ctx.client.json(Method::POST, &path, Some(&body), LIFECYCLE).await?;
    drop(spinner);
    if ctx.json {
        print_json(&s)?;
    } else {
        println!("sandbox/{} started", s.name);
    }
    Ok(exit::OK)
}

/// `bhatti destroy`: looks the sandbox up (a missing one is exit 3 before any question), asks,
/// destroys.
pub async fn destroy(ctx: &Ctx, sandbox: &str, yes: bool) -> anyhow::Result<u8> {
    let s: api::Sandbox = ctx.client.get(&sb_path(sandbox, "")).await?;
    if !confirm(&format!("Destroy sandbox/{} ({})?", s.name, s.id), yes)? {
        return Ok(exit::OK);
    }
    let spinner = Spinner::start(format!("destroying {}", s.name));
    let body: api::StatusBody =
        ctx.client.json::<_, ()>(Method::DELETE, &sb_path(&s.id, ""), None, LIFECYCLE).await?;
    drop(spinner);
    cache_edit(&s.name, false);
    if ctx.json {
        print_json(&body)?;
    } else {
        println!("sandbox/{} destroyed", s.name);
    }
    Ok(exit::OK)
}

/// `bhatti ps`.
pub async fn ps(ctx: &Ctx, sandbox: &str) -> anyhow::Result<u8> {
    let list: Vec<api::SessionInfo> = ctx.client.get(&sb_path(sandbox, "/sessions")).await?;
    if ctx.json {
        return print_json(&list).map(|()| exit::OK);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let running = match (s.running, s.exit_code) {
                (true, _) => "yes".to_owned(),
                (false, Some(code)) => format!("no (exit {code})"),
                (false, None) => "no".to_owned(),
            };
            vec![s.session_id.clone(), s.argv.clone(), yes_no(s.tty), running, yes_no(s.attached)]
        })
        .collect();
    print!("{}", table(&["ID", "COMMAND", "TTY", "RUNNING", "ATTACHED"], &rows));
    Ok(exit::OK)
}

/// `bhatti ports`.
pub async fn ports(ctx: &Ctx, sandbox: &str) -> anyhow::Result<u8> {
    let list: Vec<api::Port> = ctx.client.get(&sb_path(sandbox, "/ports")).await?;
    if ctx.json {
        return print_json(&list).map(|()| exit::OK);
    }
    if list.is_empty() {
        eprintln!("no listening ports");
        return Ok(exit::OK);
    }
    let base = ctx.client.endpoint().display();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| vec![p.container_port.to_string(), format!("{base}{}", p.proxy_url)])
        .collect();
    print!("{}", table(&["PORT", "URL"], &rows));
    Ok(exit::OK)
}

/// `bhatti version`: the CLI's, and the daemon's from `X-Bhatti-Version` when it answers.
pub async fn version(ctx: &Ctx) -> anyhow::Result<u8> {
    let req = ctx.client.request(Method::GET, "/health").body(super::client::empty())?;
    let daemon = match ctx.client.send(req, QUICK).await {
        Ok(resp) => Ok(resp
            .headers()
            .get(api::VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned()),
        Err(e) => Err(e),
    };
    let url = ctx.client.endpoint().display();
    if ctx.json {
        let v = serde_json::json!({
            "cli": env!("CARGO_PKG_VERSION"),
            "api_url": url,
            "daemon": daemon.as_ref().ok(),
        });
        return print_json(&v).map(|()| exit::OK);
    }
    println!("bhatti {}", env!("CARGO_PKG_VERSION"));
    println!("api:    {url}");
    match daemon {
        Ok(v) => println!("daemon: {v}"),
        Err(e) => println!("daemon: unreachable ({e:#})"),
    }
    Ok(exit::OK)
}
