//! Batch results in OpenAI's output-file line format:
//! `{"id","custom_id","response":{"status_code","request_id","body"},"error"}`.
//! A request that ran keeps its `response` (a chat completion, or an error
//! body with its status code); one that never ran (cancelled, expired) keeps
//! an `error` instead. Successes go to the output file, the rest to the
//! error file, both in input order and joined to the input on `custom_id`.

use serde::Serialize;
use serde_json::json;

use crate::store::batches::{BatchRequestRow, TaskStatus};

/// The `response` of a request that ran, as stored on its row.
pub fn response(request_id: &str, status_code: u16, body: &impl Serialize) -> String {
    json!({"status_code": status_code, "request_id": request_id, "body": body}).to_string()
}

/// The `error` of a request that never ran, as stored on its row.
pub fn never_ran(code: &str, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
}

/// The output file (successes) and the error file (the rest), each `None`
/// when it would be empty.
pub fn files(rows: &[BatchRequestRow]) -> (Option<String>, Option<String>) {
    let mut output = String::new();
    let mut errors = String::new();
    for row in rows {
        let target = if row.status == TaskStatus::Succeeded { &mut output } else { &mut errors };
        target.push_str(&line(row));
        target.push('\n');
    }
    ((!output.is_empty()).then_some(output), (!errors.is_empty()).then_some(errors))
}

fn line(row: &BatchRequestRow) -> String {
    let id = format!("batch_req_{}", row.request_id.as_deref().unwrap_or(&row.custom_id));
    let stored = row.result.as_deref().filter(|r| !r.is_empty());
    let (response, error) = match (row.status, stored) {
        (TaskStatus::Succeeded | TaskStatus::Failed, Some(result)) => {
            (result.to_string(), "null".to_string())
        }
        (TaskStatus::Cancelled | TaskStatus::Expired, Some(result)) => {
            ("null".to_string(), result.to_string())
        }
        // A row always has its result by now; if one does not, say so
        // rather than drop the line.
        (status, _) => (
            "null".to_string(),
            never_ran("batch_incomplete", &format!("the request ended {} without a result", status.as_str())),
        ),
    };
    // The stored parts are JSON this module wrote; splicing them in avoids
    // parsing every result again when a large batch is finalized.
    format!(
        r#"{{"id":{},"custom_id":{},"response":{response},"error":{error}}}"#,
        serde_json::Value::from(id),
        serde_json::Value::from(row.custom_id.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn row(line_no: i64, status: TaskStatus, result: Option<String>) -> BatchRequestRow {
        BatchRequestRow {
            line_no,
            custom_id: format!("c\"{line_no}"),
            status,
            request_id: Some(format!("r{line_no}")),
            result,
        }
    }

    #[test]
    fn results_split_into_output_and_error_files_in_order() {
        let rows = [
            row(1, TaskStatus::Succeeded, Some(response("r1", 200, &json!({"object": "chat.completion"})))),
            row(2, TaskStatus::Failed, Some(response("r2", 400, &json!({"error": {"message": "bad"}})))),
            row(3, TaskStatus::Cancelled, Some(never_ran("batch_cancelled", "cancelled"))),
            row(4, TaskStatus::Succeeded, Some(response("r4", 200, &json!({"object": "chat.completion"})))),
        ];
        let (output, errors) = files(&rows);
        let output: Vec<Value> = output.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let errors: Vec<Value> = errors.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(output.len(), 2);
        assert_eq!(output[0]["custom_id"], "c\"1");
        assert_eq!(output[0]["id"], "batch_req_r1");
        assert_eq!(output[0]["response"]["status_code"], 200);
        assert_eq!(output[0]["response"]["body"]["object"], "chat.completion");
        assert!(output[0]["error"].is_null());
        assert_eq!(output[1]["custom_id"], "c\"4");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["response"]["status_code"], 400);
        assert!(errors[0]["error"].is_null());
        assert!(errors[1]["response"].is_null());
        assert_eq!(errors[1]["error"]["code"], "batch_cancelled");
    }

    #[test]
    fn an_empty_side_has_no_file() {
        let rows = [row(1, TaskStatus::Succeeded, Some(response("r1", 200, &json!({}))))];
        assert_eq!(files(&rows).1, None);
        assert_eq!(files(&[]), (None, None));
    }
}
