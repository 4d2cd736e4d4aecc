//! `publish`, `unpublish` and `forward`.
//!
//! `publish` gives a port of a sandbox an alias on the daemon's public proxy and prints its
//! URL; a daemon without a public proxy answers v1's marker text instead, and the CLI then
//! prints the authenticated proxy's URL for the port. `forward` opens a loopback listener on the
//! daemon's host that leads to a port in the sandbox (`--list` shows them, `--close` closes them
//! all); forwards live in the daemon's memory and end when it restarts.

use clap::Args;
use http::Method;

use super::client::{decode, sb_path};
use super::error::exit;
use super::ui::table;
use super::{Ctx, print_json};

/// `bhatti publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Name, ID or ID prefix.
    sandbox: String,
    /// The port in the guest.
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The alias (a-z, 0-9 and '-'; generated from the sandbox's name when not given).
    #[arg(short, long)]
    alias: Option<String>,
}

/// `bhatti forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Name, ID or ID prefix.
    sandbox: String,
    /// The port in the guest.
    #[arg(
        value_parser = clap::value_parser!(u16).range(1..),
        required_unless_present_any = ["list", "close"]
    )]
    guest_port: Option<u16>,
    /// The loopback port on the daemon's host (default: any free one).
    #[arg(value_parser = clap::value_parser!(u16))]
    host_port: Option<u16>,
    /// List the sandbox's forwards instead.
    #[arg(long, conflicts_with_all = ["guest_port", "host_port", "close"])]
    list: bool,
    /// Close all of the sandbox's forwards (and their connections) instead.
    #[arg(long, conflicts_with_all = ["guest_port", "host_port"])]
    close: bool,
}

/// `bhatti publish`.
pub async fn publish(ctx: &Ctx, a: PublishArgs) -> anyhow::Result<u8> {
    let body = api::PublishRequest { port: u32::from(a.port), alias: a.alias.unwrap_or_default() };
    let path = sb_path(&a.sandbox, "/publish");
    let resp = ctx.client.call_json(Method::POST, &path, Some(&body), super::client::QUICK).await?;
    let existing = resp.headers().contains_key(api::EXISTING_HEADER);
    let rule: api::PublishRule = decode(resp).await?;
    if ctx.json {
        return print_json(&rule).map(|()| exit::OK);
    }
    if existing {
        eprintln!("port {} was already published as {:?}", rule.port, rule.alias);
    }
    if rule.url.contains(bhatti_core::publish::NO_PROXY_MARKER) {
        let base = ctx.client.endpoint().display();
        println!("Published: alias {} (port {})", rule.alias, rule.port);
        eprintln!(
            "the daemon has no public proxy (public_proxy_listen in its config); until it has \
             one, the port is reachable with your API key at:"
        );
        println!("Proxy: {base}/sandboxes/{}/proxy/{}/", rule.sandbox_id, rule.port);
    } else {
        println!("Published: {}", rule.url);
    }
    Ok(exit::OK)
}

/// `bhatti unpublish`.
pub async fn unpublish(ctx: &Ctx, sandbox: &str, port: u16) -> anyhow::Result<u8> {
    let path = sb_path(sandbox, &format!("/publish/{port}"));
    ctx.client.call_json::<()>(Method::DELETE, &path, None, super::client::QUICK).await?;
    if ctx.json {
        return print_json(&serde_json::json!({ "status": "unpublished", "port": port }))
            .map(|()| exit::OK);
    }
    println!("Unpublished: port {port}");
    Ok(exit::OK)
}

/// `bhatti forward`.
pub async fn forward(ctx: &Ctx, a: ForwardArgs) -> anyhow::Result<u8> {
    let path = sb_path(&a.sandbox, "/forward");
    if a.close {
        ctx.client.call_json::<()>(Method::DELETE, &path, None, super::client::QUICK).await?;
        if ctx.json {
            return print_json(&serde_json::json!({ "status": "closed" })).map(|()| exit::OK);
        }
        println!("Forwards of {} closed", a.sandbox);
        return Ok(exit::OK);
    }
    let Some(guest_port) = a.guest_port.filter(|_| !a.list) else {
        let list: Vec<api::Forward> = ctx.client.get(&path).await?;
        if ctx.json {
            return print_json(&list).map(|()| exit::OK);
        }
        if list.is_empty() {
            eprintln!("no forwards");
            return Ok(exit::OK);
        }
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|f| vec![f.address.clone(), f.guest_port.to_string(), f.connections.to_string()])
            .collect();
        print!("{}", table(&["ADDRESS", "GUEST PORT", "CONNECTIONS"], &rows));
        return Ok(exit::OK);
    };
    let body = api::ForwardRequest {
        guest_port: u32::from(guest_port),
        host_port: u32::from(a.host_port.unwrap_or(0)),
    };
    let fwd: api::Forward =
        ctx.client.json(Method::POST, &path, Some(&body), super::client::QUICK).await?;
    if ctx.json {
        return print_json(&fwd).map(|()| exit::OK);
    }
    println!("Forwarding: {} -> {}:{}", fwd.address, a.sandbox, fwd.guest_port);
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<crate::cli::Command, clap::Error> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: crate::cli::Command,
        }
        Cli::try_parse_from(std::iter::once("bhatti").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn forward_and_publish_flags() {
        assert!(parse(&["forward", "sb", "8080"]).is_ok());
        assert!(parse(&["forward", "sb", "8080", "9000"]).is_ok());
        assert!(parse(&["forward", "sb", "--list"]).is_ok());
        assert!(parse(&["forward", "sb", "--close"]).is_ok());
        assert!(parse(&["forward", "sb"]).is_err(), "a guest port or --list/--close");
        assert!(parse(&["forward", "sb", "0"]).is_err(), "guest port 0");
        assert!(parse(&["forward", "sb", "80", "--list"]).is_err());
        assert!(parse(&["publish", "sb", "-p", "3000"]).is_ok());
        assert!(parse(&["publish", "sb", "--port", "3000", "-a", "web"]).is_ok());
        assert!(parse(&["publish", "sb"]).is_err(), "--port is required");
        assert!(parse(&["unpublish", "sb", "-p", "3000"]).is_ok());
    }
}
