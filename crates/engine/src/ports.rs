//! Which TCP ports a guest listens on, from its `/proc/net/tcp` and `/proc/net/tcp6` (read
//! through the agent's file API: no exec, no tools needed in the image).

use std::collections::BTreeSet;

/// The kernel's code for a listening socket in the `st` column.
const TCP_LISTEN: &str = "0A";

/// Listening ports in one `/proc/net/tcp{,6}` table.
pub fn listening(table: &str) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_count() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0400 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1235 1
   2: 0200C80A:0400 0100C80A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1236 1
";
        assert_eq!(listening(v4).into_iter().collect::<Vec<_>>(), [1024, 8080]);
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 0
";
        assert_eq!(listening(v6).into_iter().collect::<Vec<_>>(), [3000]);
        assert!(listening("").is_empty());
        assert!(listening("header\ngarbage line\n   0: zz:zz 0 0A\n").is_empty());
    }
}
