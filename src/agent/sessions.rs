//! Session ownership: a CLI session belongs to the project whose request
//! started it, and only that project may resume it. Another project asking
//! for it is told it does not exist (404), so session ids cannot be probed.

use std::path::PathBuf;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::agents::AgentSession;

/// The directory a project's own session was started in.
pub async fn owned(state: &AppState, project_id: &str, session_id: &str) -> Result<PathBuf, ApiError> {
    let not_found = || ApiError::NotFound {
        message: format!("session {session_id:?} not found for this project"),
        param: Some("session_id".into()),
        code: Some("session_not_found"),
    };
    let session = state.budget.store().agent_session(session_id).await?.ok_or_else(not_found)?;
    if session.project_id != project_id {
        return Err(not_found());
    }
    Ok(PathBuf::from(session.working_directory))
}

/// Records that `project_id` owns `session_id` (or that it was used again).
/// A session already owned by another project is left as it is.
pub async fn remember(state: &AppState, project_id: &str, session_id: &str, working_directory: &str) {
    let now = state.budget.now().timestamp_millis();
    let session = AgentSession {
        session_id: session_id.to_string(),
        project_id: project_id.to_string(),
        working_directory: working_directory.to_string(),
        created_at_ms: now,
        last_used_ms: now,
    };
    if let Err(e) = state.budget.store().touch_agent_session(&session).await {
        tracing::error!(session_id, error = %e, "failed to record an agent session");
    }
}
