//! The sandbox engine: sandboxes on QEMU microVMs in a network namespace the engine owns.
//!
//! - [`Engine`] (`registry`): create from an image or a template, destroy, list, guest
//!   operations through leases that keep a sandbox hot, thermal operations (pause, stop, start,
//!   ensure-hot), checkpoints, volumes, events, and recovery from stored [`SandboxRecord`]s.
//! - `owner`: the task that alone changes one sandbox's thermal state; `lease`: the state it
//!   shares with leases and readers; `machine`: the VMM seam and its vocabulary; `vm`: the QEMU
//!   backend (booting, suspending and waking one QEMU, orphans);
//!   `net`/`ippool`/`egress`: the namespace, its bridge, TAPs, addresses and optional NAT;
//!   `uplink`: the veth and host-side table that lead the namespace out; `netpolicy`,
//!   `egress_filter` and `dns`: each sandbox's egress policy, its nftables chain and the
//!   resolver on the gateway that answers (and pins) by it;
//!   `layout`: where every file lives; `configdrive`, `volume`, `checkpoint`: the files a
//!   sandbox is made of.
//!
//! Errors are [`EngineError`]s with a stable [`ErrorKind`] for callers to map.

/// Declares modules that are the engine's internals: crate-private, public only with the
/// `test-support` feature (the crate's own integration tests drive VMs, namespaces and filters
/// below the [`Engine`]).
macro_rules! internal {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[cfg(feature = "test-support")]
        pub mod $name;
        $(#[$doc])*
        #[cfg(not(feature = "test-support"))]
        pub(crate) mod $name;
    )*};
}

internal! {
    checkpoint;
    configdrive;
    egress;
    egress_filter;
    ippool;
    isolation;
    jail;
    layout;
    machine;
    net;
    ports;
    vm;
    volume;
}
pub mod cgroup;
mod diff;
mod disk_image;
pub mod dns;
mod error;
mod events;
mod lease;
mod netpolicy;
mod owner;
mod record;
mod registry;
mod run;
mod spec;
mod teardown;
mod thermal;
pub mod uplink;

/// The agent's types the engine's API hands out.
pub use agent::{
    ActivityInfo, AgentError, DetachedExec, ExecEvent, ExecOutput, ExecRequest, ExecStream,
    FileContent, FileInfo, OutputRoom, ReadOptions, Session, SessionEvent, SessionInfo,
    SessionReader, SessionWriter, Stream, WatchEvent, WatchKind, WatchStream,
};
/// The guest-side types a [`CreateSpec`] carries (files written before the agent starts).
pub use proto::guest::GuestFile;

pub use checkpoint::Captured;
pub use diff::{
    DiffBase, DiffEntry, DiffResult, DiffStats, EntryKind, MAX_ENTRIES as DIFF_MAX_ENTRIES,
};
pub use egress::Egress;
pub use error::{EngineError, ErrorKind, Exhausted, GoneReason, GuestErrorKind, Resource};
pub use events::{Event, EventKind};
pub use ippool::Subnet;
pub use jail::{Swept, sweep_cgroups as remove_leftover_cgroups};
pub use lease::{Activity, Lease, Leased};
pub use machine::Suspended;
pub use record::RECORD_VERSION;
pub use record::SandboxRecord;
pub use registry::{
    DEFAULT_RESTORE_POOL, Engine, EngineConfig, ResolverConfig, SHUTDOWN_PARALLEL, SandboxInfo,
};
pub use spec::{CreateSpec, DEFAULT_OWNER, ScratchVolume, Template};
pub use thermal::Thermal;
pub use vmm::{Accel, DiskCache};
pub use volume::VolumeMount;
