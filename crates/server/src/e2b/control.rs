//! E2B's control plane (REST, JSON; `X-API-KEY` is a bhatti API key): create, list, info,
//! kill, timeout, pause, connect (resume) and metrics, on bhatti's own lifecycle service.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::E2bState;
use super::deadline;
use super::error::E2bError;
use crate::error::ApiError;

type Result<T> = std::result::Result<T, E2bError>;

/// The control plane's routes.
pub fn router(state: E2bState) -> Router {
    Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .fallback(super::unrouted)
        .with_state(state)
}

/// The caller, by `X-API-KEY`.
pub struct Caller(pub store::User);

impl FromRequestParts<E2bState> for Caller {
    type Rejection = E2bError;

    async fn from_request_parts(parts: &mut Parts, state: &E2bState) -> Result<Self> {
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .ok_or(E2bError::Unauthenticated)?;
        match state.app.store.read(move |s| s.user_by_api_key(&key)).await {
            Ok(user) => Ok(Caller(user)),
            Err(e) if e.kind() == store::ErrorKind::NotFound => Err(E2bError::Unauthenticated),
            Err(e) => Err(e.into()),
        }
    }
}

/// A JSON body (an empty one is `{}`; the SDK sends some calls without one).
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<E2bState> for Body<T> {
    type Rejection = E2bError;

    async fn from_request(req: axum::extract::Request, _: &E2bState) -> Result<Self> {
        let bytes = axum::body::to_bytes(req.into_body(), 1024 * 1024)
            .await
            .map_err(|_| E2bError::BadRequest("body too large or unreadable".into()))?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { &bytes };
        serde_json::from_slice(bytes).map(Body).map_err(|e| E2bError::BadRequest(e.to_string()))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    metadata: BTreeMap<String, String>,
    env_vars: BTreeMap<String, String>,
    auto_pause: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Timeout {
    timeout: Option<u64>,
}

/// Create and connect answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

/// Info and list items.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    alias: String,
    started_at: String,
    end_at: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u32,
    state: &'static str,
    envd_version: &'static str,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

/// The bhatti template an E2B template ID names, by ID or else by name (the newest of that
/// name; v1's names are not unique), if any; `base` never names one.
async fn bhatti_template(state: &E2bState, template_id: &str) -> Result<Option<String>> {
    if template_id.is_empty() || template_id == "base" {
        return Ok(None);
    }
    let wanted = template_id.to_owned();
    let found = state
        .app
        .store
        .read(move |s| {
            let all = s.list_templates()?;
            let by_id = all.iter().find(|t| t.id == wanted);
            let by_name = || all.iter().find(|t| t.name == wanted);
            Ok(by_id.or_else(by_name).map(|t| t.id.clone()))
        })
        .await?;
    Ok(found)
}

/// The image of a template ID: E2B's `base` is the daemon's default image (`default_image`,
/// `minimal` unless configured: what a plain `bhatti create` boots), falling back to `test` on
/// a host where that image is not built; any other ID names a bhatti image.
async fn image_for(state: &E2bState, user: &store::User, template_id: &str) -> String {
    if !template_id.is_empty() && template_id != "base" {
        return super::template_images::image_of(template_id).to_owned();
    }
    let default = state.app.settings.default_image.clone();
    match crate::image_catalog::boot_file(&state.app, user, &default).await {
        Ok(_) => default,
        Err(_) => {
            tracing::warn!(
                image = %default,
                "e2b: the default image is not built; template base uses the test image"
            );
            "test".into()
        }
    }
}

fn iso(unix: i64) -> String {
    crate::times::rfc3339(store::Timestamp(unix.saturating_mul(1000)))
}

fn now() -> i64 {
    store::Timestamp::now().0 / 1000
}

fn metadata_of(e: &store::E2bSandbox) -> BTreeMap<String, String> {
    serde_json::from_str(&e.metadata).unwrap_or_default()
}

fn info_of(state: &E2bState, s: &store::Sandbox, e: &store::E2bSandbox) -> Info {
    Info {
        template_id: e.template_id.clone(),
        sandbox_id: s.id.clone(),
        client_id: "bhatti",
        alias: e.template_id.clone(),
        started_at: iso(e.started_at),
        end_at: iso(e.end_at),
        cpu_count: s.cpus.ceil().max(1.0) as u32,
        memory_mb: s.memory_mb,
        disk_size_mb: s.disk_size_mb,
        state: if s.user_stopped { "paused" } else { "running" },
        envd_version: super::ENVD_VERSION,
        metadata: metadata_of(e),
        domain: state.config.domain.clone(),
    }
}

/// The caller's E2B sandbox and its bhatti row (another owner's is not found).
async fn owned(
    state: &E2bState,
    user: &store::User,
    id: &str,
) -> Result<(store::Sandbox, store::E2bSandbox)> {
    let (sid, owner) = (id.to_owned(), user.id.clone());
    let found = state
        .app
        .store
        .read(move |s| {
            let Some(e) = s.e2b_sandbox(&sid)? else { return Ok(None) };
            if e.owner != owner {
                return Ok(None);
            }
            Ok(Some((s.sandbox_by_id(&sid)?, e)))
        })
        .await;
    match found {
        Ok(Some(pair)) => Ok(pair),
        Ok(None) => Err(E2bError::SandboxNotFound(id.to_owned())),
        Err(e) if e.kind() == store::ErrorKind::NotFound => {
            Err(E2bError::SandboxNotFound(id.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn created(state: &E2bState, e: &store::E2bSandbox) -> Result<Created> {
    let token = state
        .app
        .sealer
        .open(e.token_sealed.clone())
        .await
        .map_err(|err| ApiError::Internal(format!("opening an envd token: {err}")))?;
    Ok(Created {
        template_id: e.template_id.clone(),
        sandbox_id: e.sandbox_id.clone(),
        client_id: "bhatti",
        envd_version: super::ENVD_VERSION,
        envd_access_token: String::from_utf8_lossy(&token).into_owned(),
        domain: state.config.domain.clone(),
    })
}

/// `POST /v2/sandboxes` (201).
async fn create(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Body(req): Body<NewSandbox>,
) -> Result<Response> {
    let template_id = if req.template_id.is_empty() { "base".into() } else { req.template_id };
    let body = match bhatti_template(&state, &template_id).await? {
        // The template's image, sizes, secrets and volumes, as `bhatti create --template`.
        Some(id) => api::CreateSandbox { template_id: id, env: req.env_vars, ..Default::default() },
        None => {
            let image = image_for(&state, &user, &template_id).await;
            api::CreateSandbox { image, env: req.env_vars, ..Default::default() }
        }
    };
    let answer = crate::sandboxes::create(
        State(state.app.clone()),
        crate::auth::CurrentUser(user.clone()),
        crate::request::Json(body),
    )
    .await?;
    let bytes = axum::body::to_bytes(answer.into_body(), 1024 * 1024)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the create answer: {e}")))?;
    let sandbox: api::Sandbox = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("reading the create answer: {e}")))?;
    let token = Zeroizing::new(crate::sandboxes::random_hex(32).into_bytes());
    let token_sha256 = store::sha256_hex(&String::from_utf8_lossy(&token));
    let token_sealed = state
        .app
        .sealer
        .seal(token.clone())
        .await
        .map_err(|e| ApiError::Internal(format!("sealing an envd token: {e}")))?;
    let started_at = now();
    let row = store::E2bSandbox {
        sandbox_id: sandbox.id.clone(),
        owner: user.id.clone(),
        template_id,
        token_sha256,
        token_sealed,
        metadata: serde_json::to_string(&req.metadata).unwrap_or_else(|_| "{}".into()),
        started_at,
        end_at: deadline::end_at(started_at, req.timeout),
        auto_pause: req.auto_pause,
    };
    let stored = row.clone();
    state.app.store.write(move |s| s.insert_e2b_sandbox(&stored)).await?;
    let mut out = created(&state, &row).await?;
    out.envd_access_token = String::from_utf8_lossy(&token).into_owned();
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// `GET /v2/sandboxes?metadata=k%3Dv%26..&state=running,paused&template=&order=&limit=&nextToken=`:
/// one page, by start time (then ID); `x-next-token` names where the next page starts.
async fn list(
    State(state): State<E2bState>,
    Caller(user): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let q = ListQuery::parse(query.as_deref().unwrap_or(""))?;
    let owner = user.id.clone();
    let rows = state
        .app
        .store
        .read(move |s| {
            let mut out = Vec::new();
            for e in s.e2b_sandboxes_of(&owner)? {
                out.push((s.sandbox_by_id(&e.sandbox_id)?, e));
            }
            Ok(out)
        })
        .await?;
    let matching: Vec<(Cursor, Info)> = rows
        .iter()
        .map(|(s, e)| {
            (Cursor { started_at: e.started_at, id: s.id.clone() }, info_of(&state, s, e))
        })
        .filter(|(_, i)| q.matches(i))
        .collect();
    let (page, next) = page_of(matching, &q);
    let mut response = axum::Json(page).into_response();
    if let Some(next) = next
        && let Ok(value) = HeaderValue::from_str(&next.token())
    {
        response.headers_mut().insert("x-next-token", value);
    }
    Ok(response)
}

/// Where a page starts: the sort key (start time, then ID) of the item before it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    started_at: i64,
    id: String,
}

impl Cursor {
    /// `<started_at>.<id>` (opaque to the SDK, which sends it back as `nextToken`).
    fn token(&self) -> String {
        format!("{}.{}", self.started_at, self.id)
    }

    fn parse(token: &str) -> Option<Self> {
        let (t, id) = token.split_once('.')?;
        let started_at = t.parse().ok()?;
        (!id.is_empty()).then(|| Cursor { started_at, id: id.to_owned() })
    }
}

/// One page of `items` after the query's token, in its order, and the cursor of the next page
/// when there are more items.
fn page_of<T>(items: Vec<(Cursor, T)>, q: &ListQuery) -> (Vec<T>, Option<Cursor>) {
    let mut items = items;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    if q.descending {
        items.reverse();
    }
    let after = |c: &Cursor| match &q.after {
        None => true,
        Some(a) if q.descending => c < a,
        Some(a) => c > a,
    };
    let mut rest = items.into_iter().filter(|(c, _)| after(c));
    let mut page = Vec::new();
    let mut last = None;
    for (cursor, item) in rest.by_ref().take(q.limit) {
        page.push(item);
        last = Some(cursor);
    }
    let next = if rest.next().is_some() { last } else { None };
    (page, next)
}

/// The list's query.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    metadata: BTreeMap<String, String>,
    states: Vec<String>,
    template: Option<String>,
    descending: bool,
    limit: usize,
    after: Option<Cursor>,
}

impl ListQuery {
    fn parse(query: &str) -> Result<Self> {
        let mut q = ListQuery { limit: 100, ..Default::default() };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "metadata" => {
                    q.metadata.extend(form_urlencoded::parse(v.as_bytes()).into_owned());
                }
                "state" => q.states.extend(v.split(',').map(str::to_owned)),
                "template" if !v.is_empty() => q.template = Some(v.into_owned()),
                "order" => {
                    q.descending = match &*v {
                        "asc" => false,
                        "desc" => true,
                        _ => return Err(E2bError::BadRequest("order: asc or desc".into())),
                    }
                }
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=1000).contains(l))
                        .ok_or_else(|| E2bError::BadRequest("limit: 1 to 1000".into()))?;
                }
                "nextToken" if !v.is_empty() => {
                    q.after = Some(
                        Cursor::parse(&v)
                            .ok_or_else(|| E2bError::BadRequest("invalid nextToken".into()))?,
                    );
                }
                _ => {}
            }
        }
        Ok(q)
    }

    fn matches(&self, info: &Info) -> bool {
        let state_ok = self.states.is_empty() || self.states.iter().any(|s| s == info.state);
        let template_ok = self.template.as_ref().is_none_or(|t| *t == info.template_id);
        state_ok
            && template_ok
            && self.metadata.iter().all(|(k, v)| info.metadata.get(k) == Some(v))
    }
}

/// `GET /sandboxes/{id}`.
async fn info(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let (s, e) = owned(&state, &user, &id).await?;
    Ok(axum::Json(info_of(&state, &s, &e)).into_response())
}

/// `DELETE /sandboxes/{id}` (204).
async fn kill(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let (s, _) = owned(&state, &user, &id).await?;
    crate::lifecycle::destroy(&state.app, &s).await?;
    state.procs.forget_sandbox(&s.id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/timeout` (204): the deadline becomes now + timeout.
async fn set_timeout(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Body(req): Body<Timeout>,
) -> Result<Response> {
    let (s, _) = owned(&state, &user, &id).await?;
    let end = deadline::end_at(now(), req.timeout);
    state.app.store.write(move |st| st.set_e2b_deadline(&s.id, end)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/pause` (204; 409 when paused already): a cold stop.
async fn pause(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let (s, _) = owned(&state, &user, &id).await?;
    if s.user_stopped {
        return Err(E2bError::AlreadyPaused(id));
    }
    deadline::pause(&state.app, s).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v2/sandboxes/{id}/connect`: wakes a paused sandbox (its processes with it) and
/// answers as create does; a `timeout` moves the deadline.
async fn connect(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Body(req): Body<Timeout>,
) -> Result<Response> {
    let (s, mut e) = owned(&state, &user, &id).await?;
    let status = if s.user_stopped { StatusCode::CREATED } else { StatusCode::OK };
    if s.user_stopped {
        crate::lifecycle::start(&state.app, s, false).await?;
    }
    // A deadline that has passed (an auto-paused sandbox) would pause it again at once.
    if req.timeout.is_some() || e.end_at <= now() {
        e.end_at = deadline::end_at(now(), req.timeout);
        let (sid, end) = (e.sandbox_id.clone(), e.end_at);
        state.app.store.write(move |st| st.set_e2b_deadline(&sid, end)).await?;
    }
    Ok((status, axum::Json(created(&state, &e).await?)).into_response())
}

/// `GET /sandboxes/{id}/metrics`: one sample measured in the guest now (`metrics.rs`); a
/// paused sandbox, or one whose numbers cannot be read, has none (an empty list).
async fn metrics(
    State(state): State<E2bState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let (s, _) = owned(&state, &user, &id).await?;
    if s.user_stopped {
        return Ok(axum::Json(Vec::<serde_json::Value>::new()).into_response());
    }
    let Some(m) = super::metrics::measure(&state.app.engine, &s.id).await else {
        return Ok(axum::Json(Vec::<serde_json::Value>::new()).into_response());
    };
    let t = now();
    let sample = serde_json::json!({
        "timestamp": iso(t),
        "timestampUnix": t,
        "cpuCount": s.cpus.ceil().max(1.0) as u32,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    });
    Ok(axum::Json(vec![sample]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_table() {
        let q = ListQuery::parse("metadata=user%3Dalice%26app%3Dprod&state=running,paused&limit=2")
            .unwrap();
        assert_eq!(q.metadata.get("user").map(String::as_str), Some("alice"));
        assert_eq!(q.metadata.get("app").map(String::as_str), Some("prod"));
        assert_eq!(q.states, ["running", "paused"]);
        assert_eq!(q.limit, 2);
        let rows = [("zero limit", "limit=0"), ("huge limit", "limit=5000"), ("text", "limit=x")];
        for (name, query) in rows {
            assert!(ListQuery::parse(query).is_err(), "{name}");
        }
        let rows = [
            ("bad order", "order=up"),
            ("token without a time", "nextToken=abc"),
            ("token without an id", "nextToken=12."),
        ];
        for (name, query) in rows {
            assert!(ListQuery::parse(query).is_err(), "{name}");
        }
        let q = ListQuery::parse("nextToken=12.abc&order=desc&template=base").unwrap();
        assert_eq!(q.after, Some(Cursor { started_at: 12, id: "abc".into() }));
        assert!(q.descending);
        assert_eq!(q.template.as_deref(), Some("base"));
        assert_eq!(ListQuery::parse("nextToken=").unwrap().after, None);
        // A cursor's token parses back to itself (IDs may hold dots).
        let c = Cursor { started_at: 1_700_000_000, id: "a.b".into() };
        assert_eq!(Cursor::parse(&c.token()), Some(c));
    }

    #[test]
    fn pages_table() {
        // Paged by (start time, ID): IDs out of start order, and two sandboxes started in the
        // same second, so neither key alone would page right; the input order does not matter.
        let items = || {
            [(11, "aa"), (10, "zzz"), (12, "mm"), (10, "zz")]
                .map(|(t, id)| (Cursor { started_at: t, id: id.into() }, id))
                .to_vec()
        };
        let q = |query: &str| ListQuery::parse(query).unwrap();
        let rows: [(&str, ListQuery, &[&str], Option<&str>); 8] = [
            ("all in one page", q(""), &["zz", "zzz", "aa", "mm"], None),
            ("first of two", q("limit=2"), &["zz", "zzz"], Some("10.zzz")),
            ("second of two", q("limit=2&nextToken=10.zzz"), &["aa", "mm"], None),
            ("exactly full", q("limit=4"), &["zz", "zzz", "aa", "mm"], None),
            ("after the first", q("limit=1&nextToken=10.zz"), &["zzz"], Some("10.zzz")),
            ("descending", q("limit=3&order=desc"), &["mm", "aa", "zzz"], Some("10.zzz")),
            ("descending, next", q("order=desc&nextToken=10.zzz"), &["zz"], None),
            ("past the end", q("nextToken=99.x"), &[], None),
        ];
        for (name, query, want, next) in rows {
            let (page, cursor) = page_of(items(), &query);
            assert_eq!(page, want, "{name}");
            assert_eq!(cursor.map(|c| c.token()).as_deref(), next, "{name}");
        }
    }
}
