//! Events, admin routes, Prometheus metrics and the OpenAPI document, against a real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Daemon, until};
use reqwest::Method;
use tower::ServiceExt;

/// The events `path` answers with `key`.
async fn events(d: &Daemon, key: &str, path: &str) -> Vec<api::Event> {
    let r = d.client.get(format!("{}{path}", d.url)).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}: {:?}", r.text().await);
    r.json().await.unwrap()
}

fn kinds(events: &[api::Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// A scrape of `/metrics`, parsed.
async fn scrape(d: &Daemon, key: &str) -> prometheus_parse::Scrape {
    let r = d.client.get(format!("{}/metrics", d.url)).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` with (at least) `labels`, 0 if absent.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_metrics_follow_real_actions_scoped_to_their_owner() {
    let d = Daemon::start_with(|s| {
        s.metrics_period = Duration::from_millis(300);
        // Nothing cools the sandbox on its own during the test.
        s.warm_after = Duration::from_secs(3600);
    })
    .await;
    let admin = d.other_user("admin").await;
    let other = d.other_user("other").await;
    // After the users: every snapshot counts three.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = server::spawn_background(&d.state, stop_rx);

    // A follower from before anything happened.
    let follow = d.req(Method::GET, "/events?follow=true&type=sandbox").send().await.unwrap();
    assert_eq!(follow.status(), 200);
    assert_eq!(follow.headers()["content-type"], api::NDJSON);

    let before = scrape(&d, &admin).await;
    let sb = d.create("evt").await;
    d.sh("evt", "echo hi").await;
    // A stop and an exec: a wake from cold.
    let r = d.req(Method::POST, "/sandboxes/evt/stop").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = d.req(Method::POST, "/sandboxes/evt/start").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    for _ in 0..3 {
        assert_eq!(d.req(Method::GET, "/sandboxes").send().await.unwrap().status(), 200);
    }
    let during = scrape(&d, &admin).await;
    let r = d.req(Method::DELETE, "/sandboxes/evt").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // The owner's events, newest first, in the order they happened.
    let mine = events(&d, &d.key, "/events?type=sandbox").await;
    assert_eq!(
        kinds(&mine),
        ["sandbox.destroyed", "sandbox.started", "sandbox.stopped", "sandbox.created"]
    );
    assert!(mine.iter().all(|e| e.sandbox_id == sb.id && e.user_id == d.user.id));
    assert!(mine.windows(2).all(|w| w[0].id > w[1].id && w[0].ts >= w[1].ts));
    assert_eq!(mine[3].meta["name"], "evt");
    // Filters: an exact type, the sandbox (by ID: its name is free again), limit, since.
    let created = events(&d, &d.key, "/events?type=sandbox.created").await;
    assert_eq!(kinds(&created), ["sandbox.created"]);
    let by_sandbox =
        events(&d, &d.key, &format!("/events?sandbox={}&type=sandbox&limit=2", sb.id)).await;
    assert_eq!(kinds(&by_sandbox), ["sandbox.destroyed", "sandbox.started"]);
    let later = events(&d, &d.key, &format!("/events?since={}", mine[0].ts)).await;
    assert!(later.iter().any(|e| e.kind == "sandbox.destroyed"));
    assert!(later.iter().all(|e| e.ts >= mine[0].ts), "{later:?}");
    assert!(events(&d, &d.key, "/events?since=2099-01-01").await.is_empty());
    // Another user sees none of them, even by the sandbox's ID; the admin sees them all.
    assert!(events(&d, &other, "/events").await.is_empty());
    assert!(events(&d, &other, &format!("/events?sandbox={}", sb.id)).await.is_empty());
    let all = events(&d, &admin, &format!("/admin/events?user=tester&sandbox={}", sb.id)).await;
    assert_eq!(all.len(), events(&d, &d.key, &format!("/events?sandbox={}", sb.id)).await.len());
    assert!(!all.is_empty());

    // The follower saw the same events as they happened.
    let mut body = follow;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    while got.len() < 4 {
        let chunk = tokio::time::timeout_at(deadline, body.chunk()).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(at) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            got.push(serde_json::from_slice::<api::Event>(&line).unwrap().kind);
        }
    }
    assert_eq!(got, ["sandbox.created", "sandbox.stopped", "sandbox.started", "sandbox.destroyed"]);

    // The start restored the sandbox from disk: a wake from cold, logged and counted.
    until("the cold wake's event", Duration::from_secs(10), || async {
        let wakes = events(&d, &d.key, "/events?type=thermal.wake").await;
        wakes.len() == 1 && wakes[0].meta["from_state"] == "cold"
    })
    .await;
    let s = scrape(&d, &admin).await;
    assert_eq!(value(&s, "bhatti_wakes_total", &[("from", "cold")]), 1.0);
    assert_eq!(value(&s, "bhatti_wake_duration_seconds_count", &[("from", "cold")]), 1.0);
    // Metrics: the requests this test made, by route template; the sandbox while it ran; the
    // cold wake of the start.
    let lists = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "bhatti_http_requests_total",
            &[("method", "GET"), ("route", "/sandboxes"), ("status", "2xx")],
        )
    };
    assert_eq!(lists(&during) - lists(&before), 3.0);
    let execs = |s: &prometheus_parse::Scrape| {
        value(s, "bhatti_http_requests_total", &[("route", "/sandboxes/:id/exec")])
    };
    assert_eq!(execs(&during) - execs(&before), 1.0);
    assert_eq!(value(&during, "bhatti_sandboxes", &[("state", "hot")]), 1.0);
    let after = scrape(&d, &admin).await;
    assert_eq!(value(&after, "bhatti_sandboxes", &[("state", "hot")]), 0.0);
    assert_eq!(value(&after, "bhatti_boots_in_flight", &[]), 0.0);
    assert_eq!(value(&after, "bhatti_restores_in_flight", &[]), 0.0);
    assert_eq!(value(&after, "bhatti_events_dropped_total", &[]), 0.0);
    assert!(
        after.samples.iter().any(|s| s.metric.starts_with("bhatti_http_request_duration_seconds")),
        "no latency histogram"
    );
    assert!(
        after.samples.iter().all(|s| !s.labels.values().any(|v| v.contains(&sb.id))),
        "a sandbox ID in a label"
    );
    // Raw paths never become labels: a 404 for a made-up path is `unmatched`.
    let r = d.req(Method::GET, "/no/such/path-xyz").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let s = scrape(&d, &admin).await;
    assert!(value(&s, "bhatti_http_requests_total", &[("route", "unmatched")]) >= 1.0);
    assert!(s.samples.iter().all(|x| !x.labels.values().any(|v| v.contains("path-xyz"))));

    // v1's minute snapshots (every 300 ms here), and the status.
    until("a metrics snapshot with the requests", Duration::from_secs(10), || async {
        let r = d.client.get(format!("{}/admin/metrics?since=5m", d.url)).bearer_auth(&admin);
        let rows: Vec<api::MetricsSnapshot> = r.send().await.unwrap().json().await.unwrap();
        rows.iter().map(|m| m.api_requests).sum::<u64>() > 0
            && rows.iter().all(|m| m.host_mem_total_mb > 0 && m.users_total == 3)
    })
    .await;
    let r = d.client.get(format!("{}/admin/status", d.url)).bearer_auth(&admin).send();
    let status: api::AdminStatus = r.await.unwrap().json().await.unwrap();
    assert_eq!(status.version, api::VERSION);
    assert_eq!(status.sandboxes, api::ThermalCounts::default());
    assert_eq!(status.users.len(), 3);
    assert_eq!(status.events_dropped, 0);
    assert!(status.host.mem_total_mb > 0);
    assert_eq!(status.recent_events[0].kind, "sandbox.destroyed");
    assert!(status.totals["api_requests"] > 0);

    let _ = stop_tx.send(true);
    for task in background {
        task.await.unwrap();
    }
    // A followed stream does not hold the daemon's stop up; it ends with it.
    tokio::time::timeout(Duration::from_secs(20), d.stop()).await.expect("the stop waited");
    let end = tokio::time::timeout(Duration::from_secs(5), body.chunk()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_are_the_admins_and_event_filters_refuse_nonsense() {
    let d = Daemon::start().await;
    let admin = d.other_user("admin").await;
    // Not the admin: the router's own 404 for every admin route; no key: 401.
    for path in ["/admin/status", "/admin/events", "/admin/metrics", "/metrics"] {
        let r = d.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: api::ErrorBody = r.json().await.unwrap();
        assert_eq!(body.error, "not found", "{path}");
        let r = d.client.get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = d.client.get(format!("{}{path}", d.url)).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // A refused key is an event (without the key), and a counted failure.
    let r = d.client.get(format!("{}/sandboxes", d.url)).bearer_auth("bht_nope").send().await;
    assert_eq!(r.unwrap().status(), 401);
    let failed = events(&d, &admin, "/admin/events?type=auth.failed").await;
    assert_eq!(failed.len(), 1);
    assert!(!failed[0].meta.to_string().contains("bht_nope"));
    assert!(value(&scrape(&d, &admin).await, "bhatti_auth_failures_total", &[]) >= 1.0);

    let table = [
        ("since nonsense", "/events?since=yesterday", "invalid since"),
        ("since a bad date", "/events?since=2026-13-45", "invalid since"),
        ("since empty", "/events?since=", "invalid since"),
        ("limit zero", "/events?limit=0", "invalid limit"),
        ("limit over the bound", "/events?limit=1001", "invalid limit"),
        ("limit not a number", "/events?limit=many", "invalid limit"),
        ("empty type", "/events?type=", "invalid type"),
        ("follow nonsense", "/events?follow=perhaps", "invalid follow"),
        ("admin since", "/admin/events?since=x", "invalid since"),
        ("metrics since", "/admin/metrics?since=x", "invalid since"),
    ];
    for (name, path, want) in table {
        let key = if path.starts_with("/admin") { &admin } else { &d.key };
        let r = d.client.get(format!("{}{path}", d.url)).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let body: api::ErrorBody = r.json().await.unwrap();
        assert!(body.error.starts_with(want), "{name}: {}", body.error);
        assert_eq!(body.code, "invalid", "{name}");
    }
    // Unknown parameters are ignored, as everywhere in the API; an unknown user is 404.
    assert!(events(&d, &d.key, "/events?colour=blue&limit=1000").await.is_empty());
    let r = d.client.get(format!("{}/admin/events?user=nobody", d.url)).bearer_auth(&admin);
    assert_eq!(r.send().await.unwrap().status(), 404);
    d.stop().await;
}

/// A request for `method path` with every path parameter filled in.
fn probe(method: &str, path: &str, key: &str) -> axum::http::Request<axum::body::Body> {
    let filled: Vec<String> = path
        .split('/')
        .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some("port") => "8080".into(),
            Some(_) => "nope".into(),
            None => seg.into(),
        })
        .collect();
    axum::http::Request::builder()
        .method(method)
        .uri(filled.join("/"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        // Not an object: no handler acts on it (a create would otherwise boot a VM).
        .body(axum::body::Body::from("[]"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_and_the_router_have_the_same_routes() {
    let d = Daemon::start().await;
    // No key needed.
    let r = d.client.get(format!("{}/openapi.json", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head"].contains(&method.as_str()) {
                assert!(!op["summary"].as_str().unwrap_or_default().is_empty(), "{method} {path}");
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Every schema a route names is in the components.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in text.split("#/components/schemas/").skip(1) {
        let name = name.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "{name} missing from the components");
    }
    // The table is what both are built from.
    let mut table = BTreeSet::new();
    for route in server::routes::table() {
        for m in route.method_names() {
            table.insert((m.to_owned(), route.openapi_path()));
        }
    }
    assert_eq!(documented, table);
    assert!(documented.len() > 30, "{}", documented.len());

    // Every documented operation reaches a handler (not the router's own 404/405), and a
    // route the router does not have is told apart (the probe can fail).
    let axum_paths: HashMap<String, &'static str> =
        server::routes::table().into_iter().map(|r| (r.openapi_path(), r.path)).collect();
    for (method, path) in &documented {
        let response =
            server::router(d.state.clone()).oneshot(probe(method, axum_paths[path], &d.key)).await;
        let response = response.unwrap();
        assert!(
            response.extensions().get::<server::request::Unrouted>().is_none(),
            "{method} {path}: {}",
            response.status()
        );
    }
    for (method, path) in [("GET", "/no-such-resource"), ("POST", "/health"), ("PUT", "/events")] {
        let response = server::router(d.state.clone()).oneshot(probe(method, path, &d.key)).await;
        assert!(
            response.unwrap().extensions().get::<server::request::Unrouted>().is_some(),
            "{method} {path}"
        );
    }
    // And the router has no route but the table's: `router()` adds none of its own.
    let lib = include_str!("../src/lib.rs");
    let body = lib.split("pub fn router(").nth(1).unwrap().split("\n}\n").next().unwrap();
    for call in [".route(", ".route_service(", ".nest(", ".merge(", ".nest_service("] {
        assert!(!body.contains(call), "router() calls {call} outside the table");
    }
    d.stop().await;
}
