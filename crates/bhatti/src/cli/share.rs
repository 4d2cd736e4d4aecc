//! `bhatti share <sandbox>`: a web-shell link anyone holding it can open in a browser (the
//! token rides in the link's fragment; the daemon keeps only its hash). Sharing again rotates
//! the token; `--revoke` ends it and closes every browser session it opened.

use std::time::Duration;

use hyper::Method;

use super::client::sb_path;
use super::error::exit;
use super::{Ctx, print_json};

/// Minting or revoking is one store write.
const WAIT: Duration = Duration::from_secs(30);

/// The link to print: the daemon's own when it knows the URL it is reached at, else this
/// CLI's API URL in front of the path it answered.
fn full_url(api_base: &str, url: &str) -> String {
    if url.starts_with('/') {
        format!("{}{url}", api_base.trim_end_matches('/'))
    } else {
        url.into()
    }
}

/// `bhatti share [--revoke] <sandbox>`.
pub async fn run(ctx: &Ctx, sandbox: &str, revoke: bool) -> anyhow::Result<u8> {
    let path = sb_path(sandbox, "/shell-token");
    if revoke {
        ctx.client.call_json::<()>(Method::DELETE, &path, None, WAIT).await?;
        if ctx.json {
            print_json(&serde_json::json!({"status": "revoked"}))?;
        } else {
            println!("share link of {sandbox} revoked");
        }
        return Ok(exit::OK);
    }
    let mut share: api::ShellToken =
        ctx.client.json::<_, ()>(Method::POST, &path, None, WAIT).await?;
    let base = ctx.client.endpoint().display();
    let local = base.starts_with("unix:");
    if !local {
        share.url = full_url(&base, &share.url);
    }
    if ctx.json {
        print_json(&share)?;
    } else {
        println!("{}", share.url);
        if local && share.url.starts_with('/') {
            eprintln!(
                "(this CLI reaches the daemon over its Unix socket: put the daemon's HTTP URL in front)"
            );
        }
        eprintln!(
            "anyone with this link gets a shell; revoke it with `bhatti share --revoke {sandbox}`"
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_gets_the_cli_api_url_in_front() {
        assert_eq!(
            full_url("http://10.0.0.5:8080/", "/_shell/ab#token=00"),
            "http://10.0.0.5:8080/_shell/ab#token=00"
        );
        assert_eq!(
            full_url("http://x:1", "https://api.example.com/_shell/ab#token=00"),
            "https://api.example.com/_shell/ab#token=00"
        );
    }
}
