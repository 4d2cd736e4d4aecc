//! Every API route in one table: the router is built from it (`lib.rs::router`) and so is the
//! OpenAPI document (`GET /openapi.json`), so neither can have a route the other lacks (axum's
//! `Router` cannot list its routes; this table is the list). A route is one entry:
//!
//! ```ignore
//! post("/volumes", volumes::create).summary("Create a volume").takes::<api::NewVolume>().returns::<api::Volume>(201),
//! ```
//!
//! `get`/`post`/`put`/`patch`/`delete` take the path (axum's syntax: `{id}`, `{*rest}`) and
//! the handler; then `summary`, `takes::<T>()` (a JSON body), `returns::<T>(status)`,
//! `returns_list::<T>(status)`, `returns_empty(status)`, `returns_text(status, media type)`,
//! `query(&[names])` and `public()` (no API key). The types derive `utoipa::ToSchema`
//! (`crates/api`).

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::handler::Handler;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, Paths,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ComponentsBuilder, Schema};
use utoipa::openapi::security::{HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Required};

use crate::state::AppState;
use crate::{
    backups, diff, events_api, exec, files, fork, forward, image_pull, images, metrics_http, ports,
    proxy, publish, sandboxes, secrets, sessions, shape_warm, shapes, snapshots, tasks, templates,
    volumes, web_shell, ws,
};

type Schemas = Vec<(String, RefOr<Schema>)>;

/// A body's media type and schema.
#[derive(Clone)]
struct Body {
    media: &'static str,
    schema: Option<RefOr<Schema>>,
}

/// One route: what the router serves and what the document says about it.
pub struct Route {
    /// The methods the document lists (one, but for `any` routes).
    pub methods: Vec<HttpMethod>,
    /// axum's path syntax.
    pub path: &'static str,
    handler: MethodRouter<AppState>,
    summary: &'static str,
    public: bool,
    query: &'static [&'static str],
    body: Option<Body>,
    responses: Vec<(u16, Option<Body>)>,
    schemas: Schemas,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("path", &self.path).finish_non_exhaustive()
    }
}

fn route(methods: Vec<HttpMethod>, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        methods,
        path,
        handler,
        summary: "",
        public: false,
        query: &[],
        body: None,
        responses: Vec::new(),
        schemas: Vec::new(),
    }
}

/// `GET path`.
pub fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(vec![HttpMethod::Get], path, axum::routing::get(h))
}
/// `POST path`.
pub fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(vec![HttpMethod::Post], path, axum::routing::post(h))
}
/// `PUT path`.
pub fn put<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(vec![HttpMethod::Put], path, axum::routing::put(h))
}
/// `PATCH path`.
pub fn patch<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(vec![HttpMethod::Patch], path, axum::routing::patch(h))
}
/// `DELETE path`.
pub fn delete<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(vec![HttpMethod::Delete], path, axum::routing::delete(h))
}
/// Any method (the handler sorts them out); the document lists `methods`.
pub fn any<H: Handler<T, AppState>, T: 'static>(
    path: &'static str,
    methods: &[HttpMethod],
    h: H,
) -> Route {
    route(methods.to_vec(), path, axum::routing::any(h))
}

fn json_ref<T: utoipa::ToSchema>(schemas: &mut Schemas) -> RefOr<Schema> {
    let name = T::name();
    schemas.push((name.to_string(), T::schema()));
    T::schemas(schemas);
    RefOr::Ref(Ref::from_schema_name(name))
}

impl Route {
    /// One line on what it does.
    pub fn summary(mut self, s: &'static str) -> Self {
        self.summary = s;
        self
    }

    /// No API key (`/health`, the web shell, this document).
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Query parameters it reads.
    pub fn query(mut self, names: &'static [&'static str]) -> Self {
        self.query = names;
        self
    }

    /// A JSON request body.
    pub fn takes<T: utoipa::ToSchema>(mut self) -> Self {
        let schema = json_ref::<T>(&mut self.schemas);
        self.body = Some(Body { media: "application/json", schema: Some(schema) });
        self
    }

    /// A raw request body (files).
    pub fn takes_bytes(mut self) -> Self {
        self.body = Some(Body { media: "application/octet-stream", schema: None });
        self
    }

    /// A JSON answer with `status`.
    pub fn returns<T: utoipa::ToSchema>(mut self, status: u16) -> Self {
        let schema = json_ref::<T>(&mut self.schemas);
        self.responses
            .push((status, Some(Body { media: "application/json", schema: Some(schema) })));
        self
    }

    /// A JSON array answer with `status`.
    pub fn returns_list<T: utoipa::ToSchema>(mut self, status: u16) -> Self {
        let item = json_ref::<T>(&mut self.schemas);
        let array: Schema = ArrayBuilder::new().items(item).into();
        self.responses
            .push((status, Some(Body { media: "application/json", schema: Some(array.into()) })));
        self
    }

    /// An NDJSON stream of `T`, one per line, with `status`.
    pub fn streams<T: utoipa::ToSchema>(mut self, status: u16) -> Self {
        let schema = json_ref::<T>(&mut self.schemas);
        self.responses.push((status, Some(Body { media: api::NDJSON, schema: Some(schema) })));
        self
    }

    /// An answer without a body.
    pub fn returns_empty(mut self, status: u16) -> Self {
        self.responses.push((status, None));
        self
    }

    /// A non-JSON answer (`text/html`, bytes, a WebSocket's 101).
    pub fn returns_text(mut self, status: u16, media: &'static str) -> Self {
        self.responses.push((status, Some(Body { media, schema: None })));
        self
    }

    /// The documented methods' names (`GET`...).
    pub fn method_names(&self) -> Vec<&'static str> {
        self.methods
            .iter()
            .map(|m| match m {
                HttpMethod::Get => "GET",
                HttpMethod::Post => "POST",
                HttpMethod::Put => "PUT",
                HttpMethod::Delete => "DELETE",
                HttpMethod::Options => "OPTIONS",
                HttpMethod::Head => "HEAD",
                HttpMethod::Patch => "PATCH",
                HttpMethod::Trace => "TRACE",
            })
            .collect()
    }

    /// The OpenAPI path (`{*rest}` is `{rest}`).
    pub fn openapi_path(&self) -> String {
        self.path.replace("{*", "{")
    }

    fn path_params(&self) -> Vec<String> {
        self.openapi_path()
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}').map(str::to_owned))
            .collect()
    }
}

/// The authenticated proxy at `path` (three spellings of one route: with and without the
/// trailing slash, and with a rest of the path).
fn proxy_route(path: &'static str) -> Route {
    const METHODS: &[HttpMethod] = &[
        HttpMethod::Get,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Patch,
        HttpMethod::Delete,
    ];
    any(path, METHODS, proxy::proxy).summary("HTTP to a guest port").returns_text(200, "*/*")
}

/// Every API route.
pub fn table() -> Vec<Route> {
    const LIST_QUERY: &[&str] = &["type", "sandbox", "since", "limit", "follow"];
    vec![
        get("/health", crate::health)
            .summary("Liveness and uptime")
            .public()
            .returns::<api::Health>(200),
        get("/openapi.json", openapi_json)
            .summary("This document")
            .public()
            .returns_text(200, "application/json"),
        // Sandboxes.
        get("/sandboxes", sandboxes::list)
            .summary("The caller's sandboxes")
            .query(&["label"])
            .returns_list::<api::Sandbox>(200),
        post("/sandboxes", sandboxes::create)
            .summary("Create a sandbox (idempotent by name)")
            .takes::<api::CreateSandbox>()
            .returns::<api::Sandbox>(201)
            .returns::<api::Sandbox>(200),
        get("/sandboxes/{id}", sandboxes::get)
            .summary("One sandbox, by ID or name")
            .returns::<api::Sandbox>(200),
        patch("/sandboxes/{id}", sandboxes::update)
            .summary("Rename, relabel, keep hot, egress policy")
            .takes::<api::UpdateSandbox>()
            .returns::<api::Sandbox>(200),
        delete("/sandboxes/{id}", sandboxes::destroy)
            .summary("Destroy a sandbox")
            .returns::<api::StatusBody>(200),
        post("/sandboxes/{id}/stop", sandboxes::stop)
            .summary("Suspend to disk")
            .returns::<api::Sandbox>(200),
        post("/sandboxes/{id}/start", sandboxes::start)
            .summary("Start or wake")
            .takes::<api::StartRequest>()
            .returns::<api::Sandbox>(200),
        post("/sandboxes/{id}/exec", exec::exec)
            .summary("Run a command (buffered JSON, NDJSON stream, or detached)")
            .takes::<api::ExecBody>()
            .returns::<api::ExecResult>(200)
            .streams::<api::ExecEvent>(200),
        any(
            "/sandboxes/{id}/files",
            &[HttpMethod::Get, HttpMethod::Put, HttpMethod::Head],
            files::files,
        )
        .summary(
            "Read (streamed), write (Content-Length), stat (HEAD) or list (ls=true) a guest file",
        )
        .query(&["path", "offset", "limit", "max_bytes", "ls", "mode"])
        .takes_bytes()
        .returns_text(200, "application/octet-stream")
        .returns_list::<api::FileInfo>(200),
        get("/sandboxes/{id}/ports", ports::sandbox_ports)
            .summary("The guest's listening ports")
            .returns_list::<api::Port>(200),
        get("/ports", ports::all_ports)
            .summary("Listening ports of all the caller's sandboxes")
            .returns_text(200, "application/json"),
        proxy_route("/sandboxes/{id}/proxy/{port}"),
        proxy_route("/sandboxes/{id}/proxy/{port}/"),
        proxy_route("/sandboxes/{id}/proxy/{port}/{*rest}"),
        get("/sandboxes/{id}/ws", ws::tty)
            .summary("Terminal WebSocket (?token= accepted)")
            .query(&["token", "session", "new"])
            .returns_text(101, "application/octet-stream"),
        get("/sandboxes/{id}/exec/ws", ws::piped)
            .summary("Piped exec WebSocket (?token= accepted)")
            .query(&["token", "session"])
            .returns_text(101, "application/octet-stream"),
        // Secrets (age-sealed at rest; values never answered).
        get("/secrets", secrets::list)
            .summary("The caller's secrets: names and times only")
            .returns_list::<api::SecretRecord>(200),
        post("/secrets", secrets::set)
            .summary("Set (upsert) a secret")
            .takes::<api::SetSecret>()
            .returns::<api::SecretRecord>(201),
        delete("/secrets/{name}", secrets::delete)
            .summary("Delete a secret")
            .returns::<api::StatusBody>(200),
        // Persistent volumes and their backups.
        get("/volumes", volumes::list)
            .summary("The caller's volumes")
            .returns_list::<api::PersistentVolume>(200),
        post("/volumes", volumes::create)
            .summary("Create a volume (an ext4 file; storage quota)")
            .takes::<api::CreateVolumeRequest>()
            .returns::<api::PersistentVolume>(201),
        get("/volumes/{name}", volumes::get)
            .summary("One volume, with its attachments")
            .returns::<api::PersistentVolume>(200),
        delete("/volumes/{name}", volumes::delete)
            .summary("Delete a detached volume")
            .returns::<api::StatusOnly>(200),
        post("/volumes/{name}/resize", volumes::resize)
            .summary("Grow a detached volume")
            .takes::<api::ResizeVolumeRequest>()
            .returns::<api::VolumeResized>(200),
        post("/volumes/{name}/snapshot", volumes::snapshot)
            .summary("An independent copy of a detached volume (the CLI's clone)")
            .takes::<api::CloneVolumeRequest>()
            .returns::<api::PersistentVolume>(201),
        get("/volumes/{name}/backups", backups::list)
            .summary("The volume's backups, newest first")
            .returns_list::<api::VolumeBackup>(200),
        post("/volumes/{name}/backups", backups::create)
            .summary("Back the volume up to S3 (zstd)")
            .returns::<api::VolumeBackup>(201),
        post("/volumes/{name}/backups/restore", backups::restore)
            .summary("Restore a detached volume from one of its backups")
            .takes::<api::RestoreRequest>()
            .returns::<api::Restored>(200),
        delete("/volumes/{name}/backups/{backup_id}", backups::delete)
            .summary("Delete a backup")
            .returns::<api::StatusOnly>(200),
        // Images and their tasks.
        get("/images", images::list)
            .summary("Images the caller may use: own, shared, global")
            .returns_list::<api::Image>(200),
        post("/images/import", images::import)
            .summary("Import a `docker save` tarball (streamed, size-capped) as an image")
            .query(&["name"])
            .takes_bytes()
            .returns::<api::Imported>(201),
        post("/images/pull", image_pull::pull)
            .summary("Pull an OCI image in the background (a task), or say it exists")
            .takes::<api::PullRequest>()
            .returns::<api::PullStarted>(202)
            .returns::<api::PullStarted>(200),
        get("/images/{name}", images::get).summary("One image").returns::<api::Image>(200),
        delete("/images/{name}", images::delete)
            .summary("Delete the caller's own image (not while a sandbox boots from it)")
            .returns::<api::StatusBody>(200),
        post("/sandboxes/{id}/save-image", images::save)
            .summary("Save a sandbox's disk as an image")
            .takes::<api::SaveImageRequest>()
            .returns::<api::Image>(201),
        get("/tasks/{id}", tasks::get)
            .summary("A background task (image pull) and its progress")
            .returns::<api::Task>(200),
        delete("/tasks/{id}", tasks::cancel)
            .summary("Cancel a running task")
            .returns::<api::StatusBody>(200),
        // Fork (ours).
        post("/sandboxes/{id}/fork", fork::fork)
            .summary("Copy-on-write clones of a hot or warm sandbox (memory, processes, files)")
            .takes::<api::ForkRequest>()
            .returns_list::<api::Sandbox>(201),
        // Named snapshots.
        post("/sandboxes/{id}/checkpoint", snapshots::checkpoint)
            .summary("Capture a named snapshot of a hot or warm sandbox (it keeps running)")
            .takes::<api::CheckpointRequest>()
            .returns::<api::Snapshot>(201),
        get("/snapshots", snapshots::list)
            .summary("The caller's snapshots")
            .returns_list::<api::Snapshot>(200),
        get("/snapshots/{name}", snapshots::get)
            .summary("One snapshot")
            .returns::<api::Snapshot>(200),
        delete("/snapshots/{name}", snapshots::delete)
            .summary("Delete a snapshot and its files")
            .returns::<api::StatusBody>(200),
        post("/snapshots/{name}/resume", snapshots::resume)
            .summary("A new sandbox from a snapshot")
            .takes::<api::ResumeRequest>()
            .returns::<api::Sandbox>(201),
        // What changed in a sandbox's filesystem (issue 24).
        get("/sandboxes/{id}/diff", diff::diff)
            .summary("Files added, changed and deleted since creation or a snapshot")
            .query(&["against", "patch"])
            .returns::<api::Diff>(200),
        // Shape snapshots (ours).
        post("/templates/{id}/warm", shape_warm::warm)
            .summary("Capture a template's shape snapshot ahead of its first create")
            .returns::<api::WarmResult>(200),
        get("/shapes", shapes::list)
            .summary("The shape snapshots (admin)")
            .returns_list::<api::ShapeSnapshot>(200),
        delete("/shapes/{key}", shapes::delete)
            .summary("Drop a shape snapshot (admin)")
            .returns::<api::StatusBody>(200),
        // Templates (global, as v1's).
        get("/templates", templates::list)
            .summary("Every template")
            .returns_list::<api::Template>(200),
        post("/templates", templates::create)
            .summary("Create a template")
            .takes::<api::Template>()
            .returns::<api::Template>(201),
        get("/templates/{id}", templates::get)
            .summary("One template")
            .returns::<api::Template>(200),
        delete("/templates/{id}", templates::delete)
            .summary("Delete a template")
            .returns::<api::StatusBody>(200),
        get("/sandboxes/{id}/publish", publish::list)
            .summary("Published ports")
            .returns_list::<api::PublishRule>(200),
        post("/sandboxes/{id}/publish", publish::publish)
            .summary("Publish a guest port under an alias")
            .takes::<api::PublishRequest>()
            .returns::<api::PublishRule>(201),
        delete("/sandboxes/{id}/publish/{port}", publish::unpublish)
            .summary("Unpublish a port")
            .returns_empty(204),
        get("/sandboxes/{id}/forward", forward::list)
            .summary("Forwards to the host's loopback")
            .returns_list::<api::Forward>(200),
        post("/sandboxes/{id}/forward", forward::create)
            .summary("Forward a host loopback port to a guest port")
            .takes::<api::ForwardRequest>()
            .returns::<api::Forward>(201),
        delete("/sandboxes/{id}/forward", forward::close)
            .summary("Close the sandbox's forwards")
            .returns_empty(204),
        get("/sandboxes/{id}/sessions", sessions::list)
            .summary("Shell sessions")
            .returns_list::<api::SessionInfo>(200),
        delete("/sandboxes/{id}/sessions/{session_id}", sessions::kill)
            .summary("Kill a session")
            .returns::<api::StatusBody>(200),
        post("/sandboxes/{id}/shell-token", web_shell::mint)
            .summary("Mint a web-shell share link")
            .returns::<api::ShellToken>(200),
        delete("/sandboxes/{id}/shell-token", web_shell::revoke)
            .summary("Revoke the share link")
            .returns_empty(204),
        // The web shell: no API key (the page is public, the socket takes the share token in
        // its first message); see `auth::is_web_shell_route`.
        get("/_shell/_assets/{file}", web_shell::asset)
            .summary("Web shell assets")
            .public()
            .returns_text(200, "*/*"),
        get("/_shell/{id}", web_shell::page)
            .summary("Web shell page")
            .public()
            .returns_text(200, "text/html"),
        get("/_shell/{id}/", web_shell::page)
            .summary("Web shell page")
            .public()
            .returns_text(200, "text/html"),
        get("/_shell/{id}/ws", web_shell::socket)
            .summary("Web shell socket")
            .public()
            .returns_text(101, "application/octet-stream"),
        // Events, admin, metrics.
        get("/events", events_api::list)
            .summary("The caller's events, newest first (follow=true: NDJSON as they happen)")
            .query(LIST_QUERY)
            .returns_list::<api::Event>(200)
            .streams::<api::Event>(200),
        get("/admin/events", events_api::list_all)
            .summary("Everyone's events (admin)")
            .query(&["type", "sandbox", "since", "limit", "follow", "user"])
            .returns_list::<api::Event>(200)
            .streams::<api::Event>(200),
        get("/admin/status", crate::admin_api::status)
            .summary("Daemon, sandboxes, users, host (admin)")
            .returns::<api::AdminStatus>(200),
        get("/admin/metrics", crate::admin_api::metrics)
            .summary("Minute snapshots (admin)")
            .query(&["since"])
            .returns_list::<api::MetricsSnapshot>(200),
        get("/metrics", metrics_http::scrape)
            .summary("Prometheus metrics (admin)")
            .returns_text(200, "text/plain; version=0.0.4"),
    ]
}

/// The router's routes, from the table.
pub(crate) fn add_all(mut router: axum::Router<AppState>) -> axum::Router<AppState> {
    for r in table() {
        router = router.route(r.path, r.handler);
    }
    router
}

/// The OpenAPI document of [`table`].
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    let mut schemas: Schemas = Vec::new();
    for r in table() {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .tag(r.path.trim_start_matches('/').split('/').next().unwrap_or_default());
        for p in r.path_params() {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(p)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(<String as utoipa::PartialSchema>::schema())),
            );
        }
        for q in r.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*q)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .schema(Some(<String as utoipa::PartialSchema>::schema())),
            );
        }
        if let Some(body) = &r.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(body.media, Content::new(body.schema.clone()))
                    .build(),
            ));
        }
        // Several bodies under one status (JSON or NDJSON) share its response.
        let mut by_status: Vec<(u16, ResponseBuilder)> = Vec::new();
        for (status, body) in &r.responses {
            let i = match by_status.iter().position(|(s, _)| s == status) {
                Some(i) => i,
                None => {
                    by_status
                        .push((*status, ResponseBuilder::new().description(describe(*status))));
                    by_status.len() - 1
                }
            };
            if let Some(body) = body {
                let resp = std::mem::take(&mut by_status[i].1);
                by_status[i].1 = resp.content(body.media, Content::new(body.schema.clone()));
            }
        }
        for (status, resp) in by_status {
            op = op.response(status.to_string(), resp);
        }
        op = op.response(
            "default",
            ResponseBuilder::new().description("An error").content(
                "application/json",
                Content::new(Some(json_ref::<api::ErrorBody>(&mut schemas))),
            ),
        );
        if !r.public {
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        let op = op.build();
        let path = r.openapi_path();
        for m in &r.methods {
            let item = PathItem::new(m.clone(), op.clone());
            match paths.paths.get_mut(&path) {
                Some(existing) => existing.merge_operations(item),
                None => {
                    paths.paths.insert(path.clone(), item);
                }
            }
        }
        schemas.extend(r.schemas);
    }
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas.dedup_by(|a, b| a.0 == b.0);
    let mut components = ComponentsBuilder::new().security_scheme(
        "bearer",
        SecurityScheme::Http(utoipa::openapi::security::Http::new(HttpAuthScheme::Bearer)),
    );
    for (name, schema) in schemas {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("bhatti")
                .version(api::VERSION)
                .description(Some("bhatti's REST API (v1's paths and shapes, and ours)")),
        )
        .paths(paths)
        .components(Some(components.build()))
        .build()
}

fn describe(status: u16) -> Cow<'static, str> {
    Cow::Borrowed(match status {
        101 => "Switching protocols (WebSocket)",
        200 => "OK",
        201 => "Created",
        204 => "No content",
        _ => "Answer",
    })
}

/// `GET /openapi.json`: the document, built once.
pub async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| document().to_json().unwrap_or_else(|_| "{}".into()));
    ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_document_names_bodies_answers_and_keys() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let create = &doc["paths"]["/sandboxes"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CreateSandbox"
        );
        assert_eq!(
            create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Sandbox"
        );
        assert_eq!(create["security"][0]["bearer"], serde_json::json!([]));
        assert!(doc["paths"]["/health"]["get"]["security"].is_null(), "health needs no key");
        let exec = &doc["paths"]["/sandboxes/{id}/exec"]["post"];
        assert!(exec["responses"]["200"]["content"][api::NDJSON].is_object());
        assert_eq!(exec["parameters"][0]["name"], "id");
        assert_eq!(exec["parameters"][0]["in"], "path");
        let rest = &doc["paths"]["/sandboxes/{id}/proxy/{port}/{rest}"];
        assert!(rest["get"].is_object() && rest["delete"].is_object());
        let files = &doc["paths"]["/sandboxes/{id}/files"];
        assert!(files["get"].is_object() && files["put"].is_object() && files["head"].is_object());
        let events = &doc["paths"]["/events"]["get"]["responses"]["200"]["content"];
        assert_eq!(events["application/json"]["schema"]["type"], "array");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["Sandbox", "ErrorBody", "Event", "AdminStatus", "ThermalCounts", "ExecEvent"] {
            assert!(schemas.contains_key(name), "{name}");
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
