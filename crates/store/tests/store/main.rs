//! The store's suite: real SQLite files in temporary directories, no mocks, no VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cleanup;
mod common;
mod concurrency;
mod recovery;
mod resources;
mod sandboxes;
mod users;
mod volumes;
