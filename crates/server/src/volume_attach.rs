//! `persistent_volumes` at sandbox create (host.md 1.7 step 10): each entry is checked (name,
//! mount point), found or auto-created, then attached in the store once the sandbox's row
//! exists, by v1's rules: one writer or many readers (409 otherwise); a read-only attach of a
//! volume nobody has attached is `e2fsck`ed first if its file system is not clean, and one
//! that others read while it is unclean is refused. The attachments go with the sandbox's row
//! (a failed create, a destroy: the foreign key cascades), and start-up removes those of
//! sandboxes that are gone (`store::Store::clean_up_at_start`).

use std::collections::BTreeSet;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::volume_files as files;
use crate::volumes::{check_name, find, make};

/// A volume to attach: its row and how.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    volume: store::Volume,
    mount: String,
    read_only: bool,
}

impl Planned {
    /// The engine's view: the file, the mount point, the mode (drives in request order).
    pub(crate) fn mount(&self) -> engine::VolumeMount {
        engine::VolumeMount {
            path: self.volume.file_path.clone(),
            mount: self.mount.clone(),
            read_only: self.read_only,
        }
    }
}

/// Checks the request's entries and finds (or auto-creates) each volume; nothing is attached
/// yet. 400 for a bad name or mount point, or one named twice; 404 for a missing volume
/// without `auto_create`.
pub(crate) async fn plan(
    state: &AppState,
    owner: &str,
    wanted: &[api::CreateVolume],
) -> ApiResult<Vec<Planned>> {
    let (mut names, mut mounts) = (BTreeSet::new(), BTreeSet::new());
    for w in wanted {
        check_name(&w.name)?;
        let m = engine::VolumeMount {
            path: Default::default(),
            mount: w.mount.clone(),
            read_only: w.read_only,
        };
        m.check_mount().map_err(|why| {
            ApiError::BadRequest(format!("volume {:?}: mount path {:?} {why}", w.name, w.mount))
        })?;
        if !names.insert(w.name.as_str()) {
            return Err(ApiError::BadRequest(format!("volume {:?} is listed twice", w.name)));
        }
        if !mounts.insert(crate::request::clean_path(&w.mount)) {
            return Err(ApiError::BadRequest(format!("mount path {:?} is used twice", w.mount)));
        }
    }
    let mut planned = Vec::with_capacity(wanted.len());
    for w in wanted {
        let volume = match find(state, owner, &w.name).await {
            Ok(v) => v,
            Err(ApiError::Store(e)) if e.kind() == store::ErrorKind::NotFound => {
                if !(w.auto_create && w.size_mb > 0) {
                    return Err(ApiError::NotFound(format!("volume {:?} not found", w.name)));
                }
                match make(state, owner, &w.name, w.size_mb, None).await {
                    Ok(v) => v,
                    // Another request made it meanwhile: use theirs.
                    Err(ApiError::Conflict(_)) => find(state, owner, &w.name).await?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if volume.status == store::VolumeStatus::Creating {
            return Err(ApiError::Conflict(format!(
                "volume {:?} is being created by another request, retry",
                w.name
            )));
        }
        planned.push(Planned { volume, mount: w.mount.clone(), read_only: w.read_only });
    }
    Ok(planned)
}

/// Attaches the planned volumes to the sandbox whose row (`creating`) exists. On an error the
/// caller removes the row, which takes the attachments made so far with it.
pub(crate) async fn attach(
    state: &AppState,
    owner: &str,
    sandbox_id: &str,
    planned: &[Planned],
) -> ApiResult<()> {
    for p in planned {
        let _lock = crate::volume_locks::lock(&p.volume)?;
        let current = find(state, owner, &p.volume.name).await?;
        if p.read_only && current.attachments.iter().all(|a| a.read_only) {
            let clean = files::is_clean(&current.file_path).await?;
            if !clean && current.attachments.is_empty() {
                files::check(&current.file_path).await?;
            } else if !clean {
                return Err(ApiError::Conflict(format!(
                    "volume {:?} has an unclean file system and is attached elsewhere; detach it \
                     everywhere first",
                    p.volume.name
                )));
            }
        }
        let (o, v, s, m, ro) = (
            owner.to_owned(),
            p.volume.name.clone(),
            sandbox_id.to_owned(),
            p.mount.clone(),
            p.read_only,
        );
        match state.store.write(move |st| st.attach_volume(&o, &v, &s, &m, ro)).await {
            Ok(_) => {}
            Err(e) if e.kind() == store::ErrorKind::Conflict => {
                return Err(ApiError::Conflict(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
