//! `POST /images/pull {"ref","name","auth"?}` (host.md 1.20, 2.14): a background task that
//! pulls an image for linux/amd64 from an OCI registry (`oci-client`: manifests, indexes,
//! token auth, blobs checked against their digests), flattens its layers, injects lohar and
//! makes the ext4 file. Progress strings are v1's.
//!
//! Plain HTTP: a reference written `http://host:port/repo:tag`, or a registry listed in the
//! daemon's `insecure_registries`. Everything else is HTTPS.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::secrets::RegistryAuth;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::image_convert::{self, ConvertError};
use crate::request::Json;
use crate::state::AppState;

/// A pull's whole budget (v1's).
const PULL_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// A reference with its scheme taken off, and whether it asked for plain HTTP.
fn split_scheme(reference: &str) -> Result<(&str, bool), String> {
    match reference.split_once("://") {
        None => Ok((reference, false)),
        Some(("http", rest)) => Ok((rest, true)),
        Some(("https", rest)) => Ok((rest, false)),
        Some((scheme, _)) => Err(format!("unsupported scheme {scheme:?} (http or https)")),
    }
}

/// `user:token` as basic auth.
fn auth_of(auth: Option<&str>) -> Result<RegistryAuth, String> {
    match auth.filter(|a| !a.is_empty()) {
        None => Ok(RegistryAuth::Anonymous),
        Some(a) => match a.split_once(':') {
            Some((user, token)) if !user.is_empty() => {
                Ok(RegistryAuth::Basic(user.to_owned(), token.to_owned()))
            }
            _ => Err("auth must be user:token".into()),
        },
    }
}

/// `POST /images/pull`.
pub async fn pull(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Json(req): Json<api::PullRequest>,
) -> ApiResult<Response> {
    if req.reference.is_empty() || req.name.is_empty() {
        return Err(ApiError::BadRequest("ref and name required".into()));
    }
    crate::images::check_name(&req.name)?;
    let (bare, plain) = split_scheme(&req.reference).map_err(ApiError::BadRequest)?;
    let reference: oci_client::Reference = bare
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid image reference {bare:?}: {e}")))?;
    let auth = auth_of(req.auth.as_deref()).map_err(ApiError::BadRequest)?;
    let source = format!("oci:{}", req.reference);
    // v1's "exists": the user pulled this reference under this name before.
    let (owner, name) = (user.id.clone(), req.name.clone());
    if let Ok(existing) = state.store.read(move |s| s.image_for(&owner, &name)).await
        && existing.owner.as_deref() == Some(user.id.as_str())
    {
        if existing.source == source && !existing.oci_digest.is_empty() {
            let body = api::PullStarted {
                status: "exists".into(),
                image: existing.name,
                digest: existing.oci_digest,
                ..Default::default()
            };
            return Ok((StatusCode::OK, axum::Json(body)).into_response());
        }
        return Err(ApiError::Store(store::StoreError::Conflict {
            kind: store::Resource::Image,
            name: req.name.clone(),
            what: "already exists".into(),
        }));
    }
    let insecure = plain
        || state.settings.insecure_registries.iter().any(|r| r == reference.resolve_registry());
    let owner = user.id.clone();
    let task = state.store.write(move |s| s.create_task(&owner, "image_pull")).await?;
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        state: state.clone(),
        task: task.id.clone(),
        owner: user.id.clone(),
        name: req.name.clone(),
        source,
        reference,
        auth,
        insecure,
        cancel: Arc::clone(&cancel),
    };
    let handle = tokio::spawn(job.run());
    state.pulls.insert(&task.id, crate::pulls::Running { cancel, abort: handle.abort_handle() });
    tracing::info!(task = %task.id, image = %req.name, "image pull started");
    let body =
        api::PullStarted { task_id: task.id, status: "running".into(), ..Default::default() };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// One pull in the background.
struct Job {
    state: AppState,
    task: String,
    owner: String,
    name: String,
    source: String,
    reference: oci_client::Reference,
    auth: RegistryAuth,
    insecure: bool,
    cancel: Arc<AtomicBool>,
}

impl Job {
    async fn progress(&self, text: String) {
        let id = self.task.clone();
        if let Err(e) = self.state.store.write(move |s| s.set_task_progress(&id, &text)).await {
            tracing::debug!(task = %self.task, "progress: {e}");
        }
    }

    async fn run(self) {
        let outcome = match tokio::time::timeout(PULL_DEADLINE, self.pull()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {} minutes", PULL_DEADLINE.as_secs() / 60)),
        };
        let id = self.task.clone();
        let written = match outcome {
            Ok(result) => self.state.store.write(move |s| s.complete_task(&id, &result)).await,
            Err(error) => {
                tracing::warn!(task = %self.task, image = %self.name, "image.pull_failed: {error}");
                let meta =
                    serde_json::json!({ "image": self.name, "ref": self.source, "error": error });
                crate::images::record(&self.state, "image.pull_failed", &self.owner, "", meta);
                self.state.store.write(move |s| s.fail_task(&id, &error)).await
            }
        };
        if let Err(e) = written {
            // A cancelled task is failed already.
            tracing::debug!(task = %self.task, "finishing: {e}");
        }
        self.state.pulls.remove(&self.task);
    }

    /// The pull; the result JSON, or why it failed (for the task's `error`; never the auth).
    async fn pull(&self) -> Result<String, String> {
        // rustls needs a process-wide provider; ring, as the rest of the daemon (see tls.rs
        // for why ring's deprecation is accepted).
        #[allow(deprecated)]
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let registry = self.reference.resolve_registry().to_owned();
        let config = ClientConfig {
            protocol: if self.insecure {
                ClientProtocol::HttpsExcept(vec![registry])
            } else {
                ClientProtocol::Https
            },
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            ..Default::default()
        };
        let client = oci_client::Client::new(config);
        self.progress("resolving image".into()).await;
        let (manifest, digest, config) = client
            .pull_manifest_and_config(&self.reference, &self.auth)
            .await
            .map_err(|e| format!("resolving {}: {e}", self.reference))?;
        let total: i64 = manifest.layers.iter().map(|l| l.size.max(0)).sum();
        let cap = self.state.settings.image_import_max_bytes;
        if u64::try_from(total).unwrap_or(u64::MAX) > cap {
            return Err(format!("the image's layers are {total} bytes, over the daemon's {cap}"));
        }
        let lohar = self.state.settings.lohar.clone();
        if !lohar.is_file() {
            tracing::error!(lohar = %lohar.display(), "the guest agent to inject is missing (config key `lohar`)");
            return Err("the daemon cannot convert images: its guest agent is missing".into());
        }
        let dir = crate::images::owner_dir(&self.state, &self.owner).map_err(|e| e.to_string())?;
        let work = tempfile::Builder::new()
            .prefix(".import-")
            .tempdir_in(&dir)
            .map_err(|e| format!("a work directory: {e}"))?;
        let root = work.path().join("rootfs");
        std::fs::create_dir_all(&root).map_err(|e| format!("creating the tree: {e}"))?;
        self.progress("flattening layers".into()).await;
        let n = manifest.layers.len();
        for (i, layer) in manifest.layers.iter().enumerate() {
            self.progress(format!("extracting layer {}/{n}", i + 1)).await;
            let blob = work.path().join(format!("layer-{i}"));
            let file = tokio::fs::File::create(&blob)
                .await
                .map_err(|e| format!("creating {}: {e}", blob.display()))?;
            // A registry sending more than the layer's descriptor says is cut off.
            let file = Capped { inner: file, left: u64::try_from(layer.size).unwrap_or(0) };
            client
                .pull_blob(&self.reference, layer, file)
                .await
                .map_err(|e| format!("downloading layer {}/{n}: {e}", i + 1))?;
            let (tree, cancel, path) = (root.clone(), Arc::clone(&self.cancel), blob.clone());
            tokio::task::spawn_blocking(move || image_convert::apply_layer(&tree, &path, &cancel))
                .await
                .map_err(|e| format!("layer {}/{n}: {e}", i + 1))?
                .map_err(|e| format!("layer {}/{n}: {}", i + 1, describe(&e)))?;
            let _ = tokio::fs::remove_file(&blob).await;
        }
        self.progress("injecting lohar".into()).await;
        let tree = root.clone();
        let (warnings, files, bytes) = tokio::task::spawn_blocking(move || {
            let warnings = image_convert::inject(&tree, &lohar)?;
            let (files, bytes) = image_convert::measure(&tree)?;
            Ok::<_, ConvertError>((warnings, files, bytes))
        })
        .await
        .map_err(|e| format!("injecting lohar: {e}"))?
        .map_err(|e| describe(&e))?;
        for w in &warnings {
            tracing::warn!(image = %self.name, "pull: {w}");
        }
        self.progress("creating ext4 image".into()).await;
        let out: PathBuf = work.path().join("image.ext4");
        image_convert::make_ext4(&root, &out, files, bytes).await.map_err(|e| describe(&e))?;
        let new = store::NewImage {
            owner: Some(self.owner.clone()),
            name: self.name.clone(),
            source: self.source.clone(),
            oci_digest: digest,
            oci_config: if serde_json::from_str::<serde_json::Value>(&config).is_ok() {
                config
            } else {
                String::new()
            },
            ..store::NewImage::default()
        };
        let image =
            crate::images::publish(&self.state, new, out, dir).await.map_err(|e| e.to_string())?;
        let _ = tokio::task::spawn_blocking(move || drop(work)).await;
        let result = api::PullResult {
            image: image.name.clone(),
            size_mb: u64::from(image.size_mb),
            source: image.source.clone(),
        };
        tracing::info!(image = %image.name, size_mb = image.size_mb, "image pulled");
        let meta = serde_json::json!({ "image": image.name, "ref": self.source, "size_mb": image.size_mb });
        crate::images::record(&self.state, "image.pulled", &self.owner, "", meta);
        serde_json::to_string(&result).map_err(|e| e.to_string())
    }
}

/// A writer that refuses bytes past `left` (a layer's size from its descriptor).
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more than the layer's size",
            )));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.left -= *n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A conversion error for the task's `error` (host paths are the daemon's business: a disk
/// problem is named, not located).
fn describe(e: &ConvertError) -> String {
    if e.is_no_space() {
        return "no space left on the daemon's disk".into();
    }
    match e {
        ConvertError::Invalid(m) => m.clone(),
        ConvertError::Cancelled => "cancelled".into(),
        other => {
            tracing::warn!("image conversion: {other}");
            "converting the image failed on the daemon (see its log)".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_layer_longer_than_its_descriptor_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let mut w = Capped { inner: Vec::new(), left: 5 };
        w.write_all(b"12345").await.unwrap();
        assert!(w.write_all(b"6").await.is_err());
        assert_eq!(w.inner, b"12345");
    }

    #[test]
    fn schemes_and_auth() {
        assert_eq!(split_scheme("http://127.0.0.1:5000/x:1"), Ok(("127.0.0.1:5000/x:1", true)));
        assert_eq!(split_scheme("alpine:3"), Ok(("alpine:3", false)));
        assert_eq!(split_scheme("https://r/x"), Ok(("r/x", false)));
        assert!(split_scheme("ftp://r/x").is_err());
        assert!(matches!(auth_of(None), Ok(RegistryAuth::Anonymous)));
        assert!(
            matches!(auth_of(Some("u:t")), Ok(RegistryAuth::Basic(u, t)) if u == "u" && t == "t")
        );
        assert!(auth_of(Some("no-colon")).is_err());
        assert!(auth_of(Some(":t")).is_err());
    }
}
