//! Taking down what one sandbox's machine leaves on the host, the same way whether a destroy
//! ends it (`owner`), its owner failed earlier (`registry`), or a create was cut short
//! (`registry`'s give-back): its files and any QEMU still running, then its port on the bridge.

use std::net::Ipv4Addr;

use crate::layout::SandboxFiles;
use crate::machine::Backend;
use crate::net::Netns;
use crate::netpolicy::Policies;

/// Kills the sandbox's QEMU if one still runs (recorded in `recorded`, started with the socket
/// of `started_as`: the directory may have moved aside since), finishes the removal of what
/// its dropped machines handed to blocking threads (their cgroups), and removes the directory.
/// Blocking: call it from a blocking thread.
pub(crate) fn remove_files(
    backend: &dyn Backend,
    netns: &str,
    id: &str,
    recorded: &SandboxFiles,
    started_as: &SandboxFiles,
) {
    backend.kill_recorded(recorded, started_as);
    backend.settle(netns, id);
    if let Err(e) = std::fs::remove_dir_all(recorded.dir())
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(sandbox = %id, "removing its directory: {e}");
    }
}

/// Removes the sandbox's port once its QEMU is gone: the neighbour entry on the bridge, its
/// egress chain and pins, and the filter rules of `tap` (a later sandbox on this TAP is admitted anew). Both are idempotent:
/// a boot that failed before setting them up leaves nothing to do.
pub(crate) async fn unplug(
    ns: &Netns,
    bridge: &str,
    policies: &Policies,
    id: &str,
    ip: Ipv4Addr,
    tap: &str,
) {
    if let Err(e) = ns.delete_neighbour(bridge, ip).await {
        tracing::warn!(sandbox = %id, "{}", e.report());
    }
    // Before the address goes back to the pool: a new sandbox on it starts from its own policy.
    if let Err(e) = policies.remove(tap, ip).await {
        tracing::warn!(sandbox = %id, "{}", e.report());
    }
    if let Err(e) = crate::isolation::remove(ns, tap).await {
        tracing::warn!(sandbox = %id, "{}", e.report());
    }
}
