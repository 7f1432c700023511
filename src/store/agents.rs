//! Storage of agent policies and session ownership, for both databases (the
//! same `$N` statements, like `queries`). Policies are stored as the JSON
//! the agent module gives; this module does not read them.

use async_trait::async_trait;

use super::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSession {
    pub session_id: String,
    pub project_id: String,
    pub working_directory: String,
    pub created_at_ms: i64,
    pub last_used_ms: i64,
}

#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Sets (or replaces) a project's policy.
    async fn put_agent_policy(&self, project_id: &str, policy_json: &str, now_ms: i64) -> StoreResult<()>;
    async fn agent_policy(&self, project_id: &str) -> StoreResult<Option<String>>;
    /// Removes a project's stored policy (none left is not an error).
    async fn delete_agent_policy(&self, project_id: &str) -> StoreResult<()>;
    /// Records a session, or its last use when it is known already. The
    /// owner of a known session never changes.
    async fn touch_agent_session(&self, session: &AgentSession) -> StoreResult<()>;
    async fn agent_session(&self, session_id: &str) -> StoreResult<Option<AgentSession>>;
}

macro_rules! impl_agent_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::agents::AgentStore for $store {
            async fn put_agent_policy(
                &self,
                project_id: &str,
                policy_json: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO agent_policies (project_id, policy, updated_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (project_id) DO UPDATE SET policy = $2, updated_at_ms = $3",
                )
                .bind(project_id)
                .bind(policy_json)
                .bind(now_ms)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn agent_policy(&self, project_id: &str) -> $crate::store::StoreResult<Option<String>> {
                let row = sqlx::query("SELECT policy FROM agent_policies WHERE project_id = $1")
                    .bind(project_id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| sqlx::Row::try_get(&r, 0)).transpose()?)
            }

            async fn delete_agent_policy(&self, project_id: &str) -> $crate::store::StoreResult<()> {
                sqlx::query("DELETE FROM agent_policies WHERE project_id = $1")
                    .bind(project_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn touch_agent_session(
                &self,
                s: &$crate::store::agents::AgentSession,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO agent_sessions (session_id, project_id, working_directory, created_at_ms, \
                     last_used_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (session_id) DO UPDATE SET last_used_ms = $5 \
                     WHERE agent_sessions.project_id = $2",
                )
                .bind(&s.session_id)
                .bind(&s.project_id)
                .bind(&s.working_directory)
                .bind(s.created_at_ms)
                .bind(s.last_used_ms)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn agent_session(
                &self,
                session_id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::agents::AgentSession>> {
                let row = sqlx::query(
                    "SELECT session_id, project_id, working_directory, created_at_ms, last_used_ms \
                     FROM agent_sessions WHERE session_id = $1",
                )
                .bind(session_id)
                .fetch_optional(&self.reader)
                .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some($crate::store::agents::AgentSession {
                    session_id: sqlx::Row::try_get(&row, 0)?,
                    project_id: sqlx::Row::try_get(&row, 1)?,
                    working_directory: sqlx::Row::try_get(&row, 2)?,
                    created_at_ms: sqlx::Row::try_get(&row, 3)?,
                    last_used_ms: sqlx::Row::try_get(&row, 4)?,
                }))
            }
        }
    };
}

pub(super) use impl_agent_store;
