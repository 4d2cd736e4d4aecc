//! One file operation at a time per volume (resize, clone, backup, restore, an attach's
//! check): a second one is refused with 409 rather than run on a file that is changing.
//! Keyed by the volume's ID (random, never reused), so daemons in one process (tests) share it
//! safely.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::error::ApiError;

static BUSY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Held while a volume's file is being worked on; dropping it frees the volume.
#[derive(Debug)]
pub(crate) struct VolumeLock(String);

impl Drop for VolumeLock {
    fn drop(&mut self) {
        BUSY.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Takes the volume, or answers 409 when another operation has it.
pub(crate) fn lock(volume: &store::Volume) -> Result<VolumeLock, ApiError> {
    let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    if !busy.insert(volume.id.clone()) {
        return Err(ApiError::Conflict(format!(
            "volume {:?} is busy: another operation on it is in progress, retry",
            volume.name
        )));
    }
    Ok(VolumeLock(volume.id.clone()))
}
