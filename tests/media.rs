//! Images and client-side tool calling through `/v1/chat/completions`, end
//! to end against the simulated upstream: on the direct backend, images and
//! tools map to Anthropic content blocks and back; on the CLI backend, an
//! image reaches the upstream through stream-json input and tools are
//! refused with a clear 400.

mod common;

use ccgate::config::Settings;
use common::{chat_body, client, Options, TestApp, TestDb};
use futures::StreamExt;
use serde_json::{json, Value};

/// A 1×1 PNG.
const PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

fn haiku_direct(settings: &mut Settings) {
    settings.backends.insert("haiku".into(), "api".into());
}

async fn spawn(adjust: fn(&mut Settings)) -> (TestDb, TestApp) {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { adjust, ..Options::default() }).await;
    (db, app)
}

async fn post(app: &TestApp, body: &Value) -> (u16, Value) {
    let response =
        client().post(format!("{}/v1/chat/completions", app.url)).json(body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn image_message(url: &str, text: &str) -> Value {
    json!({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": text},
    ]})
}

fn with_image(model: &str, url: &str) -> Value {
    json!({"model": model, "messages": [image_message(url, "What is in this image? [sim:words=3]")]})
}

/// Whether some recorded upstream request carries the PNG as an image block.
fn upstream_saw_image(app: &TestApp) -> bool {
    app.sim.sim.requests().iter().any(|r| {
        r.body["messages"].as_array().into_iter().flatten().any(|m| {
            m["content"].as_array().into_iter().flatten().any(|b| {
                b["type"] == "image"
                    && b["source"]["type"] == "base64"
                    && b["source"]["media_type"] == "image/png"
                    && b["source"]["data"] == PNG
            })
        })
    })
}

#[tokio::test]
async fn an_image_reaches_the_upstream_on_the_direct_backend() {
    let (_db, app) = spawn(haiku_direct).await;
    let (status, body) = post(&app, &with_image("haiku", &format!("data:image/png;base64,{PNG}"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(upstream_saw_image(&app), "{:?}", app.sim.sim.requests());
    let content = &app.sim.sim.requests()[0].body["messages"][0]["content"];
    assert_eq!(content[1], json!({"type": "text", "text": "What is in this image? [sim:words=3]"}));
}

#[tokio::test]
async fn an_image_reaches_the_upstream_through_the_cli_warm_or_cold() {
    let warm: fn(&mut Settings) = |s| s.warm_pool = true;
    let cold: fn(&mut Settings) = |s| s.warm_pool = false;
    for adjust in [warm, cold] {
        let (_db, app) = spawn(adjust).await;
        let (status, body) = post(&app, &with_image("haiku", &format!("data:image/png;base64,{PNG}"))).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Simulated reply:"));
        assert!(upstream_saw_image(&app), "the CLI passed the image block on: {:?}", app.sim.sim.requests());
        app.stop().await;
    }
}

#[tokio::test]
async fn image_limits_give_clear_errors() {
    let (_db, app) = spawn(|s| s.max_image_bytes = 40).await;
    let cases = [
        ("https://example.com/cat.png".to_string(), 400, "only data: URLs"),
        (format!("data:image/tiff;base64,{PNG}"), 400, "image/tiff"),
        ("data:image/png;base64,***".to_string(), 400, "base64"),
        (format!("data:image/png;base64,{PNG}"), 413, "max_image_bytes"),
    ];
    for (url, want, says) in cases {
        let (status, body) = post(&app, &with_image("haiku", &url)).await;
        assert_eq!(status, want, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{url}: {message}");
    }
    assert!(app.sim.sim.requests().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn the_cli_backend_refuses_images_in_earlier_turns_and_client_tools() {
    let (_db, app) = spawn(|_| {}).await;
    let url = format!("data:image/png;base64,{PNG}");
    let earlier = json!({"model": "haiku", "messages": [
        image_message(&url, "look"),
        {"role": "assistant", "content": "a dot"},
        {"role": "user", "content": "and now?"},
    ]});
    let (status, body) = post(&app, &earlier).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("last user message"), "{body}");

    let mut tools = chat_body("haiku", "weather?");
    tools["tools"] = weather_tools();
    let (status, body) = post(&app, &tools).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("CLI backend") && message.contains("direct backend"), "{message}");
    assert_eq!(body["error"]["param"], "tools");
    assert!(app.sim.sim.requests().is_empty(), "nothing went upstream");
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}])
}

#[tokio::test]
async fn tool_calls_round_trip_on_the_direct_backend() {
    let (_db, app) = spawn(haiku_direct).await;
    let question = r#"Weather in Paris? [sim:tool=get_weather {"city":"Paris"}]"#;
    let mut request = chat_body("haiku", question);
    request["tools"] = weather_tools();
    // OpenAI's strict function calling is Anthropic's strict tool use.
    request["tools"][0]["function"]["strict"] = json!(true);
    request["tool_choice"] = json!("required");
    let (status, body) = post(&app, &request).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    let upstream = &app.sim.sim.requests()[0].body;
    assert_eq!(upstream["tools"][0]["name"], "get_weather");
    assert_eq!(upstream["tools"][0]["input_schema"]["required"], json!(["city"]));
    assert_eq!(upstream["tools"][0]["strict"], true);
    assert_eq!(upstream["tool_choice"], json!({"type": "any"}));

    // The client runs the tool and sends its result back.
    let id = call["id"].as_str().unwrap();
    request["messages"] = json!([
        {"role": "user", "content": question},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "18 degrees and sunny"},
    ]);
    request["tool_choice"] = json!("auto");
    let (status, body) = post(&app, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("18 degrees and sunny"), "{text}");
    let upstream = &app.sim.sim.requests()[1].body;
    assert_eq!(
        upstream["messages"][1]["content"][0],
        json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": "Paris"}})
    );
    assert_eq!(
        upstream["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": id, "content": "18 degrees and sunny"})
    );
}

#[tokio::test]
async fn tool_calls_stream_as_deltas() {
    let (_db, app) = spawn(haiku_direct).await;
    let mut request = chat_body("haiku", r#"[sim:tool=get_weather {"city":"Oslo","units":"metric"}]"#);
    request["tools"] = weather_tools();
    request["stream"] = json!(true);
    let response =
        client().post(format!("{}/v1/chat/completions", app.url)).json(&request).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|frame| frame.trim().strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let deltas: Vec<&Value> =
        chunks.iter().flat_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
    assert!(!deltas.is_empty(), "{text}");
    assert_eq!(deltas[0]["index"], 0);
    assert_eq!(deltas[0]["type"], "function");
    assert!(deltas[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(deltas[0]["function"]["name"], "get_weather");
    assert!(deltas.iter().all(|d| d["index"] == 0));
    let arguments: String = deltas.iter().map(|d| d["function"]["arguments"].as_str().unwrap()).collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Oslo", "units": "metric"})
    );
    let last = chunks.iter().rev().find(|c| !c["choices"][0]["finish_reason"].is_null()).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn malformed_tools_are_refused() {
    let (_db, app) = spawn(haiku_direct).await;
    let cases = [
        (json!([{"type": "retrieval"}]), json!(null), "tools[0]"),
        (json!([{"type": "function", "function": {}}]), json!(null), "tools[0]"),
        (weather_tools(), json!({"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (weather_tools(), json!("sometimes"), "tool_choice"),
    ];
    for (tools, choice, param) in cases {
        let mut request = chat_body("haiku", "hi");
        request["tools"] = tools;
        request["tool_choice"] = choice;
        let (status, body) = post(&app, &request).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let orphan = json!({"model": "haiku", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "tool", "content": "result without a call id"},
    ]});
    let (status, body) = post(&app, &orphan).await;
    assert_eq!(status, 400, "{body}");
    assert!(app.sim.sim.requests().is_empty());
}

#[tokio::test]
async fn auto_routing_with_client_tools_picks_only_direct_models() {
    // Only sonnet is served by the direct backend; a short question would
    // otherwise go to haiku, which the CLI serves and which cannot carry tools.
    let (_db, app) = spawn(|s| {
        s.backends.insert("sonnet".into(), "api".into());
    })
    .await;
    let mut request = chat_body("auto", r#"Weather? [sim:tool=get_weather {"city":"Oslo"}]"#);
    request["tools"] = weather_tools();
    let (status, body) = post(&app, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "claude-sonnet-5", "{body}");
    assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");

    // The same question without tools keeps the router's own choice.
    let (status, body) = post(&app, &chat_body("auto", "Weather?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "claude-haiku-4-5-20251001", "{body}");

    // With no direct model at all, the refusal says what to configure.
    let (_db, cli_only) = spawn(|_| {}).await;
    let (status, body) = post(&cli_only, &request).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tools", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("direct backend"), "{body}");
}
