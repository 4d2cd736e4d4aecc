//! The lifecycle service: create, stop, start, destroy and wake, each one protocol of "write
//! the intent, call the engine, write the result or undo", so handlers only parse, call and
//! map.
//!
//! Which operation may run in which state is `bhatti_core::lifecycle::plan` (a pure table);
//! this module does the IO around it:
//! - **create**: a `creating` row reserves the name and the quota slot; the engine builds the
//!   VM; the row becomes `running`. A failed build removes the row. A final write that fails
//!   (the row was destroyed meanwhile, or the store failed) destroys the VM and removes the
//!   row, so no VM runs without a row and no row holds a name for a VM that is not there.
//! - **destroy**: at any point, a create in flight included. The intent is written first; the
//!   engine cancels a create in flight and waits until everything it took is back (QEMU, TAP,
//!   filter rules, neighbour entry, cgroup, directory, address); the row goes last. The create's
//!   caller gets `409 destroyed`.
//! - **stop** / **start**: a transition row brackets the engine call; a failure closes it and
//!   leaves the row as it was.
//! - **egress policy**: the row takes the new policy first (and answers the one it had), then
//!   the engine; if the engine refuses, the row gets its previous policy back. Changes are
//!   serialised, so the engine ends enforcing what the row shows.
//!
//! Each success logs v1's event in the same store write as its result:
//! `sandbox.created` (name, cpus, memory_mb, image, template_id, keep_hot), `sandbox.destroyed`
//! (name, lifetime_s), `sandbox.stopped` and `sandbox.started` (reason `api`).

use bhatti_core::{Op, Plan, lifecycle};

use crate::engine_events::{LogEntry, sync_row};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What a create answered.
#[derive(Debug)]
pub(crate) enum Created {
    /// A new sandbox, running.
    New(store::Sandbox),
    /// The owner's sandbox of that name already existed (create is idempotent by name).
    Existing(store::Sandbox),
}

/// Creates a sandbox: the row, then the VM (`spec_for` turns the new row's ID into the
/// engine's request), then the row's result.
#[allow(dead_code)] // The create of a sandbox without persistent volumes.
pub(crate) async fn create(
    state: &AppState,
    new: store::NewSandbox,
    spec_for: impl FnOnce(&str) -> ApiResult<engine::CreateSpec>,
) -> ApiResult<Created> {
    create_with_volumes(state, new, &[], spec_for).await
}

/// [`create`] with persistent volumes (`volume_attach.rs`): found or made before the row,
/// attached once the row exists (a failure removes the row, and the attachments with it),
/// handed to the engine in request order.
pub(crate) async fn create_with_volumes(
    state: &AppState,
    new: store::NewSandbox,
    volumes: &[api::CreateVolume],
    spec_for: impl FnOnce(&str) -> ApiResult<engine::CreateSpec>,
) -> ApiResult<Created> {
    // An existing sandbox of this name is the answer before any volume is made for it.
    if let Some(existing) = by_name(state, &new.owner, &new.name).await? {
        return Ok(Created::Existing(existing));
    }
    let owner = new.owner.clone();
    let planned = crate::volume_attach::plan(state, &owner, volumes).await?;
    let build = |id: String| async move {
        crate::volume_attach::attach(state, &owner, &id, &planned).await?;
        let mut spec = spec_for(&id)?;
        spec.volumes.extend(planned.iter().map(crate::volume_attach::Planned::mount));
        let _booting = crate::telemetry::InFlight::boot();
        state.engine.create(&spec).await.map(drop).map_err(ApiError::from)
    };
    create_built(state, new, build).await
}

/// [`create`] with any way of building the VM (`build` gets the new row's ID): a new sandbox
/// from an image, or one resumed from a snapshot. A failed build removes the row (and with it
/// any volume attachments the build made).
pub(crate) async fn create_built<F, Fut>(
    state: &AppState,
    new: store::NewSandbox,
    build: F,
) -> ApiResult<Created>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
{
    match reserve(state, new).await? {
        Reserved::Row(id) => build_reserved(state, id, build).await.map(Created::New),
        Reserved::Existing(existing) => Ok(Created::Existing(*existing)),
    }
}

/// What [`reserve`] found.
#[derive(Debug)]
pub(crate) enum Reserved {
    /// The new row's ID (status `creating`).
    Row(String),
    /// The owner's sandbox of that name.
    Existing(Box<store::Sandbox>),
}

/// First half of [`create_built`]: the row (status `creating`) that reserves the name and the
/// quota before the VM is built.
pub(crate) async fn reserve(state: &AppState, new: store::NewSandbox) -> ApiResult<Reserved> {
    let (owner, name) = (new.owner.clone(), new.name.clone());
    if let Some(existing) = by_name(state, &owner, &name).await? {
        return Ok(Reserved::Existing(Box::new(existing)));
    }
    match state.store.write(move |s| s.create_sandbox(&new)).await {
        Ok(row) => Ok(Reserved::Row(row.id)),
        Err(e) if e.kind() == store::ErrorKind::Conflict => {
            // Another request with this name won the race: its sandbox is the answer.
            match by_name(state, &owner, &name).await? {
                Some(winner) => Ok(Reserved::Existing(Box::new(winner))),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives back a row [`reserve`] took whose VM was never built.
pub(crate) async fn unreserve(state: &AppState, id: &str) {
    remove_row(state, id).await;
}

/// Second half of [`create_built`]: builds the VM of a reserved row and writes the result; a
/// failed build removes the row.
pub(crate) async fn build_reserved<F, Fut>(
    state: &AppState,
    id: String,
    build: F,
) -> ApiResult<store::Sandbox>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
{
    let built = build(id.clone()).await;
    if let Err(e) = built {
        remove_row(state, &id).await;
        return Err(e);
    }
    match write_created(state, &id).await {
        Ok(row) => Ok(row),
        Err(e) => {
            // Undo: no VM may run without its row, and no row may hold the name of a VM that
            // is not there.
            match state.engine.destroy(&id).await {
                Ok(()) => {}
                Err(gone) if gone.kind() == engine::ErrorKind::NotFound => {}
                Err(undo) => tracing::error!(sandbox = %id, "undoing a create: {}", undo.report()),
            }
            remove_row(state, &id).await;
            match &e {
                // The row is gone or destroyed: a destroy overtook the create.
                ApiError::Store(s)
                    if matches!(
                        s.kind(),
                        store::ErrorKind::NotFound | store::ErrorKind::Conflict
                    ) =>
                {
                    Err(engine::EngineError::Cancelled { id }.into())
                }
                _ => Err(e),
            }
        }
    }
}

/// The row of a built sandbox: `running`, hot, its address and the engine's record.
async fn write_created(state: &AppState, id: &str) -> ApiResult<store::Sandbox> {
    let record = state.engine.export(id).await?;
    let id = id.to_owned();
    let ip = record.ip.to_string();
    let (row, event) = state
        .store
        .write(move |s| {
            let change = store::Change {
                status: Some(store::Status::Running),
                thermal: Some(engine::Thermal::Hot),
                ip: Some(&ip),
                record: Some(&record),
                user_stopped: None,
            };
            s.update_sandbox(&id, &change)?;
            let row = s.sandbox_by_id(&id)?;
            let meta = serde_json::json!({
                "name": row.name,
                "cpus": row.cpus,
                "memory_mb": row.memory_mb,
                "image": row.image,
                "template_id": row.template_id.clone().unwrap_or_default(),
                "keep_hot": row.keep_hot,
            });
            let event = LogEntry::new("sandbox.created", meta).to_event(&row);
            s.record_events(std::slice::from_ref(&event))?;
            Ok((row, event))
        })
        .await?;
    state.events.announce(&[event]);
    Ok(row)
}

/// The owner's live sandbox named exactly `name`.
async fn by_name(state: &AppState, owner: &str, name: &str) -> ApiResult<Option<store::Sandbox>> {
    let (owner, key) = (owner.to_owned(), name.to_owned());
    match state.store.read(move |s| s.resolve_sandbox(&owner, &key)).await {
        Ok(s) if s.name == name && s.status != store::Status::Destroyed => Ok(Some(s)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == store::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes a row whose VM is not there (a failed or cancelled create); already gone is fine.
async fn remove_row(state: &AppState, id: &str) {
    let sid = id.to_owned();
    match state.store.write(move |s| s.delete_sandbox_by_id(&sid)).await {
        Ok(()) => {}
        Err(e) if e.kind() == store::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(sandbox = %id, "removing the row of a failed create: {e}"),
    }
}

/// The table's plan for `op` on `sandbox` as the engine sees it now.
fn plan(state: &AppState, op: Op, sandbox: &store::Sandbox) -> Plan {
    lifecycle::plan(op, sandbox.status, state.engine.thermal(&sandbox.id).ok())
}

/// Destroys a sandbox, a create in flight included.
pub(crate) async fn destroy(state: &AppState, sandbox: &store::Sandbox) -> ApiResult<()> {
    let intent = match plan(state, Op::Destroy, sandbox) {
        Plan::Run { intent, .. } => intent,
        Plan::AlreadyDone => return Ok(()),
        Plan::Refuse(refusal) => return Err(ApiError::Refused(refusal)),
    };
    let id = sandbox.id.clone();
    state.secret_envs.forget(&id);
    // The intent goes first: a daemon killed mid-destroy leaves a row recovery recognises.
    let transition = {
        let id = id.clone();
        state.store.write(move |s| s.begin_transition(&id, intent)).await?
    };
    // Its forwards close first, with their connections (and leases); the publish rules go
    // with the row below (a foreign-key cascade).
    state.forwards.close_sandbox(&id);
    match state.engine.destroy(&id).await {
        Ok(()) => {}
        // A sandbox the engine does not know (recovery marked it unknown, or its create had
        // not reached the engine yet and will find its row gone): only rows are left.
        Err(e) if e.kind() == engine::ErrorKind::NotFound => {}
        Err(e) => {
            abandon(state, transition).await;
            return Err(e.into());
        }
    }
    // Its published aliases lead nowhere now (their rules go with the row).
    state.public.routes.forget_sandbox(&id);
    let lifetime =
        store::Timestamp::now().millis().saturating_sub(sandbox.created_at.millis()) / 1000;
    let meta = serde_json::json!({ "name": sandbox.name, "lifetime_s": lifetime.max(0) });
    let event = LogEntry::new("sandbox.destroyed", meta).to_event(sandbox);
    let announced = event.clone();
    let deleted = state
        .store
        .write(move |s| {
            match s.delete_sandbox_by_id(&id) {
                Ok(()) => {}
                // The create it cancelled removed the row first.
                Err(e) if e.kind() == store::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            s.record_events(&[event])
        })
        .await;
    deleted?;
    state.events.announce(&[announced]);
    Ok(())
}

/// Suspends a sandbox to disk; a stopped one answers as it is.
pub(crate) async fn stop(state: &AppState, sandbox: store::Sandbox) -> ApiResult<store::Sandbox> {
    let (intent, then) = match plan(state, Op::Stop, &sandbox) {
        Plan::Run { intent, then } => (intent, then),
        Plan::AlreadyDone => return Ok(sandbox),
        Plan::Refuse(refusal) => return Err(ApiError::Refused(refusal)),
    };
    let sid = sandbox.id.clone();
    let transition = state.store.write(move |s| s.begin_transition(&sid, intent)).await?;
    // A user's stop cuts whatever runs (attached shells, execs, transfers: each told "stopped")
    // rather than waiting for it, as `docker stop` does; the thermal manager's stop never cuts.
    let (_, transition) = guarded(state, transition, state.engine.stop_now(&sandbox.id)).await?;
    let event = LogEntry::new("sandbox.stopped", serde_json::json!({ "reason": "api" }));
    // Stopped by its user: it stays stopped until `start` (guest routes answer 409).
    finish(state, transition, then, event, true).await
}

/// Wakes a stopped sandbox (`force`: boots from its disk, discarding saved memory); a running
/// one answers as it is.
pub(crate) async fn start(
    state: &AppState,
    mut sandbox: store::Sandbox,
    force: bool,
) -> ApiResult<store::Sandbox> {
    let (intent, then) = match plan(state, Op::Start { force }, &sandbox) {
        Plan::Run { intent, then } => (intent, then),
        Plan::AlreadyDone => {
            // Hot or warm: running, whatever the row says until the events task writes it.
            sandbox.status = store::Status::Running;
            return Ok(sandbox);
        }
        Plan::Refuse(refusal) => return Err(ApiError::Refused(refusal)),
    };
    let sid = sandbox.id.clone();
    let transition = state.store.write(move |s| s.begin_transition(&sid, intent)).await?;
    let started = async {
        let _restoring = crate::telemetry::InFlight::restore();
        if force {
            state.engine.start_from_disk(&sandbox.id).await
        } else {
            state.engine.start(&sandbox.id).await
        }
    };
    let ((), transition) = guarded(state, transition, started).await?;
    let event =
        LogEntry::new("sandbox.started", serde_json::json!({ "reason": "api", "force": force }));
    finish(state, transition, then, event, false).await
}

/// Wakes a sandbox (keep-hot turned on) and answers with its row as it is after the wake.
pub(crate) async fn wake(state: &AppState, sandbox: &store::Sandbox) -> ApiResult<store::Sandbox> {
    state.engine.ensure_hot(&sandbox.id).await?;
    // The events task would write the new status too, but later: the answer must show it.
    sync_row(state, &sandbox.id, Vec::new()).await?;
    let id = sandbox.id.clone();
    // Woken on purpose: no longer a sandbox its user stopped.
    let change = store::Change { user_stopped: Some(false), ..Default::default() };
    Ok(state
        .store
        .write(move |s| {
            s.update_sandbox(&id, &change)?;
            s.sandbox_by_id(&id)
        })
        .await?)
}

/// Whether a sandbox can take a new egress policy: the engine must have it (not while it is
/// being created, nor once lost); a stopped or sleeping one takes it for its next wake.
pub(crate) fn may_set_net_policy(state: &AppState, sandbox: &store::Sandbox) -> ApiResult<()> {
    // Guest access's refusals without its "stopped by its user": the policy is no guest
    // operation, and nothing wakes.
    let thermal = state.engine.thermal(&sandbox.id).ok();
    lifecycle::guest_access(sandbox.status, false, thermal).map_err(ApiError::Refused)
}

/// Replaces a sandbox's egress policy (checked) and answers the row: the row first, then the
/// engine; a refusal of the engine puts the row's previous policy back and answers the
/// engine's error.
pub(crate) async fn set_net_policy(
    state: &AppState,
    sandbox: &store::Sandbox,
    policy: bhatti_core::Policy,
) -> ApiResult<store::Sandbox> {
    may_set_net_policy(state, sandbox)?;
    let _serial = state.policy_changes.lock().await;
    let (owner, id) = (sandbox.owner.clone(), sandbox.id.clone());
    let wanted = policy.to_net_policy();
    let previous = state.store.write(move |s| s.set_net_policy(&owner, &id, &wanted)).await?;
    let (owner, id) = (sandbox.owner.clone(), sandbox.id.clone());
    let Err(refused) = state.engine.set_net_policy(&sandbox.id, policy).await else {
        return Ok(state.store.read(move |s| s.sandbox(&owner, &id)).await?);
    };
    if let Err(e) = state.store.write(move |s| s.set_net_policy(&owner, &id, &previous)).await {
        // Destroyed meanwhile (not found) needs nothing back; anything else is logged, and the
        // row shows a policy the engine does not enforce until the next change.
        if e.kind() != store::ErrorKind::NotFound {
            tracing::error!(sandbox = %sandbox.id, "putting back the previous egress policy: {e}");
        }
    }
    Err(refused.into())
}

/// Closes a transition whose side effect failed, leaving the row as it was.
async fn abandon(state: &AppState, transition: store::Transition) {
    let id = transition.sandbox_id.clone();
    let closed = state
        .store
        .write(move |s| s.finish_transition(&transition, &store::Change::default()))
        .await;
    if let Err(e) = closed {
        tracing::error!(sandbox = %id, "closing a failed transition: {e}");
    }
}

/// Runs `op`, closing `transition` if it fails.
async fn guarded<T>(
    state: &AppState,
    transition: store::Transition,
    op: impl std::future::Future<Output = Result<T, engine::EngineError>>,
) -> ApiResult<(T, store::Transition)> {
    match op.await {
        Ok(value) => Ok((value, transition)),
        Err(e) => {
            abandon(state, transition).await;
            Err(e.into())
        }
    }
}

/// Writes a sandbox's new status and the engine's record in one transaction that also closes
/// the transition, logs `event`, and returns the row.
async fn finish(
    state: &AppState,
    transition: store::Transition,
    status: store::Status,
    event: LogEntry,
    user_stopped: bool,
) -> ApiResult<store::Sandbox> {
    let id = transition.sandbox_id.clone();
    let record = state.engine.export(&id).await?;
    let thermal = record.thermal;
    let (row, event) = state
        .store
        .write(move |s| {
            let ip = record.ip.to_string();
            let change = store::Change {
                status: Some(status),
                thermal: Some(thermal),
                ip: Some(&ip),
                record: Some(&record),
                user_stopped: Some(user_stopped),
            };
            s.finish_transition(&transition, &change)?;
            let row = s.sandbox_by_id(&transition.sandbox_id)?;
            let event = event.to_event(&row);
            s.record_events(std::slice::from_ref(&event))?;
            Ok((row, event))
        })
        .await?;
    state.events.announce(&[event]);
    Ok(row)
}
