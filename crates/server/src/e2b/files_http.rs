//! envd's plain-HTTP `/files`: `GET ?path=` streams a file's bytes; `POST` takes
//! `multipart/form-data` (part `file`, the filename its path when the query names none) or
//! `application/octet-stream` (chunked), spooled to a bounded temporary file (the agent's write
//! needs the size first; 100 MiB, 413 beyond) and streamed into the guest. Errors are JSON
//! `{"code", "message"}` (the SDK reads `message`).

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::E2bState;
use super::envd::Guest;
use super::error::E2bError;
use super::filesystem::absolute;
use crate::error::ApiError;

/// The largest upload (the agent's own limit).
const MAX_UPLOAD: u64 = crate::files::MAX_UPLOAD;
/// The largest download.
const MAX_DOWNLOAD: u64 = crate::files::MAX_DOWNLOAD;

fn path_of(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "path")
        .map(|(_, v)| v.into_owned())
        .filter(|p| !p.is_empty())
}

fn bad(message: String) -> E2bError {
    E2bError::BadRequest(message)
}

/// `GET /files?path=`.
pub async fn download(
    State(state): State<E2bState>,
    axum::Extension(guest): axum::Extension<Guest>,
    RawQuery(query): RawQuery,
) -> Result<Response, E2bError> {
    let path = path_of(query.as_deref()).ok_or_else(|| bad("path required".into()))?;
    let path = absolute(&path).map_err(|e| bad(e.message))?;
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let (sized_tx, sized_rx) = tokio::sync::oneshot::channel::<u64>();
    let engine = state.app.engine.clone();
    let task = tokio::spawn(async move {
        let sized = move |size: u64, _mode: &str| {
            let _ = sized_tx.send(size);
        };
        let opts = engine::ReadOptions::default();
        engine.file_read_into(&guest.id, &path, opts, MAX_DOWNLOAD, sized, &mut writer).await
    });
    let size = match sized_rx.await {
        Ok(size) => size,
        Err(_) => {
            return Err(match task.await {
                Ok(Err(e)) => ApiError::Engine(e).into(),
                Ok(Ok(_)) => ApiError::Internal("the read ended without a size".into()).into(),
                Err(e) => ApiError::Internal(format!("file read task: {e}")).into(),
            });
        }
    };
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(reader)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    Ok(response)
}

/// Spools a stream of chunks into a temporary file, at most [`MAX_UPLOAD`] bytes.
async fn spool<S, E>(mut chunks: S) -> Result<(tokio::fs::File, u64), E2bError>
where
    S: Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("a temporary file: {e}")))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| bad(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > MAX_UPLOAD {
            return Err(ApiError::TooLarge(format!(
                "file too large (max {} MiB)",
                MAX_UPLOAD / (1024 * 1024)
            ))
            .into());
        }
        file.write_all(&chunk).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    file.flush().await.map_err(|e| ApiError::Internal(e.to_string()))?;
    file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((file, size))
}

/// Writes a spooled file to the guest (its parent directories made first, as envd does).
async fn put(
    state: &E2bState,
    guest: &Guest,
    path: &str,
    mut file: tokio::fs::File,
    size: u64,
) -> Result<serde_json::Value, E2bError> {
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        state
            .app
            .engine
            .exec(&guest.id, &["mkdir", "-p", "--", parent])
            .await
            .map_err(ApiError::Engine)?;
    }
    state
        .app
        .engine
        .file_write_from(&guest.id, path, "0644", size, &mut file)
        .await
        .map_err(ApiError::Engine)?;
    let name = path.rsplit('/').next().unwrap_or(path);
    Ok(serde_json::json!({ "name": name, "type": "file", "path": path }))
}

/// `POST /files[?path=]`.
pub async fn upload(
    State(state): State<E2bState>,
    axum::Extension(guest): axum::Extension<Guest>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, E2bError> {
    let query_path = path_of(query.as_deref());
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let gzip = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if gzip {
        return Err(bad("gzip-encoded uploads are not supported yet".into()));
    }
    let mut written = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| bad(format!("multipart: {e}")))?;
        while let Some(field) =
            multipart.next_field().await.map_err(|e| bad(format!("multipart: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let path = match (&query_path, field.file_name()) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) if !f.is_empty() => f.to_owned(),
                _ => return Err(bad("a file part needs a path (query) or a filename".into())),
            };
            let path = absolute(&path).map_err(|e| bad(e.message))?;
            let (file, size) = spool(field).await?;
            written.push(put(&state, &guest, &path, file, size).await?);
        }
    } else {
        let path = query_path.ok_or_else(|| bad("path required".into()))?;
        let path = absolute(&path).map_err(|e| bad(e.message))?;
        let (file, size) = spool(request.into_body().into_data_stream()).await?;
        written.push(put(&state, &guest, &path, file, size).await?);
    }
    if written.is_empty() {
        return Err(bad("no file in the upload".into()));
    }
    Ok(axum::Json(written).into_response())
}
