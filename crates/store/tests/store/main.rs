//! The store's suite: real SQLite files in temporary directories, no mocks, no VMs.

mod cleanup;
mod common;
mod concurrency;
mod recovery;
mod resources;
mod sandboxes;
mod users;
mod volumes;
