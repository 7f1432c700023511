//! `/admin/projects`: create, read, change and delete projects and budgets.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::extract::{check_project_id, JsonBody};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::money::Micros;
use crate::store::{Limits, Project};

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// USD per UTC day; null or absent for no limit.
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1000000000)]
    pub daily_usd: Option<Option<f64>>,
    /// USD per UTC week (Monday to Sunday).
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1000000000)]
    pub weekly_usd: Option<Option<f64>>,
    /// USD per UTC calendar month.
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1000000000)]
    pub monthly_usd: Option<Option<f64>>,
}

/// Tells an absent field (`None`) from an explicit null (`Some(None)`).
fn explicit<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(de).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub id: String,
    #[schema(pattern = "\\S", max_length = 200)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "budget_object")]
    pub budget: Option<BudgetBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[schema(pattern = "\\S", max_length = 200)]
    pub name: Option<String>,
    /// Fields given replace the limit (null removes it); absent fields keep theirs.
    #[serde(default, deserialize_with = "budget_object")]
    pub budget: Option<BudgetBody>,
}

/// A budget given as a JSON object only: serde would also take an array,
/// its items as the limits in order, which no client means.
fn budget_object<'de, D: Deserializer<'de>>(de: D) -> Result<Option<BudgetBody>, D::Error> {
    Option::<serde_json::Map<String, serde_json::Value>>::deserialize(de)?
        .map(|fields| {
            BudgetBody::deserialize(serde_json::Value::Object(fields)).map_err(serde::de::Error::custom)
        })
        .transpose()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub budget: BudgetView,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    pub daily_usd: Option<f64>,
    pub weekly_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub data: Vec<ProjectView>,
}

impl From<Project> for ProjectView {
    fn from(p: Project) -> ProjectView {
        let ts =
            |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        ProjectView {
            budget: BudgetView {
                daily_usd: p.limits.daily.map(Micros::as_usd),
                weekly_usd: p.limits.weekly.map(Micros::as_usd),
                monthly_usd: p.limits.monthly.map(Micros::as_usd),
            },
            created_at: ts(p.created_at_ms),
            updated_at: ts(p.updated_at_ms),
            id: p.id,
            name: p.name,
        }
    }
}

fn apply_budget(limits: &mut Limits, budget: &BudgetBody) -> Result<(), ApiError> {
    let fields = [
        (&budget.daily_usd, &mut limits.daily, "budget.daily_usd"),
        (&budget.weekly_usd, &mut limits.weekly, "budget.weekly_usd"),
        (&budget.monthly_usd, &mut limits.monthly, "budget.monthly_usd"),
    ];
    for (given, limit, param) in fields {
        let Some(value) = given else { continue };
        *limit = match value {
            None => None,
            Some(usd) if usd.is_finite() && *usd >= 0.0 && *usd <= 1e9 => Some(Micros::from_usd(*usd)),
            Some(usd) => {
                return Err(ApiError::bad_request(
                    format!("{param} must be between 0 and 1e9 USD, not {usd}"),
                    param,
                ))
            }
        };
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request("name must be 1 to 200 characters", "name"));
    }
    Ok(())
}

/// Creates a project with optional daily, weekly and monthly limits.
#[utoipa::path(post, path = "/admin/projects", tag = "admin", request_body = CreateProject,
    responses((status = 201, body = ProjectView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, description = "The id is taken", body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn create_project(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateProject>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    check_project_id(&body.id, "id")?;
    let name = body.name.unwrap_or_else(|| body.id.clone());
    check_name(&name)?;
    let mut limits = Limits::default();
    if let Some(budget) = &body.budget {
        apply_budget(&mut limits, budget)?;
    }
    let now = state.budget.now().timestamp_millis();
    let project = Project { id: body.id, name, limits, created_at_ms: now, updated_at_ms: now };
    state.budget.store().create_project(&project).await?;
    Ok((StatusCode::CREATED, Json(project.into())))
}

/// Lists every project.
#[utoipa::path(get, path = "/admin/projects", tag = "admin",
    responses((status = 200, body = ProjectList), (status = 401, body = ErrorBody)), security(("admin_key" = [])))]
pub async fn list_projects(State(state): State<AppState>) -> Result<Json<ProjectList>, ApiError> {
    let projects = state.budget.store().list_projects().await?;
    Ok(Json(ProjectList { data: projects.into_iter().map(ProjectView::from).collect() }))
}

/// The project `id` names, checked for shape; 404 when there is none.
pub(super) async fn load(state: &AppState, id: &str) -> Result<Project, ApiError> {
    check_project_id(id, "id")?;
    state
        .budget
        .store()
        .get_project(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {id:?} not found")))
}

/// Reads one project.
#[utoipa::path(get, path = "/admin/projects/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)), security(("admin_key" = [])))]
pub async fn get_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(load(&state, &id).await?.into()))
}

/// Changes a project's name and/or budget.
#[utoipa::path(patch, path = "/admin/projects/{id}", tag = "admin", params(("id" = String, Path)),
    request_body = UpdateProject,
    responses((status = 200, body = ProjectView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn update_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateProject>,
) -> Result<Json<ProjectView>, ApiError> {
    let mut project = load(&state, &id).await?;
    if let Some(name) = body.name {
        check_name(&name)?;
        project.name = name;
    }
    if let Some(budget) = &body.budget {
        apply_budget(&mut project.limits, budget)?;
    }
    project.updated_at_ms = state.budget.now().timestamp_millis();
    state.budget.store().update_project(&project).await?;
    Ok(Json(project.into()))
}

/// Deletes a project and revokes its keys. Its ledger is kept; the `default` project cannot be deleted.
#[utoipa::path(delete, path = "/admin/projects/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn delete_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_project_id(&id, "id")?;
    if id == "default" {
        return Err(ApiError::bad_request("the default project cannot be deleted", "id"));
    }
    state.budget.store().delete_project(&id, state.budget.now().timestamp_millis()).await?;
    let change = crate::store::keys::KeyChange::ProjectDeleted { project_id: id.clone() };
    crate::auth::keys_changed(state.budget.store().as_ref(), &state.keys, change).await;
    // A project made again under this id starts without an agent policy.
    state.budget.store().delete_agent_policy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
