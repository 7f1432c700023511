//! What the admin endpoints return, as this client reads it, and how each
//! is shown as text. Fields the gateway adds later are ignored, so an older
//! command line keeps working against a newer gateway.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::table::{fields, limit, time, usd, Table};

#[derive(Debug, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

#[derive(Debug, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub budget: Budget,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize)]
pub struct Budget {
    pub daily_usd: Option<f64>,
    pub weekly_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Key {
    pub key_id: String,
    pub project_id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub max_concurrent: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: Key,
    /// The secret, sent this once.
    #[serde(rename = "key")]
    pub secret: String,
}

#[derive(Debug, Deserialize)]
pub struct Usage {
    pub project_id: String,
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    pub limit_usd: Option<f64>,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub remaining_usd: Option<f64>,
    pub by_model: Vec<ModelUsage>,
}

#[derive(Debug, Deserialize)]
pub struct ModelUsage {
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

pub fn projects(list: List<Project>) -> String {
    if list.data.is_empty() {
        return "No projects.\n".into();
    }
    let mut table = Table::new(&["ID", "NAME", "DAILY", "WEEKLY", "MONTHLY", "CREATED"]).numeric(&[2, 3, 4]);
    for p in list.data {
        table.row(vec![
            p.id,
            p.name,
            limit(p.budget.daily_usd),
            limit(p.budget.weekly_usd),
            limit(p.budget.monthly_usd),
            time(&p.created_at),
        ]);
    }
    table.render()
}

pub fn project(p: &Project) -> String {
    fields(&[
        ("id", p.id.clone()),
        ("name", p.name.clone()),
        ("daily limit", limit(p.budget.daily_usd)),
        ("weekly limit", limit(p.budget.weekly_usd)),
        ("monthly limit", limit(p.budget.monthly_usd)),
        ("created", time(&p.created_at)),
        ("updated", time(&p.updated_at)),
    ])
}

/// `revoked`, `expired` or `active`, as of `now`.
pub fn key_status(key: &Key, now: DateTime<Utc>) -> &'static str {
    let expired = key
        .expires_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t <= now);
    match (key.revoked_at.is_some(), expired) {
        (true, _) => "revoked",
        (false, true) => "expired",
        (false, false) => "active",
    }
}

pub fn keys(list: List<Key>, now: DateTime<Utc>) -> String {
    if list.data.is_empty() {
        return "No keys.\n".into();
    }
    let mut table =
        Table::new(&["KEY ID", "PROJECT", "NAME", "PREFIX", "STATUS", "RPM", "TPM", "CONCURRENT", "EXPIRES"])
            .numeric(&[5, 6, 7]);
    let count = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    for key in list.data {
        let status = key_status(&key, now).to_string();
        table.row(vec![
            key.key_id,
            key.project_id,
            key.name,
            format!("{}...", key.prefix),
            status,
            count(key.rpm_limit),
            count(key.tpm_limit),
            count(key.max_concurrent),
            key.expires_at.as_deref().map(time).unwrap_or_else(|| "never".into()),
        ]);
    }
    table.render()
}

/// The new key with its secret, said loudly: it is never shown again.
pub fn created_key(created: CreatedKey) -> String {
    let key = created.view;
    let name = match key.name.is_empty() {
        true => String::new(),
        false => format!(" ({:?})", key.name),
    };
    format!(
        "Created key {}{name} for project {}.\n\n    {}\n\n\
         This is the only time the secret is shown: store it now. It cannot be\n\
         retrieved later; if it is lost, revoke the key and create another.\n",
        key.key_id, key.project_id, created.secret
    )
}

pub fn usage(u: Usage) -> String {
    let mut out = fields(&[
        ("project", u.project_id),
        ("period", format!("{} ({} to {})", u.period, time(&u.period_start), time(&u.period_end))),
        ("limit", limit(u.limit_usd)),
        ("spent", usd(u.spent_usd)),
        ("reserved", usd(u.reserved_usd)),
        ("remaining", u.remaining_usd.map(usd).unwrap_or_else(|| "unlimited".into())),
    ]);
    out.push('\n');
    if u.by_model.is_empty() {
        out.push_str("No requests in this period.\n");
        return out;
    }
    let mut table =
        Table::new(&["MODEL", "REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "COST"]).numeric(&[1, 2, 3, 4]);
    for m in u.by_model {
        table.row(vec![
            m.model,
            m.requests.to_string(),
            m.input_tokens.to_string(),
            m.output_tokens.to_string(),
            usd(m.cost_usd),
        ]);
    }
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expires_at: Option<&str>, revoked_at: Option<&str>) -> Key {
        Key {
            key_id: "key_1".into(),
            project_id: "p".into(),
            name: String::new(),
            prefix: "ccg_abcdef".into(),
            created_at: "2025-01-01T00:00:00+00:00".into(),
            expires_at: expires_at.map(str::to_string),
            revoked_at: revoked_at.map(str::to_string),
            rpm_limit: None,
            tpm_limit: None,
            max_concurrent: None,
        }
    }

    #[test]
    fn key_status_prefers_revoked_then_expired() {
        let now = DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let past = Some("2025-05-01T00:00:00+00:00");
        let future = Some("2025-07-01T00:00:00+00:00");
        for (expires, revoked, status) in [
            (None, None, "active"),
            (future, None, "active"),
            (past, None, "expired"),
            (future, past, "revoked"),
            (past, past, "revoked"),
        ] {
            assert_eq!(key_status(&key(expires, revoked), now), status, "{expires:?} {revoked:?}");
        }
    }
}
