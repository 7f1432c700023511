//! The OpenAI Files and Batch APIs as a test client sees them.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client;

pub const CHAT: &str = "/v1/chat/completions";
pub const TERMINAL: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

/// The Files and Batch APIs as one project sees them.
pub struct Api {
    url: String,
    project: String,
}

impl Api {
    pub fn new(url: &str, project: &str) -> Api {
        Api { url: url.to_string(), project: project.to_string() }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(format!("{}{path}", self.url)).header("x-project-id", &self.project)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        client().post(format!("{}{path}", self.url)).header("x-project-id", &self.project)
    }

    pub async fn upload_raw(&self, content: &[u8]) -> reqwest::Response {
        let (content_type, body) = multipart("requests.jsonl", content, "batch");
        self.post("/v1/files").header("content-type", content_type).body(body).send().await.expect("upload")
    }

    pub async fn upload(&self, lines: &[Value]) -> String {
        let content: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let response = self.upload_raw(content.as_bytes()).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
        let file: Value = response.json().await.unwrap();
        assert_eq!(file["object"], "file");
        assert_eq!(file["purpose"], "batch");
        assert_eq!(file["bytes"].as_u64(), Some(content.len() as u64));
        file["id"].as_str().unwrap().to_string()
    }

    pub async fn create(&self, file_id: &str) -> reqwest::Response {
        self.post("/v1/batches")
            .json(&json!({"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}))
            .send()
            .await
            .expect("create batch")
    }

    pub async fn create_ok(&self, file_id: &str) -> Value {
        let response = self.create(file_id).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
        response.json().await.unwrap()
    }

    pub async fn batch(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/batches/{id}")).send().await.expect("get batch");
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn wait(&self, id: &str, limit: Duration, until: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let batch = self.batch(id).await;
            if until(&batch) {
                return batch;
            }
            assert!(Instant::now() < deadline, "the batch never got there: {batch}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_done(&self, id: &str, limit: Duration) -> Value {
        self.wait(id, limit, |b| TERMINAL.contains(&b["status"].as_str().unwrap_or_default())).await
    }

    pub async fn lines(&self, file_id: &Value) -> Vec<Value> {
        let Some(file_id) = file_id.as_str() else { return Vec::new() };
        let response = self.get(&format!("/v1/files/{file_id}/content")).send().await.expect("content");
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.post(&format!("/v1/batches/{id}/cancel")).send().await.expect("cancel")
    }
}

pub fn multipart(filename: &str, content: &[u8], purpose: &str) -> (String, Vec<u8>) {
    let boundary = format!("ccgate-test-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    let _ =
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n");
    let _ = write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    );
    body.extend_from_slice(content);
    let _ = write!(body, "\r\n--{boundary}--\r\n");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn line(custom_id: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})
}

pub fn ask(model: &str, prompt: &str) -> Value {
    json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]})
}
