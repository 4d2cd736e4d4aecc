//! `/sandboxes/:id/files?path=...`: read (streamed, `X-File-Size` first), list (`ls=true`),
//! write (streamed to the guest, `Content-Length` required, 100 MiB cap) and stat (HEAD).

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::sandboxes::resolve_for_guest;
use crate::state::AppState;

/// The largest upload (the agent's own limit too).
pub const MAX_UPLOAD: u64 = 100 * 1024 * 1024;
/// The largest download streamed in one read.
pub const MAX_DOWNLOAD: u64 = 4 * 1024 * 1024 * 1024;

/// The query of a file request.
#[derive(Debug, Default)]
struct FileQuery {
    path: String,
    ls: bool,
    mode: String,
    offset: u64,
    limit: u64,
    max_bytes: u64,
}

fn parse_query(query: Option<&str>) -> ApiResult<FileQuery> {
    let mut q = FileQuery::default();
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("{k} must be a non-negative integer")))
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "path" => q.path = v.into_owned(),
            "ls" => q.ls = v == "true" || v == "1",
            "mode" => q.mode = v.into_owned(),
            "offset" => q.offset = number("offset", &v)?,
            "limit" => q.limit = number("limit", &v)?,
            "max_bytes" => q.max_bytes = number("max_bytes", &v)?,
            _ => {}
        }
    }
    if q.path.is_empty() {
        return Err(ApiError::BadRequest("path query parameter required".into()));
    }
    if !q.path.starts_with('/') || q.path.contains('\0') {
        return Err(ApiError::BadRequest(format!("path {:?} must be absolute", q.path)));
    }
    Ok(q)
}

/// The handler for every method.
pub async fn files(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> ApiResult<Response> {
    let sandbox = resolve_for_guest(&state, &user, &id).await?;
    let q = parse_query(query.as_deref())?;
    match *request.method() {
        Method::GET if q.ls => {
            let list = state.engine.file_list(&sandbox.id, &q.path).await?;
            let list: Vec<api::FileInfo> = list
                .into_iter()
                .map(|f| api::FileInfo {
                    name: f.name,
                    size: f.size,
                    mode: f.mode,
                    is_dir: f.is_dir,
                    mtime: f.mtime,
                })
                .collect();
            Ok(axum::Json(list).into_response())
        }
        Method::GET => read(state, sandbox.id, q).await,
        Method::PUT => write(&state, &sandbox.id, &q, request).await,
        Method::HEAD => stat(&state, &sandbox.id, &q).await,
        _ => Ok(crate::request::method_not_allowed().await),
    }
}

async fn stat(state: &AppState, id: &str, q: &FileQuery) -> ApiResult<Response> {
    let info = state.engine.file_stat(id, &q.path).await.map_err(|e| match e.kind() {
        engine::ErrorKind::Guest(_) => ApiError::NotFound(e.to_string()),
        _ => ApiError::Engine(e),
    })?;
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    headers.insert(api::FILE_SIZE_HEADER, value(info.size.to_string()));
    headers.insert(api::FILE_MODE_HEADER, value(info.mode));
    headers.insert(api::FILE_IS_DIR_HEADER, value(info.is_dir.to_string()));
    Ok(response)
}

/// Streams the file: the read runs in a task writing into a pipe whose other end is the body;
/// the headers go out once the guest has said how big the file is.
async fn read(state: AppState, id: String, q: FileQuery) -> ApiResult<Response> {
    let truncating = q.limit > 0 || q.max_bytes > 0;
    let opts = engine::ReadOptions { offset: q.offset, limit: q.limit, max_bytes: q.max_bytes };
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let (sized_tx, sized_rx) = tokio::sync::oneshot::channel::<u64>();
    let path = q.path.clone();
    let task = tokio::spawn(async move {
        let sized = move |size: u64, _mode: &str| {
            let _ = sized_tx.send(size);
        };
        state.engine.file_read_into(&id, &path, opts, MAX_DOWNLOAD, sized, &mut writer).await
    });
    let size = match sized_rx.await {
        Ok(size) => size,
        // The read failed before the guest said anything: its error is the answer.
        Err(_) => {
            return match task.await {
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(_)) => Err(ApiError::Internal("the read ended without a size".into())),
                Err(e) => Err(ApiError::Internal(format!("file read task: {e}"))),
            };
        }
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        headers.insert(api::FILE_SIZE_HEADER, v.clone());
        if !truncating {
            headers.insert(header::CONTENT_LENGTH, v);
        }
    }
    Ok(response)
}

async fn write(state: &AppState, id: &str, q: &FileQuery, request: Request) -> ApiResult<Response> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::BadRequest("Content-Length header required for file upload".into())
        })?;
    if length > MAX_UPLOAD {
        return Err(ApiError::TooLarge(format!(
            "file of {length} bytes: at most {} MiB",
            MAX_UPLOAD / (1024 * 1024)
        )));
    }
    let mode = if q.mode.is_empty() { "0644".to_owned() } else { q.mode.clone() };
    let stream = request.into_body().into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    state.engine.file_write_from(id, &q.path, &mode, length, &mut reader).await?;
    Ok((StatusCode::OK, axum::Json(api::StatusBody { status: "ok".into() })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        let q = parse_query(Some("path=%2Fetc%2Fhosts&offset=2&limit=3")).unwrap();
        assert_eq!((q.path.as_str(), q.offset, q.limit), ("/etc/hosts", 2, 3));
        assert!(parse_query(Some("ls=true")).is_err());
        assert!(parse_query(Some("path=relative")).is_err());
        assert!(parse_query(Some("path=/x&limit=-1")).is_err());
    }
}
