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

/// What a schema-driven fuzzer (tests/python/test_api_contract.py) found,
/// pinned here one by one.
#[tokio::test]
async fn malformed_requests_get_json_errors_and_change_nothing() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let url = |path: &str| format!("{}{path}", app.url);
    let refused = |response: reqwest::Response, status: u16| async move {
        assert_eq!(response.status().as_u16(), status);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(content_type, "application/json");
        let body: Value = response.json().await.unwrap();
        body["error"].clone()
    };

    // A path segment that is not UTF-8, and a query that does not parse:
    // axum's refusals, once plain text.
    let error = refused(client().get(url("/v1/tasks/%FF")).send().await.unwrap(), 400).await;
    assert!(error["message"].as_str().unwrap().contains("UTF-8"), "{error}");
    let error = refused(
        client().get(url("/v1/tasks/t/events?after=99999999999999999999")).send().await.unwrap(),
        400,
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");

    // A page size outside its documented range.
    refused(client().get(url("/v1/files?limit=0")).send().await.unwrap(), 400).await;
    let error = refused(client().get(url("/v1/batches?limit=101")).send().await.unwrap(), 400).await;
    assert_eq!(error["param"], "limit");

    // A project header that is not a project id.
    let response = client().get(url("/v1/usage")).header("x-project-id", "Not An Id").send().await.unwrap();
    assert_eq!(refused(response, 400).await["param"], "X-Project-Id");

    // Arrays where objects belong: serde would read them field by field,
    // and `[null, null, null]` would have removed the budget's limits.
    app.create_project("arrays", Some(5.0)).await;
    let patch = |body: &'static str| {
        client()
            .patch(url("/admin/projects/arrays"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    refused(patch("[null, null]").await.unwrap(), 400).await;
    refused(patch(r#"{"budget": [null, null, null]}"#).await.unwrap(), 400).await;
    let project: Value =
        client().get(url("/admin/projects/arrays")).send().await.unwrap().json().await.unwrap();
    assert_eq!(project["budget"]["daily_usd"], 5.0, "{project}");

    // A deleted project's keys are gone with it from its own listing.
    let deleted = client().delete(url("/admin/projects/arrays")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    refused(client().get(url("/admin/projects/arrays/keys")).send().await.unwrap(), 404).await;

    // And the document says what the middleware does for every operation.
    let spec: Value = client().get(url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let usage = &spec["paths"]["/v1/usage"]["get"];
    for status in ["400", "401", "403", "429"] {
        assert!(usage["responses"].get(status).is_some(), "GET /v1/usage documents no {status}");
    }
    let header = usage["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "project_id").unwrap();
    assert_eq!(header["schema"]["pattern"], "^[a-z0-9_-]{1,64}$");
    app.stop().await;
}
