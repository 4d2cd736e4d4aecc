//! `bhatti completion bash|zsh|fish`: clap_complete's static scripts for commands and flags,
//! plus sandbox names from the cache `bhatti list` writes (`~/.cache/bhatti/names`), read by
//! the shell itself: completing never makes a network call.

use clap::{CommandFactory, ValueEnum};

use super::error::exit;

/// The shells with a script.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Commands whose first argument is a sandbox.
const SANDBOX_COMMANDS: &str = "exec shell sh inspect info stop start destroy rm ps ports";
const CACHE: &str = "${XDG_CACHE_HOME:-$HOME/.cache}/bhatti/names";

/// The script for a shell.
pub fn script(shell: Shell) -> String {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "bhatti", &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    match shell {
        Shell::Bash => format!(
            "{text}\n# Sandbox names from the cache `bhatti list` writes (no network call).\n\
             _bhatti_names() {{\n\
             \x20   local cur=\"${{COMP_WORDS[COMP_CWORD]}}\" sub=\"${{COMP_WORDS[1]}}\"\n\
             \x20   if [[ \"$cur\" != -* ]] && {{ {{ [[ $COMP_CWORD -eq 2 ]] && [[ \" {SANDBOX_COMMANDS} \" == *\" $sub \"* ]]; }} || \
             {{ [[ $COMP_CWORD -eq 3 ]] && [[ $sub == file ]]; }}; }}; then\n\
             \x20       COMPREPLY=( $(compgen -W \"$(cat \"{CACHE}\" 2>/dev/null)\" -- \"$cur\") )\n\
             \x20       return 0\n\
             \x20   fi\n\
             \x20   _bhatti \"$@\"\n\
             }}\n\
             complete -F _bhatti_names -o nosort -o bashdefault -o default bhatti\n"
        ),
        Shell::Fish => format!(
            "{text}\n# Sandbox names from the cache `bhatti list` writes (no network call).\n\
             complete -c bhatti -n \"__fish_seen_subcommand_from {SANDBOX_COMMANDS}\" -f -a \
             \"(cat (set -q XDG_CACHE_HOME; and echo $XDG_CACHE_HOME; or echo ~/.cache)/bhatti/names 2>/dev/null)\"\n"
        ),
        Shell::Zsh => {
            // clap gives sandbox arguments `_default`; ours completes from the cache.
            let body: String = text
                .lines()
                .map(|l| {
                    if l.contains(":sandbox -- ") {
                        l.replace(":_default'", ":_bhatti_names'")
                    } else {
                        l.to_owned()
                    }
                })
                .map(|l| l + "\n")
                .collect();
            let names = format!(
                "_bhatti_names() {{\n    local -a names\n    names=(${{(f)\"$(cat {CACHE} 2>/dev/null)\"}})\n    compadd -a names\n}}\n"
            );
            match body.split_once('\n') {
                Some((first, rest)) => format!("{first}\n{names}{rest}"),
                None => body,
            }
        }
    }
}

/// Prints the script.
pub fn print(shell: Shell) -> anyhow::Result<u8> {
    print!("{}", script(shell));
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_complete_sandbox_names_from_the_cache() {
        let bash = script(Shell::Bash);
        assert!(bash.contains("complete -F _bhatti_names") && bash.contains("bhatti/names"));
        let zsh = script(Shell::Zsh);
        assert!(zsh.starts_with("#compdef bhatti\n_bhatti_names()"), "{}", &zsh[..200]);
        assert!(zsh.contains(":_bhatti_names'"), "no sandbox argument was rewritten");
        assert!(script(Shell::Fish).contains("__fish_seen_subcommand_from exec"));
    }
}
