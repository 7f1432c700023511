//! `/v1/files`: OpenAI's Files API, for batch input and output files.
//! Files are private to their project: another project's file id is a 404.

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::Context;
use crate::app::AppState;
use crate::batch::files;
use crate::error::{ApiError, ErrorBody};
use crate::store::batches::FileRow;

#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub filename: String,
    /// `batch` (uploaded input) or `batch_output` (a batch's output or error file).
    pub purpose: String,
    /// Always `processed` (OpenAI's deprecated field, still required by its SDKs).
    pub status: &'static str,
    pub expires_at: Option<i64>,
    pub status_details: Option<String>,
}

impl From<FileRow> for FileObject {
    fn from(f: FileRow) -> FileObject {
        FileObject {
            id: f.id,
            object: "file",
            bytes: f.bytes,
            created_at: f.created_at_ms.div_euclid(1000),
            filename: f.filename,
            purpose: f.purpose,
            status: "processed",
            expires_at: None,
            status_details: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    pub object: &'static str,
    pub data: Vec<FileObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// The multipart form of an upload (documentation only: the handler reads
/// the parts as they stream in).
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the multipart form in the OpenAPI document")]
pub struct UploadForm {
    /// JSONL, one request a line: `{"custom_id","method":"POST","url":"/v1/chat/completions","body":{…}}`.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Must be `batch`.
    #[schema(pattern = "^batch$")]
    purpose: String,
    /// The project (ccgate extension; the `X-Project-Id` header does the same).
    project_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileListQuery {
    /// Only files of this purpose.
    pub purpose: Option<String>,
    /// The id of the last file of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 10,000 (default 10,000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// Uploads a batch input file (multipart: `file`, `purpose=batch`).
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "batch",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(("X-Project-Id" = Option<String>, Header, description = "The file's project")),
    responses(
        (status = 200, body = FileObject),
        (status = 400, description = "Not a multipart upload, no file, or a purpose other than `batch`", body = ErrorBody),
        (status = 404, description = "Unknown project", body = ErrorBody),
        (status = 413, description = "Larger than `batch_max_body_bytes` or more lines than `batch_max_file_lines`", body = ErrorBody),
    )
)]
pub async fn create_file(
    State(state): State<AppState>,
    ctx: Context,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let limit = state.settings.batch_max_body_bytes;
    let (mut file, mut purpose, mut project) = (None, None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                let filename = field.file_name().unwrap_or_default().to_string();
                let mut content = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if content.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge(format!(
                            "the file is larger than the {limit} bytes this gateway accepts (batch_max_body_bytes)"
                        )));
                    }
                    content.extend_from_slice(&chunk);
                }
                file = Some((filename, content));
            }
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("project_id") => project = Some(field.text().await.map_err(multipart_error)?),
            // Other OpenAI fields (expires_after) are accepted and ignored.
            _ => {}
        }
    }
    let project = ctx.project(project.as_deref())?;
    let Some((filename, content)) = file else {
        return Err(ApiError::bad_request("the upload has no `file` part", "file"));
    };
    let Some(purpose) = purpose else {
        return Err(ApiError::bad_request("the upload has no `purpose` part (use \"batch\")", "purpose"));
    };
    Ok(Json(files::upload(&state, &project, &filename, &purpose, content).await?.into()))
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(error.body_text())
    } else {
        ApiError::bad_request(format!("cannot read the multipart upload: {}", error.body_text()), None)
    }
}

/// Lists the project's files, newest first.
#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "batch",
    params(FileListQuery, ("X-Project-Id" = Option<String>, Header, description = "The project")),
    responses((status = 200, body = FileList), (status = 400, body = ErrorBody))
)]
pub async fn list_files(
    State(state): State<AppState>,
    ctx: Context,
    Query(query): Query<FileListQuery>,
) -> Result<Json<FileList>, ApiError> {
    let limit = super::extract::page_size(query.limit, files::MAX_PAGE, files::MAX_PAGE)?;
    let project = ctx.project(None)?;
    let (rows, has_more) =
        files::list(&state, &project, query.purpose.as_deref(), query.after.as_deref(), limit).await?;
    let data: Vec<FileObject> = rows.into_iter().map(FileObject::from).collect();
    Ok(Json(FileList {
        object: "list",
        first_id: data.first().map(|f| f.id.clone()),
        last_id: data.last().map(|f| f.id.clone()),
        data,
        has_more,
    }))
}

/// A file's description.
#[utoipa::path(
    get,
    path = "/v1/files/{file_id}",
    tag = "batch",
    params(("file_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The file's project")),
    responses((status = 200, body = FileObject), (status = 404, description = "No such file in this project", body = ErrorBody))
)]
pub async fn get_file(
    State(state): State<AppState>,
    ctx: Context,
    Path(file_id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    let project = ctx.project(None)?;
    Ok(Json(files::get(&state, &project, &file_id).await?.into()))
}

/// A file's content (JSONL).
#[utoipa::path(
    get,
    path = "/v1/files/{file_id}/content",
    tag = "batch",
    params(("file_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The file's project")),
    responses(
        (status = 200, description = "The file, as uploaded or written", content_type = "application/jsonl", body = String),
        (status = 404, description = "No such file in this project", body = ErrorBody),
    )
)]
pub async fn get_file_content(
    State(state): State<AppState>,
    ctx: Context,
    Path(file_id): Path<String>,
) -> Result<Response, ApiError> {
    let project = ctx.project(None)?;
    let content = files::content(&state, &project, &file_id).await?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], Body::from(content)).into_response())
}

/// Deletes a file.
#[utoipa::path(
    delete,
    path = "/v1/files/{file_id}",
    tag = "batch",
    params(("file_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The file's project")),
    responses((status = 200, body = FileDeleted), (status = 404, description = "No such file in this project", body = ErrorBody))
)]
pub async fn delete_file(
    State(state): State<AppState>,
    ctx: Context,
    Path(file_id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let project = ctx.project(None)?;
    files::delete(&state, &project, &file_id).await?;
    Ok(Json(FileDeleted { id: file_id, object: "file", deleted: true }))
}
