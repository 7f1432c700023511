//! The OpenAPI document and the router agree: every documented operation is
//! served, and every served route is documented (routes and document are
//! built from one list, `api::routes`; this checks the result).

mod common;

use common::{client, Options, TestApp, TestDb};
use serde_json::Value;

#[tokio::test]
async fn every_documented_operation_is_served_and_has_error_responses() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let spec: Value =
        client().get(format!("{}/openapi.json", app.url)).send().await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
            // Fill path parameters with a value no resource has.
            let concrete: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "no-such-thing" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let request =
                client().request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", app.url));
            // An empty JSON object: enough to reach the handler, never enough to do work.
            let response =
                request.header("content-type", "application/json").body("{}").send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(!text.contains("no route for"), "{method} {path} is documented but not routed: {text}");
        }
    }
    assert!(operations >= 10, "only {operations} operations documented");

    // The reverse: routes a client can reach are in the document.
    for (method, path) in [
        ("post", "/v1/chat/completions"),
        ("get", "/v1/models"),
        ("get", "/v1/usage"),
        ("get", "/health"),
        ("get", "/"),
        ("get", "/metrics"),
        ("post", "/admin/projects"),
        ("get", "/admin/projects"),
        ("get", "/admin/projects/{id}"),
        ("patch", "/admin/projects/{id}"),
        ("delete", "/admin/projects/{id}"),
        ("post", "/admin/projects/{id}/keys"),
        ("get", "/admin/keys"),
        ("delete", "/admin/keys/{key_id}"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is served but not documented"
        );
    }
    let unknown = client().get(format!("{}/v1/nothing-here", app.url)).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    app.stop().await;
}
