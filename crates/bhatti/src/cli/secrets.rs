//! `bhatti secret set|list|delete` (host.md 1.18). `set NAME [VALUE]`: the value from the
//! argument (v1's form; it shows in the shell's history and `ps`), `--value-stdin`, or, with
//! neither, stdin (a terminal reads it without echo). The value is sent once and never printed.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use clap::Subcommand;
use hyper::Method;

use super::client::enc;
use super::error::{CliError, exit};
use super::ui::{age, confirm, table};
use super::{Ctx, print_json};

const WAIT: Duration = Duration::from_secs(30);

/// `bhatti secret ...`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret (a new value replaces the old one); sandboxes created with `--secret NAME`
    /// get it as the variable NAME.
    Set {
        /// The name (also the variable's name).
        name: String,
        /// The value; better: leave it out and give it on stdin.
        value: Option<String>,
        /// Read the value from stdin even if it is a terminal (one line, newline dropped).
        #[arg(long)]
        value_stdin: bool,
    },
    /// List secrets (names and times; never values).
    #[command(visible_alias = "ls")]
    List,
    /// Delete a secret.
    #[command(visible_alias = "rm")]
    Delete {
        /// The name.
        name: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
}

/// The value from stdin: a terminal gets a prompt without echo; a pipe is read whole, one
/// trailing newline dropped (`echo s3cret | bhatti secret set A`).
fn value_from_stdin() -> anyhow::Result<api::SecretValue> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value: ");
        let quiet = super::setup::NoEcho::enable();
        let mut line = zeroize::Zeroizing::new(String::new());
        stdin.read_line(&mut line)?;
        drop(quiet);
        return Ok(api::SecretValue::new(line.trim_end_matches(['\n', '\r'])));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    stdin.lock().take(1 << 20).read_to_string(&mut text)?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(api::SecretValue::new(trimmed))
}

/// Runs a secret command.
pub async fn run(ctx: &Ctx, cmd: SecretCommand) -> anyhow::Result<u8> {
    match cmd {
        SecretCommand::Set { name, value, value_stdin } => {
            let value = match (value, value_stdin) {
                (Some(_), true) => {
                    return Err(CliError::Usage(
                        "give the value or --value-stdin, not both".into(),
                    )
                    .into());
                }
                (Some(v), false) => api::SecretValue::new(v),
                (None, _) => value_from_stdin()?,
            };
            if value.is_empty() {
                return Err(CliError::Usage("the value is empty".into()).into());
            }
            let set = api::SetSecret { name, value };
            let record: api::SecretRecord =
                ctx.client.json(Method::POST, "/secrets", Some(&set.to_body()), WAIT).await?;
            if ctx.json {
                print_json(&record)?;
            } else {
                println!("secret/{} set", record.name);
            }
        }
        SecretCommand::List => {
            let list: Vec<api::SecretRecord> = ctx.client.get("/secrets").await?;
            if ctx.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| vec![s.name.clone(), age(&s.created_at), age(&s.updated_at)])
                    .collect();
                print!("{}", table(&["NAME", "CREATED", "UPDATED"], &rows));
            }
        }
        SecretCommand::Delete { name, yes } => {
            if !confirm(&format!("Delete secret {name}?"), yes)? {
                return Ok(exit::OK);
            }
            let path = format!("/secrets/{}", enc(&name));
            let out: api::StatusBody =
                ctx.client.json::<_, ()>(Method::DELETE, &path, None, WAIT).await?;
            if ctx.json {
                print_json(&out)?;
            } else {
                println!("secret/{name} deleted");
            }
        }
    }
    Ok(exit::OK)
}
