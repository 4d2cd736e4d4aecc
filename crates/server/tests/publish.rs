//! Publishing (host.md 1.15) against a real daemon: rules, generated aliases, the idempotent
//! re-publish, conflicts, validation, `urls` on sandboxes, and destroy removing the rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Daemon;
use reqwest::Method;

const PROXY: &str = "127.0.0.1:8081";

async fn publish(d: &Daemon, sandbox: &str, body: serde_json::Value) -> reqwest::Response {
    d.req(Method::POST, &format!("/sandboxes/{sandbox}/publish")).json(&body).send().await.unwrap()
}

async fn code(r: reqwest::Response) -> String {
    let body: api::ErrorBody = r.json().await.unwrap();
    body.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rules_through_the_api() {
    let d = Daemon::start_with(|s| {
        s.public_urls = server::PublicUrls::Path { base: PROXY.into() };
    })
    .await;
    let a = d.create("My_Web.1").await;
    let b = d.create("other").await;

    // TestPublishHTTP: 201 with the alias, the port and the URL.
    let r = publish(&d, "My_Web.1", serde_json::json!({"port": 8080, "alias": "myapp"})).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get(api::EXISTING_HEADER).is_none());
    let rule: api::PublishRule = r.json().await.unwrap();
    assert_eq!((rule.port, rule.alias.as_str()), (8080, "myapp"));
    assert_eq!(rule.sandbox_id, a.id);
    assert_eq!(rule.user_id, d.user.id);
    assert!(rule.id.starts_with("pub_") && rule.id.len() == 20, "{}", rule.id);
    assert_eq!(rule.url, format!("http://{PROXY}/myapp/"));
    assert!(!rule.created_at.is_empty());

    // TestPublishAutoAlias: `<base>-<6 hex>` from the sandbox's name.
    let r = publish(&d, &a.id, serde_json::json!({"port": 3000})).await;
    assert_eq!(r.status(), 201);
    let auto: api::PublishRule = r.json().await.unwrap();
    let hex = auto.alias.strip_prefix("my-web-1-").expect(&auto.alias);
    assert!(hex.len() == 6 && hex.bytes().all(|c| c.is_ascii_hexdigit()), "{}", auto.alias);

    // TestPublishDuplicateAlias: another sandbox asking for a taken alias -> 409.
    let r = publish(&d, "other", serde_json::json!({"port": 80, "alias": "myapp"})).await;
    assert_eq!(r.status(), 409);
    assert_eq!(code(r).await, "conflict");

    // TestPublishDuplicatePort: the same port again -> 200, X-Bhatti-Existing, the first alias.
    let r = publish(&d, "My_Web.1", serde_json::json!({"port": 8080, "alias": "fresh"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get(api::EXISTING_HEADER).unwrap(), "true");
    let again: api::PublishRule = r.json().await.unwrap();
    assert_eq!(again.id, rule.id);
    assert_eq!(again.alias, "myapp");

    // TestAliasValidation and the port range: 400 before anything is stored.
    for alias in ["MyApp", "-lead", "has space", "api", "www", &"a".repeat(64)] {
        let r = publish(&d, "other", serde_json::json!({"port": 81, "alias": alias})).await;
        assert_eq!(r.status(), 400, "{alias:?}");
    }
    for port in [0, 65536, 70000] {
        let r = publish(&d, "other", serde_json::json!({"port": port})).await;
        assert_eq!(r.status(), 400, "port {port}");
    }
    let r = publish(&d, "other", serde_json::json!({"port": 81, "alias": "b-valid"})).await;
    assert_eq!(r.status(), 201);

    // TestPublishNonexistentSandbox: 404.
    let r = publish(&d, "nope", serde_json::json!({"port": 80})).await;
    assert_eq!(r.status(), 404);
    let r = d.req(Method::GET, "/sandboxes/nope/publish").send().await.unwrap();
    assert_eq!(r.status(), 404);

    // TestListPublishHTTP: the sandbox's rules, by port, each with its URL.
    let r = d.req(Method::GET, "/sandboxes/My_Web.1/publish").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list: Vec<api::PublishRule> = r.json().await.unwrap();
    let ports: Vec<u16> = list.iter().map(|r| r.port).collect();
    assert_eq!(ports, [3000, 8080]);
    assert!(list.iter().all(|r| r.url == format!("http://{PROXY}/{}/", r.alias)));

    // TestListEnrichedURLs: list and get carry `urls`; a sandbox without rules has none.
    let r = d.req(Method::GET, "/sandboxes").send().await.unwrap();
    let all: Vec<serde_json::Value> = r.json().await.unwrap();
    let urls_of = |id: &str| -> Vec<String> {
        let s = all.iter().find(|s| s["id"] == id).unwrap();
        serde_json::from_value(s.get("urls").cloned().unwrap_or_default()).unwrap_or_default()
    };
    let mut got = urls_of(&a.id);
    got.sort();
    let mut want = vec![format!("http://{PROXY}/myapp/"), auto.url.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(urls_of(&b.id), [format!("http://{PROXY}/b-valid/")]);
    let one: api::Sandbox =
        d.req(Method::GET, "/sandboxes/other").send().await.unwrap().json().await.unwrap();
    assert_eq!(one.urls, [format!("http://{PROXY}/b-valid/")]);

    // TestUnpublishHTTP: 204, then 404; a bad port is 400.
    let r = d.req(Method::DELETE, "/sandboxes/My_Web.1/publish/3000").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = d.req(Method::DELETE, "/sandboxes/My_Web.1/publish/3000").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = d.req(Method::DELETE, "/sandboxes/My_Web.1/publish/0").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Events: publish.created and publish.deleted (the recorder writes them in batches).
    d.state.events.flush().await;
    let query = store::EventQuery { kind: Some("publish".into()), ..Default::default() };
    let kinds = d
        .state
        .store
        .read(move |s| s.query_events(&query))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect::<Vec<_>>();
    assert_eq!(kinds.iter().filter(|k| *k == "publish.created").count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "publish.deleted").count(), 1, "{kinds:?}");

    // TestDestroyCleanupPublish: destroy removes the rules; the alias is free again.
    let r = d.req(Method::DELETE, "/sandboxes/My_Web.1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let aid = a.id.clone();
    let left = d.state.store.read(move |s| s.sandbox_publish_rules(&aid)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let r = publish(&d, "other", serde_json::json!({"port": 82, "alias": "myapp"})).await;
    assert_eq!(r.status(), 201);

    // Without a public proxy the URL is v1's marker text.
    let plain = server::PublicUrls::None.url_for("myapp");
    assert_eq!(plain, "(no public proxy configured) alias: myapp");
    d.stop().await;
}
