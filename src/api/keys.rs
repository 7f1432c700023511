//! `/admin/projects/{id}/keys` and `/admin/keys`: project API keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::JsonBody;
use crate::app::AppState;
use crate::auth;
use crate::error::{ApiError, ErrorBody};
use crate::store::keys::{ApiKey, KeyChange};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: Option<String>,
    /// RFC 3339 time after which the key stops working; null for never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests per minute; null for the configured default.
    #[schema(minimum = 1)]
    pub rpm_limit: Option<i64>,
    /// Tokens per minute; null for the configured default.
    #[schema(minimum = 1)]
    pub tpm_limit: Option<i64>,
    /// Requests in flight at once; null for the configured default.
    #[schema(minimum = 1)]
    pub max_concurrent: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub key_id: String,
    pub project_id: String,
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub max_concurrent: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret. It is shown only here, once; only its hash is stored.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyView>,
}

fn ts(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> KeyView {
        KeyView {
            created_at: ts(k.created_at_ms),
            expires_at: k.expires_at_ms.map(ts),
            revoked_at: k.revoked_at_ms.map(ts),
            key_id: k.key_id,
            project_id: k.project_id,
            name: k.name,
            prefix: k.prefix,
            rpm_limit: k.rpm_limit,
            tpm_limit: k.tpm_limit,
            max_concurrent: k.max_concurrent,
        }
    }
}

/// Creates a key for a project. The reply holds the secret, once.
#[utoipa::path(post, path = "/admin/projects/{id}/keys", tag = "admin", params(("id" = String, Path)),
    request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    super::admin::load(&state, &id).await?;
    let store = state.budget.store();
    for (name, value) in [
        ("rpm_limit", body.rpm_limit),
        ("tpm_limit", body.tpm_limit),
        ("max_concurrent", body.max_concurrent),
    ] {
        if value.is_some_and(|v| v < 1) {
            return Err(ApiError::BadRequest {
                message: format!("{name} must be at least 1"),
                param: Some(name.into()),
                code: None,
            });
        }
    }
    let now = state.budget.now();
    if body.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::bad_request("expires_at is in the past", "expires_at"));
    }
    let secret = auth::new_secret();
    let key = ApiKey {
        key_id: auth::new_key_id(),
        project_id: id,
        name: body.name.unwrap_or_default(),
        key_hash: auth::hash_secret(&secret),
        prefix: secret[..auth::KEY_PREFIX.len() + 6].to_string(),
        created_at_ms: now.timestamp_millis(),
        expires_at_ms: body.expires_at.map(|t| t.timestamp_millis()),
        revoked_at_ms: None,
        rpm_limit: body.rpm_limit,
        tpm_limit: body.tpm_limit,
        max_concurrent: body.max_concurrent,
    };
    store.create_key(&key).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { view: key.into(), key: secret })))
}

/// Lists a project's keys (never their secrets).
#[utoipa::path(get, path = "/admin/projects/{id}/keys", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = KeyList), (status = 404, description = "No such project (a deleted project's revoked keys stay in `GET /admin/keys`)", body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn list_project_keys(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    super::admin::load(&state, &id).await?;
    let keys = state.budget.store().list_keys(Some(&id)).await?;
    Ok(Json(KeyList { data: keys.into_iter().map(KeyView::from).collect() }))
}

/// Lists every key (never their secrets).
#[utoipa::path(get, path = "/admin/keys", tag = "admin",
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody)), security(("admin_key" = [])))]
pub async fn list_keys(State(state): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    let keys = state.budget.store().list_keys(None).await?;
    Ok(Json(KeyList { data: keys.into_iter().map(KeyView::from).collect() }))
}

/// Revokes a key; requests with it get 401 from now on.
#[utoipa::path(delete, path = "/admin/keys/{key_id}", tag = "admin", params(("key_id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.budget.store();
    let revoked = store.revoke_key(&key_id, state.budget.now().timestamp_millis()).await?;
    auth::keys_changed(store.as_ref(), &state.keys, KeyChange::Revoked { key_id: key_id.clone() }).await;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("key {key_id:?} not found")))
    }
}
