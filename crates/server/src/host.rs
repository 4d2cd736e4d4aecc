//! The host's load and memory, as v1's metrics read them (`/proc/loadavg`, `/proc/meminfo`).

/// Load and memory; zeros where a file could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Host {
    /// 1-minute load average.
    pub load_1m: f64,
    /// `MemTotal`, MiB.
    pub mem_total_mb: u64,
    /// `MemAvailable`, MiB.
    pub mem_available_mb: u64,
}

/// Reads the host's numbers (two small files in procfs: call from a blocking thread).
pub fn read() -> Host {
    let load = std::fs::read_to_string("/proc/loadavg").ok();
    let mem = std::fs::read_to_string("/proc/meminfo").ok();
    let (mem_total_mb, mem_available_mb) = mem.as_deref().map(parse_meminfo).unwrap_or_default();
    Host {
        load_1m: load.as_deref().and_then(parse_loadavg).unwrap_or(0.0),
        mem_total_mb,
        mem_available_mb,
    }
}

/// The first field of `/proc/loadavg`.
fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, MiB.
fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_parses() {
        assert_eq!(parse_loadavg("0.52 0.40 0.33 2/345 6789\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
        let meminfo = "MemTotal:        8048576 kB\nMemFree:  10 kB\nMemAvailable:    4024288 kB\n";
        assert_eq!(parse_meminfo(meminfo), (7859, 3929));
        assert_eq!(parse_meminfo("nonsense"), (0, 0));
        let host = read();
        assert!(host.mem_total_mb > 0 && host.mem_available_mb <= host.mem_total_mb);
    }
}
