//! What the daemon's shape snapshots (template snapshots) need of the engine: the kernel it
//! boots (part of a shape's key) and a capture of a sandbox as a checkpoint of another owner
//! (the daemon's reserved owner keeps them, and every user's create clones one).

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::{Engine, check_name, check_owner};
use crate::checkpoint::Captured;
use crate::error::{EngineError, Resource, io_at};
use crate::owner::Command;

impl Engine {
    /// The guest kernel every boot uses.
    pub fn kernel_path(&self) -> &Path {
        &self.config.kernel
    }

    /// Whether `owner` has a checkpoint named `checkpoint` (its manifest is there: a capture
    /// publishes its directory complete, by a rename).
    pub fn has_checkpoint(&self, owner: &str, checkpoint: &str) -> bool {
        check_owner(owner).is_ok()
            && check_name(Resource::Checkpoint, checkpoint).is_ok()
            && self.layout.checkpoint(owner, checkpoint).manifest().is_file()
    }

    /// [`Engine::checkpoint`], the checkpoint kept under `owner` rather than the sandbox's
    /// owner (the daemon's shape snapshots).
    pub async fn checkpoint_as(
        &self,
        id: &str,
        owner: &str,
        checkpoint: &str,
    ) -> Result<Captured, EngineError> {
        check_owner(owner)?;
        check_name(Resource::Checkpoint, checkpoint)?;
        let dest = self.layout.checkpoint(owner, checkpoint);
        if dest.dir().exists() {
            return Err(EngineError::exists(Resource::Checkpoint, checkpoint));
        }
        let parent = self.layout.owner_checkpoints(owner);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(io_at("creating", &parent))?;
        let handle = self.handle(id)?;
        let name = checkpoint.to_owned();
        handle.ask(id, |reply| Command::Checkpoint { dest, name, reply }).await?
    }
}
