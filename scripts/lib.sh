# Shared helpers for the project's scripts. Sourced, not run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Everything the scripts build or download (kernel, images) is cached here.
BHATTI_DATA_DIR="${BHATTI_DATA_DIR:-/var/lib/bhatti}"
export REPO_ROOT BHATTI_DATA_DIR

# Messages for people go to stderr: stdout is a script's result (the image builds print their
# path there), so a caller that discards or captures it still shows the progress.
step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 75 -> 1m15s
duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# Runs a long command with its output in a log file and shows one progress line instead: the
# elapsed time, how many lines of the log match PATTERN (one per compiled object, say), out of
# about $PROGRESS_TOTAL when that is set, and the last word of the latest one. On a terminal the line is rewritten every 2 s; otherwise a line
# is printed every 30 s, so a CI log stays short. On failure prints the log's last 40 lines and
# its path, and returns the command's status. An interrupted script stops the command too.
#   run_with_progress LOG PATTERN NOUN CMD...
run_with_progress() {
    local log="$1" pattern="$2" noun="$3"
    shift 3
    local interval=30 tty=0
    if [ -t 2 ]; then
        interval=2
        tty=1
    fi
    "$@" >"$log" 2>&1 &
    local pid=$!
    # A background job of a script ignores SIGINT: without these traps, Ctrl+C would leave it
    # running (e.g. a kernel build going on for minutes after the script ended).
    local saved_exit
    saved_exit="$(trap -p EXIT)"
    trap 'kill '"$pid"' 2>/dev/null || true' EXIT
    trap 'kill '"$pid"' 2>/dev/null || true; exit 130' INT TERM
    local start=$SECONDS last=$SECONDS count latest line status=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        [ $((SECONDS - last)) -ge "$interval" ] || continue
        last=$SECONDS
        count="$(grep -c -E "$pattern" "$log" 2>/dev/null || true)"
        latest="$(grep -E "$pattern" "$log" 2>/dev/null | tail -n 1 | awk '{ print $NF }' || true)"
        latest="${latest#"$PWD"/}"
        line="$(duration $((SECONDS - start))) elapsed, ${count:-0}${PROGRESS_TOTAL:+ of about $PROGRESS_TOTAL} $noun${latest:+ (latest: $latest)}"
        if [ "$tty" -eq 1 ]; then
            printf '\r\033[K    %s' "$line" >&2
        else
            info "$line"
        fi
    done
    wait "$pid" || status=$?
    trap - INT TERM
    if [ -n "$saved_exit" ]; then eval "$saved_exit"; else trap - EXIT; fi
    [ "$tty" -eq 0 ] || printf '\r\033[K' >&2
    if [ "$status" -ne 0 ]; then
        printf '%s\n' "--- last lines of $log:" >&2
        tail -n 40 "$log" >&2
        printf '%s\n' "--- the whole log: $log" >&2
    fi
    return "$status"
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (the scripts install system packages and create network namespaces)"
}

APT_UPDATED=0
# Installs the Debian packages that are missing; `apt-get update` runs at most once per script.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$APT_UPDATED" -eq 0 ]; then
        info "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    info "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
