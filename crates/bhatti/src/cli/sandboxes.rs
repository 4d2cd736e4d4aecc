//! Sandbox commands: create, list, inspect, edit, stop, start, destroy, ps, ports, version.
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
    /// A copy-on-write clone of this running sandbox (`bhatti fork` of one): its memory,
    /// processes, files, image and shape.
    #[arg(long, value_name = "SANDBOX", conflicts_with_all = [
        "cpus", "memory", "disk_size", "image", "template", "env", "init", "files", "volumes",
        "secrets", "hugepages",
    ])]
    from: Option<String>,
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
    /// A template (ID or name): its image, cpus, memory, disk, secrets, labels and volumes,
    /// where the other flags leave them out.
    #[arg(long, value_name = "ID|NAME")]
    template: Option<String>,
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
    /// v1's huge pages switch: sent, but the QEMU engine keeps guest RAM in a file (so warm
    /// and cold sandboxes keep it) and does not back it with huge pages; a note says so.
    #[arg(long)]
    hugepages: bool,
    /// A local file to put in the guest before init (repeatable; small files: the request
    /// carries them).
    #[arg(long = "file", value_name = "LOCAL:GUEST")]
    files: Vec<String>,
    /// A persistent volume to attach (repeatable): `name:/mount`, `:ro` for read-only.
    #[arg(long = "volume", value_name = "NAME:/MOUNT[:ro]")]
    volumes: Vec<String>,
    /// A secret given to every command as the variable of its name (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// Boot a kernel even when a snapshot of this shape exists (creates restore one by
    /// default).
    #[arg(long)]
    boot: bool,
    #[command(flatten)]
    egress: EgressArgs,
}

/// `--egress`: what a sandbox reaches when no rule names the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Egress {
    /// The internet (never the host, cloud metadata or private ranges).
    Public,
    /// Nothing but DNS, plus what --allow-host and --allow-cidr open.
    Deny,
}

impl From<Egress> for api::Posture {
    fn from(egress: Egress) -> Self {
        match egress {
            Egress::Public => api::Posture::Public,
            Egress::Deny => api::Posture::Deny,
        }
    }
}

/// The egress policy flags of `create` and `edit`.
#[derive(Debug, Clone, Default, Args)]
pub struct EgressArgs {
    /// Egress posture: public by default on create, the sandbox's current one on edit. On edit,
    /// any of --egress, --allow-host and --allow-cidr replaces the whole policy (an allow list
    /// not given is emptied).
    #[arg(long, value_enum, value_name = "POSTURE")]
    egress: Option<Egress>,
    /// A host the sandbox may reach under `--egress deny`: `example.com`, or `*.example.com`
    /// for the names below it (repeatable).
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// An IPv4 range the sandbox may reach, the only way to open a private one:
    /// `10.0.0.0/8`, `192.0.2.7` (repeatable).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    allow_cidrs: Vec<String>,
}

impl EgressArgs {
    /// Whether any egress flag was given.
    fn given(&self) -> bool {
        self.egress.is_some() || !self.allow_hosts.is_empty() || !self.allow_cidrs.is_empty()
    }

    /// The whole policy the flags spell, `posture` standing in for a missing `--egress`;
    /// checked here by the daemon's own rules, so a mistake is a usage error before any
    /// request.
    fn policy(&self, posture: api::Posture) -> Result<api::NetPolicy, CliError> {
        let policy = api::NetPolicy {
            default: self.egress.map_or(posture, api::Posture::from),
            allow_hosts: self.allow_hosts.clone(),
            allow_cidrs: self.allow_cidrs.clone(),
        };
        policy.check().map_err(|e| CliError::Usage(format!("invalid egress policy: {e}")))?;
        Ok(policy)
    }
}

/// Host rules open names only under `deny`: under `public` every public address is open.
fn warn_idle_hosts(policy: &api::NetPolicy) {
    if policy.default == api::Posture::Public && !policy.allow_hosts.is_empty() {
        eprintln!("note: --allow-host opens names only under --egress deny");
    }
}

/// One line for a policy: `public`, or `deny, allow hosts: a, *.b; allow cidrs: 10.0.0.0/8`.
fn egress_summary(policy: &api::NetPolicy) -> String {
    let mut parts = Vec::new();
    if !policy.allow_hosts.is_empty() {
        parts.push(format!("allow hosts: {}", policy.allow_hosts.join(", ")));
    }
    if !policy.allow_cidrs.is_empty() {
        parts.push(format!("allow cidrs: {}", policy.allow_cidrs.join(", ")));
    }
    let posture = policy.default.as_str();
    if parts.is_empty() { posture.to_owned() } else { format!("{posture}, {}", parts.join("; ")) }
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
    if let Some(from) = &a.from {
        return super::fork::create_from(ctx, from, a.name).await;
    }
    let net_policy =
        if a.egress.given() { Some(a.egress.policy(api::Posture::Public)?) } else { None };
    if let Some(policy) = &net_policy {
        warn_idle_hosts(policy);
    }
    if a.hugepages {
        eprintln!(
            "note: --hugepages has no effect here: guest RAM is a file the warm and cold states \
             keep, not huge pages"
        );
    }
    let body = api::CreateSandbox {
        name: a.name.unwrap_or_default(),
        image: a.image.unwrap_or_default(),
        template_id: a.template.unwrap_or_default(),
        cpus: a.cpus,
        memory_mb: a.memory,
        disk_size_mb: a.disk_size.unwrap_or(0),
        env: key_values(&super::split_env_args(&a.env), "--env")?,
        init: a.init.unwrap_or_default(),
        files: a.files.iter().map(|f| create_file(f)).collect::<anyhow::Result<_>>()?,
        labels: key_values(&a.labels, "--label")?,
        keep_hot: a.keep_hot,
        hugepages: a.hugepages,
        net_policy,
        persistent_volumes: a
            .volumes
            .iter()
            .map(|v| super::volumes::parse_volume_flag(v))
            .collect::<Result<_, _>>()?,
        secrets: a.secrets,
        boot: a.boot,
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
        if sb.net_policy != api::NetPolicy::default() {
            println!("  Egress: {}", egress_summary(&sb.net_policy));
        }
        println!("  Shell: bhatti shell {}", sb.name);
    }
    Ok(exit::OK)
}

/// `bhatti list -o`: v1's columns, or v1's wide ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// NAME STATUS THERMAL IP (URL when any sandbox has one), as v1.
    #[default]
    Default,
    /// v1's wide columns (CPUS MEMORY DISK IMAGE LABELS), then ours (ID CREATED).
    Wide,
}

/// `bhatti list`.
pub async fn list(ctx: &Ctx, labels: &[String], format: ListFormat) -> anyhow::Result<u8> {
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
    let (head, rows) = list_table(&list, format);
    print!("{}", table(&head, &rows));
    Ok(exit::OK)
}

/// `ls`'s columns and rows. v1's columns come first and in v1's order, so scripts that cut
/// them keep working; ours (ID, CREATED) only follow v1's wide ones.
fn list_table(list: &[api::Sandbox], format: ListFormat) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let dash = |v: &str| if v.is_empty() { "-".to_owned() } else { v.to_owned() };
    // v1: a URL column only when some sandbox has a published port.
    let with_urls = list.iter().any(|s| !s.urls.is_empty());
    let wide = format == ListFormat::Wide;
    let mut head = vec!["NAME", "STATUS", "THERMAL", "IP"];
    if with_urls {
        head.push("URL");
    }
    if wide {
        head.extend(["CPUS", "MEMORY", "DISK", "IMAGE", "LABELS", "ID", "CREATED"]);
    }
    let rows = list
        .iter()
        .map(|s| {
            let mut row = vec![
                s.name.clone(),
                s.status.clone(),
                s.thermal.clone().unwrap_or_else(|| "-".into()),
                dash(&s.ip),
            ];
            if with_urls {
                row.push(url_cell(&s.urls));
            }
            if wide {
                let mut labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                row.extend([
                    s.cpus.to_string(),
                    // No space inside a cell: `awk '{print $6}'` must still find a column.
                    format!("{}MB", s.memory_mb),
                    if s.disk_size_mb > 0 { format!("{}MB", s.disk_size_mb) } else { "-".into() },
                    dash(&s.image),
                    if labels.is_empty() { "-".into() } else { labels.join(",") },
                    s.id.clone(),
                    age(&s.created_at),
                ]);
            }
            row
        })
        .collect();
    (head, rows)
}

/// The `ls` URL cell: the first URL (`+N` more), `-` if none; without a public proxy the
/// daemon's marker text is cut to `alias: <alias>`.
fn url_cell(urls: &[String]) -> String {
    let Some(first) = urls.first() else { return "-".into() };
    let first = first
        .strip_prefix(bhatti_core::publish::NO_PROXY_MARKER)
        .map_or(first.as_str(), str::trim_start);
    match urls.len() {
        1 => first.to_owned(),
        n => format!("{first} (+{})", n - 1),
    }
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
    // v1: the live usage from `df -m /` in the guest when it runs (this wakes it).
    match live_disk(ctx, &s).await {
        Some(Ok(usage)) => println!("  Disk:    {usage} (size {disk})"),
        Some(Err(why)) => println!("  Disk:    {disk} (live usage unavailable: {why})"),
        None => println!("  Disk:    {disk}"),
    }
    println!("Network:");
    println!("  IP:      {}", dash(&s.ip));
    println!("  Egress:  {}", egress_summary(&s.net_policy));
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

/// The guest's root filesystem usage, as `df -m /` in the guest reports it; `None` when the
/// sandbox is not running (v1 asks only then: the exec wakes a paused or cold one).
async fn live_disk(ctx: &Ctx, s: &api::Sandbox) -> Option<Result<String, String>> {
    if s.status != "running" {
        return None;
    }
    let body = api::ExecBody {
        cmd: vec!["df".into(), "-m".into(), "/".into()],
        timeout_sec: 10,
        ..Default::default()
    };
    let answer: anyhow::Result<api::ExecResult> = ctx
        .client
        .json(http::Method::POST, &sb_path(&s.id, "/exec"), Some(&body), LIVE_DISK_WAIT)
        .await;
    Some(match answer {
        Ok(r) if r.exit_code == 0 => {
            df_usage(&r.stdout).ok_or_else(|| "unexpected df output".into())
        }
        Ok(r) => Err(format!("df exited with {}", r.exit_code)),
        Err(e) => Err(e.to_string()),
    })
}

/// How long `inspect` waits for the live disk usage (a cold sandbox wakes first).
const LIVE_DISK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `df -m /`'s data line as `<used> MB used of <size> MB (<use%>)`. A long device name may wrap
/// the line (POSIX df), so the numbers are the last five fields of everything after the header.
fn df_usage(out: &str) -> Option<String> {
    let fields: Vec<&str> = out.lines().skip(1).flat_map(str::split_whitespace).collect();
    let n = fields.len();
    if n < 5 {
        return None;
    }
    let (size, used, pct) = (fields[n - 5], fields[n - 4], fields[n - 2]);
    let numeric = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    (numeric(size) && numeric(used) && pct.ends_with('%'))
        .then(|| format!("{used} MB used of {size} MB ({pct})"))
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
    /// A new egress policy: the whole one the flags spell.
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// `bhatti edit`: PATCH; nothing to change is a usage error (v1).
pub async fn edit(ctx: &Ctx, args: EditArgs) -> anyhow::Result<u8> {
    let keep_hot = match (args.keep_hot, args.allow_cold) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let mut body = api::UpdateSandbox {
        name: args.name.clone(),
        keep_hot,
        labels_add: key_values(&args.labels, "label")?,
        labels_remove: args.label_delete.clone(),
        net_policy: None,
    };
    if body == api::UpdateSandbox::default() && !args.egress.given() {
        return Err(CliError::Usage(
            "nothing to change: give --name, --keep-hot, --allow-cold, --label, --label-delete, \
             --egress, --allow-host or --allow-cidr"
                .into(),
        )
        .into());
    }
    let path = sb_path(&args.sandbox, "");
    if args.egress.given() {
        // Checked before asking the daemon; the posture it lacks is the sandbox's own.
        args.egress.policy(api::Posture::Public)?;
        let posture = match args.egress.egress {
            Some(egress) => egress.into(),
            None => ctx.client.get::<api::Sandbox>(&path).await?.net_policy.default,
        };
        let policy = args.egress.policy(posture)?;
        warn_idle_hosts(&policy);
        body.net_policy = Some(policy);
    }
    let s: api::Sandbox = ctx.client.json(Method::PATCH, &path, Some(&body), LIFECYCLE).await?;
    if args.name.is_some() {
        cache_edit(&args.sandbox, false);
        cache_edit(&s.name, true);
    }
    if ctx.json {
        print_json(&s)?;
    } else {
        println!("sandbox/{} updated", s.name);
        if body.net_policy.is_some() {
            println!("egress: {}", egress_summary(&s.net_policy));
        }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The CLI's client commands, as `main` parses them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: crate::cli::Command,
    }

    fn parse(args: &[&str]) -> Result<crate::cli::Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("bhatti").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn df_usage_reads_the_data_line() {
        let table = [
            (
                "busybox",
                "Filesystem           1M-blocks      Used Available Use% Mounted on\n/dev/root                   59        21        35  38% /\n",
                Some("21 MB used of 59 MB (38%)"),
            ),
            (
                "a wrapped device name",
                "Filesystem 1M-blocks Used Available Use% Mounted on\n/dev/mapper/a-very-long-name\n 1000 250 700 27% /\n",
                Some("250 MB used of 1000 MB (27%)"),
            ),
            ("no data line", "Filesystem 1M-blocks Used Available Use% Mounted on\n", None),
            ("not numbers", "h\n/dev/root a b c d% /\n", None),
            ("no percent", "h\n/dev/root 1 2 3 4 /\n", None),
        ];
        for (name, out, want) in table {
            assert_eq!(df_usage(out).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn ls_keeps_v1s_columns_first() {
        let sb = |name: &str, urls: &[&str]| {
            api::Sandbox {
            name: name.into(),
            id: format!("id-{name}"),
            status: "running".into(),
            ip: "10.0.0.2".into(),
            cpus: 1.0,
            memory_mb: 512,
            image: "minimal".into(),
            labels: [("b".to_owned(), "2".to_owned()), ("a".to_owned(), "1".to_owned())].into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            ..serde_json::from_value(serde_json::json!({"id": "", "name": "", "status": "", "created_at": "2026-12-07T00:00:00Z", "cpus": 1.0, "memory_mb": 1})).unwrap()
        }
        };
        let (head, rows) = list_table(&[sb("a", &[])], ListFormat::Default);
        assert_eq!(head, ["NAME", "STATUS", "THERMAL", "IP"]);
        assert_eq!(rows[0], ["a", "running", "-", "10.0.0.2"]);

        let (head, _) = list_table(&[sb("a", &[]), sb("b", &["http://x"])], ListFormat::Default);
        assert_eq!(head, ["NAME", "STATUS", "THERMAL", "IP", "URL"]);

        let (head, rows) = list_table(&[sb("a", &[])], ListFormat::Wide);
        assert_eq!(
            head,
            [
                "NAME", "STATUS", "THERMAL", "IP", "CPUS", "MEMORY", "DISK", "IMAGE", "LABELS",
                "ID", "CREATED"
            ]
        );
        assert_eq!(rows[0][4..10], ["1", "512MB", "-", "minimal", "a=1,b=2", "id-a"]);
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn url_cells_table() {
        let s = |items: &[&str]| strings(items);
        let rows = [
            ("none", s(&[]), "-"),
            ("one", s(&["http://h:81/web/"]), "http://h:81/web/"),
            ("more", s(&["http://h:81/a/", "http://h:81/b/"]), "http://h:81/a/ (+1)"),
            ("no proxy", s(&["(no public proxy configured) alias: web"]), "alias: web"),
        ];
        for (name, urls, want) in rows {
            assert_eq!(url_cell(&urls), want, "{name}");
        }
    }

    #[test]
    fn egress_flags_parse_on_create_and_edit() {
        let create = parse(&[
            "create",
            "--egress",
            "deny",
            "--allow-host",
            "pypi.org",
            "--allow-host",
            "*.pythonhosted.org",
            "--allow-cidr",
            "10.0.0.0/8",
        ])
        .unwrap();
        let crate::cli::Command::Create(args) = create else { panic!("{create:?}") };
        assert_eq!(args.egress.egress, Some(Egress::Deny));
        assert_eq!(args.egress.allow_hosts, strings(&["pypi.org", "*.pythonhosted.org"]));
        assert_eq!(args.egress.allow_cidrs, strings(&["10.0.0.0/8"]));
        let plain = parse(&["create", "--name", "x"]).unwrap();
        let crate::cli::Command::Create(args) = plain else { panic!("{plain:?}") };
        assert!(!args.egress.given(), "no flag, no policy sent");

        let edit = parse(&["edit", "web", "--allow-cidr", "192.0.2.7"]).unwrap();
        let crate::cli::Command::Edit(args) = edit else { panic!("{edit:?}") };
        assert_eq!((args.egress.egress, args.egress.given()), (None, true));
        assert!(parse(&["create", "--egress", "open"]).is_err(), "public or deny only");
        assert!(parse(&["edit", "web", "--egress"]).is_err(), "--egress takes a value");
    }

    #[test]
    fn egress_flags_spell_the_whole_policy() {
        let flags = |egress: Option<Egress>, hosts: &[&str], cidrs: &[&str]| EgressArgs {
            egress,
            allow_hosts: strings(hosts),
            allow_cidrs: strings(cidrs),
        };
        // The posture stands in for a missing --egress; lists not given are empty.
        let only_hosts = flags(None, &["pypi.org"], &[]);
        let policy = only_hosts.policy(api::Posture::Deny).unwrap();
        assert_eq!(policy.default, api::Posture::Deny);
        assert_eq!((policy.allow_hosts, policy.allow_cidrs), (strings(&["pypi.org"]), vec![]));
        let public = flags(Some(Egress::Public), &[], &[]).policy(api::Posture::Deny).unwrap();
        assert_eq!(public, api::NetPolicy::default(), "--egress public alone clears the lists");
        // The daemon's own rules refuse a bad one before any request, as a usage error.
        let table: [(&str, EgressArgs, &str); 3] = [
            ("metadata", flags(None, &[], &["169.254.169.254"]), "allow_cidrs"),
            ("a wildcard inside", flags(Some(Egress::Deny), &["a.*.com"], &[]), "allow_hosts"),
            ("host bits", flags(None, &[], &["10.0.0.1/8"]), "did you mean 10.0.0.0/8"),
        ];
        for (name, args, part) in table {
            let err = args.policy(api::Posture::Public).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{name}: {err:?}");
            let text = err.to_string();
            assert!(text.starts_with("invalid egress policy: ") && text.contains(part), "{name}");
        }
    }

    #[test]
    fn egress_summaries_table() {
        let policy = |default, hosts: &[&str], cidrs: &[&str]| api::NetPolicy {
            default,
            allow_hosts: strings(hosts),
            allow_cidrs: strings(cidrs),
        };
        let table = [
            ("the default", policy(api::Posture::Public, &[], &[]), "public"),
            ("closed", policy(api::Posture::Deny, &[], &[]), "deny"),
            (
                "hosts and ranges",
                policy(api::Posture::Deny, &["pypi.org", "*.pythonhosted.org"], &["10.0.0.0/8"]),
                "deny, allow hosts: pypi.org, *.pythonhosted.org; allow cidrs: 10.0.0.0/8",
            ),
            (
                "a private range opened under public",
                policy(api::Posture::Public, &[], &["10.1.0.0/16", "192.0.2.7/32"]),
                "public, allow cidrs: 10.1.0.0/16, 192.0.2.7/32",
            ),
        ];
        for (name, policy, want) in table {
            assert_eq!(egress_summary(&policy), want, "{name}");
        }
    }
}
