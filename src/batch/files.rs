//! Batch files: uploaded input (purpose `batch`) and the output and error
//! files batches write (`batch_output`). A file belongs to the project that
//! uploaded it (or whose batch wrote it); for any other project it does not
//! exist.

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::batches::{FileRow, NewFile};
use crate::store::StoreError;

use super::input;

pub const PURPOSE_INPUT: &str = "batch";
pub const PURPOSE_OUTPUT: &str = "batch_output";

/// Stores an uploaded file after checking its purpose, size and line count.
pub async fn upload(
    state: &AppState,
    project_id: &str,
    filename: &str,
    purpose: &str,
    content: Vec<u8>,
) -> Result<FileRow, ApiError> {
    if purpose != PURPOSE_INPUT {
        return Err(ApiError::bad_request(
            format!("purpose {purpose:?} is not supported here: files are for batches (purpose \"batch\")"),
            "purpose",
        ));
    }
    let max_bytes = state.settings.batch_max_body_bytes;
    if content.len() > max_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "the file has {} bytes, more than the {max_bytes} this gateway accepts (batch_max_body_bytes)",
            content.len()
        )));
    }
    let lines = input::count_lines(&content);
    let max_lines = state.settings.batch_max_file_lines;
    if lines > max_lines {
        return Err(ApiError::PayloadTooLarge(format!(
            "the file has {lines} requests, more than the {max_lines} a batch may hold (batch_max_file_lines)"
        )));
    }
    if state.budget.store().get_project(project_id).await?.is_none() {
        return Err(StoreError::NotFound(format!("project {project_id:?} not found")).into());
    }
    let file = NewFile {
        id: format!("file-{}", uuid::Uuid::new_v4().simple()),
        project_id: project_id.to_string(),
        purpose: purpose.to_string(),
        filename: clean_filename(filename),
        content,
        created_at_ms: state.budget.now().timestamp_millis(),
    };
    state.budget.store().create_file(&file).await?;
    Ok(FileRow {
        bytes: file.content.len() as i64,
        id: file.id,
        project_id: file.project_id,
        purpose: file.purpose,
        filename: file.filename,
        created_at_ms: file.created_at_ms,
    })
}

pub async fn get(state: &AppState, project_id: &str, id: &str) -> Result<FileRow, ApiError> {
    state.budget.store().get_file(project_id, id).await?.ok_or_else(|| not_found(id))
}

pub async fn content(state: &AppState, project_id: &str, id: &str) -> Result<Vec<u8>, ApiError> {
    state.budget.store().file_content(project_id, id).await?.ok_or_else(|| not_found(id))
}

pub async fn delete(state: &AppState, project_id: &str, id: &str) -> Result<(), ApiError> {
    if state.budget.store().delete_file(project_id, id).await? {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// The most files one page of `list` holds.
pub const MAX_PAGE: usize = 10_000;

/// A page of `limit` (1 to `MAX_PAGE`) of the project's files, newest
/// first, and whether more follow.
pub async fn list(
    state: &AppState,
    project_id: &str,
    purpose: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<FileRow>, bool), ApiError> {
    let mut files = state.budget.store().list_files(project_id, purpose, after, limit as i64 + 1).await?;
    let more = files.len() > limit;
    files.truncate(limit);
    Ok((files, more))
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no file with id {id:?}"),
        param: Some("file_id".into()),
        code: None,
    }
}

/// The last path component, printable, at most 255 characters.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.trim().is_empty() {
        "upload.jsonl".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::clean_filename;

    #[test]
    fn filenames_keep_only_their_last_component() {
        let cases = [
            ("data.jsonl", "data.jsonl"),
            ("/etc/x/../in.jsonl", "in.jsonl"),
            ("a\\b.jsonl", "b.jsonl"),
            ("", "upload.jsonl"),
            ("x\ny", "xy"),
        ];
        for (given, kept) in cases {
            assert_eq!(clean_filename(given), kept);
        }
    }
}
