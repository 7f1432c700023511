//! The admin command line (`ccgate projects|keys|usage`): a client of a
//! running gateway's HTTP API that prints tables, or the gateway's JSON with
//! `--json`. It shares no code with the server beyond the URL paths, so it
//! works against any gateway it can reach.

pub mod client;
pub mod table;
pub mod views;

use clap::{Args, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use client::Client;

/// Where the gateway is and how to talk to it; accepted after any
/// subcommand (`ccgate projects list --json`).
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The gateway's base URL.
    #[arg(long, env = "CCGATE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// The gateway's admin key, sent as `Authorization: Bearer`.
    #[arg(long, env = "CCGATE_ADMIN_KEY", hide_env_values = true, global = true)]
    pub admin_key: Option<String>,
    /// Print the gateway's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ProjectsArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: ProjectsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ProjectsCommand {
    /// List every project with its limits.
    List,
    /// Show one project.
    Get { id: String },
    /// Create a project (limits are USD per UTC day, week and month).
    Create {
        id: String,
        #[command(flatten)]
        changes: ProjectChanges,
    },
    /// Change a project's name or limits; `none` removes a limit.
    Update {
        id: String,
        #[command(flatten)]
        changes: ProjectChanges,
    },
    /// Delete a project (its ledger is kept).
    Delete { id: String },
}

#[derive(Args, Debug)]
pub struct ProjectChanges {
    /// Display name [default on create: the id].
    #[arg(long)]
    pub name: Option<String>,
    /// Limit per UTC day in USD, or `none`.
    #[arg(long, value_parser = parse_limit)]
    pub daily_usd: Option<Limit>,
    /// Limit per UTC week (Monday to Sunday) in USD, or `none`.
    #[arg(long, value_parser = parse_limit)]
    pub weekly_usd: Option<Limit>,
    /// Limit per UTC calendar month in USD, or `none`.
    #[arg(long, value_parser = parse_limit)]
    pub monthly_usd: Option<Limit>,
}

/// A budget limit in USD; `Limit(None)` removes it.
#[derive(Debug, Clone, Copy)]
pub struct Limit(pub Option<f64>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    match text.parse::<f64>() {
        Ok(usd) if usd.is_finite() && usd >= 0.0 => Ok(Limit(Some(usd))),
        _ => Err(format!("{text:?} is not an amount in USD (like 5 or 12.50) or `none`")),
    }
}

impl ProjectChanges {
    /// The request body's fields: only what was given, so an update leaves
    /// the rest as it was.
    fn body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some(name) = &self.name {
            body.insert("name".into(), json!(name));
        }
        let mut budget = Map::new();
        let limits = [
            ("daily_usd", self.daily_usd),
            ("weekly_usd", self.weekly_usd),
            ("monthly_usd", self.monthly_usd),
        ];
        for (field, value) in limits {
            if let Some(Limit(usd)) = value {
                budget.insert(field.into(), json!(usd));
            }
        }
        if !budget.is_empty() {
            body.insert("budget".into(), Value::Object(budget));
        }
        body
    }
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key for a project and print its secret (shown only once).
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    List {
        /// Only this project's keys.
        #[arg(long)]
        project: Option<String>,
    },
    /// Revoke a key: requests with it get 401 from now on.
    Revoke { key_id: String },
}

#[derive(Args, Debug)]
pub struct CreateKeyArgs {
    /// The project the key acts for.
    #[arg(long)]
    pub project: String,
    /// A label to recognise the key by.
    #[arg(long)]
    pub name: Option<String>,
    /// When the key stops working (RFC 3339, e.g. 2030-01-31T00:00:00Z) [default: never].
    #[arg(long, value_parser = parse_time)]
    pub expires_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Requests per minute [default: the gateway's default_rpm_limit].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub rpm: Option<i64>,
    /// Tokens per minute [default: the gateway's default_tpm_limit].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub tpm: Option<i64>,
    /// Requests in flight at once [default: the gateway's default_max_concurrent].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_concurrent: Option<i64>,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::FixedOffset>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2030-01-31T00:00:00Z: {e}"))
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// A project key, used when no admin key is given (it can only read its own project).
    #[arg(long, env = "CCGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The project [default: the key's project, else `default`].
    #[arg(long)]
    pub project: Option<String>,
    /// The current UTC day, week or month.
    #[arg(long, value_enum, default_value_t = Period::Day)]
    pub period: Period,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

pub async fn projects(args: ProjectsArgs) -> anyhow::Result<()> {
    let connection = &args.connection;
    let client = Client::new(&connection.url, connection.admin_key.clone())?;
    let output = match args.command {
        ProjectsCommand::List => {
            render(connection, client.get(&["admin", "projects"], &[]).await?, views::projects)?
        }
        ProjectsCommand::Get { id } => render(
            connection,
            client.get(&["admin", "projects", id.as_str()], &[]).await?,
            |p: views::Project| views::project(&p),
        )?,
        ProjectsCommand::Create { id, changes } => {
            let mut body = changes.body();
            body.insert("id".into(), json!(id));
            let created = client.post(&["admin", "projects"], &Value::Object(body)).await?;
            render(connection, created, |p: views::Project| {
                format!("Created project {}.\n\n{}", p.id, views::project(&p))
            })?
        }
        ProjectsCommand::Update { id, changes } => {
            let body = changes.body();
            anyhow::ensure!(
                !body.is_empty(),
                "nothing to change: give --name, --daily-usd, --weekly-usd or --monthly-usd"
            );
            let updated = client.patch(&["admin", "projects", id.as_str()], &Value::Object(body)).await?;
            render(connection, updated, |p: views::Project| {
                format!("Updated project {}.\n\n{}", p.id, views::project(&p))
            })?
        }
        ProjectsCommand::Delete { id } => {
            client.delete(&["admin", "projects", id.as_str()]).await?;
            done(connection, json!({"id": id, "deleted": true}), format!("Deleted project {id}.\n"))
        }
    };
    print!("{output}");
    Ok(())
}

pub async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let connection = &args.connection;
    let client = Client::new(&connection.url, connection.admin_key.clone())?;
    let output = match args.command {
        KeysCommand::Create(create) => {
            let mut body = Map::new();
            let fields = [
                ("name", create.name.map(Value::from)),
                ("expires_at", create.expires_at.map(|t| Value::from(t.to_rfc3339()))),
                ("rpm_limit", create.rpm.map(Value::from)),
                ("tpm_limit", create.tpm.map(Value::from)),
                ("max_concurrent", create.max_concurrent.map(Value::from)),
            ];
            for (field, value) in fields {
                if let Some(value) = value {
                    body.insert(field.into(), value);
                }
            }
            let path = ["admin", "projects", create.project.as_str(), "keys"];
            render(connection, client.post(&path, &Value::Object(body)).await?, views::created_key)?
        }
        KeysCommand::List { project } => {
            let listed = match &project {
                Some(project) => client.get(&["admin", "projects", project, "keys"], &[]).await?,
                None => client.get(&["admin", "keys"], &[]).await?,
            };
            render(connection, listed, |list| views::keys(list, chrono::Utc::now()))?
        }
        KeysCommand::Revoke { key_id } => {
            client.delete(&["admin", "keys", &key_id]).await?;
            done(connection, json!({"key_id": key_id, "revoked": true}), format!("Revoked key {key_id}.\n"))
        }
    };
    print!("{output}");
    Ok(())
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let connection = &args.connection;
    let key = connection.admin_key.clone().or(args.api_key);
    let client = Client::new(&connection.url, key)?;
    let mut query = vec![("period", args.period.as_str())];
    if let Some(project) = &args.project {
        query.push(("project_id", project));
    }
    let report = client.get(&["v1", "usage"], &query).await?;
    print!("{}", render(connection, report, views::usage)?);
    Ok(())
}

/// The gateway's JSON as it came with `--json`, else the view's text.
fn render<T: DeserializeOwned>(
    connection: &Connection,
    value: Value,
    view: impl FnOnce(T) -> String,
) -> anyhow::Result<String> {
    if connection.json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    let parsed = serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("the gateway's reply is not what this command line expects: {e}"))?;
    Ok(view(parsed))
}

/// For commands whose reply has no body (204): a small JSON object or a sentence.
fn done(connection: &Connection, json: Value, text: String) -> String {
    match connection.json {
        true => format!("{json}\n"),
        false => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_amounts_and_none() {
        assert_eq!(parse_limit("5").unwrap().0, Some(5.0));
        assert_eq!(parse_limit("12.50").unwrap().0, Some(12.5));
        assert_eq!(parse_limit("none").unwrap().0, None);
        for bad in ["-1", "five", "NaN", "inf", ""] {
            assert!(parse_limit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_given_changes_are_sent() {
        let changes = ProjectChanges {
            name: None,
            daily_usd: Some(Limit(None)),
            weekly_usd: None,
            monthly_usd: Some(Limit(Some(9.0))),
        };
        assert_eq!(Value::Object(changes.body()), json!({"budget": {"daily_usd": null, "monthly_usd": 9.0}}));
        let changes =
            ProjectChanges { name: Some("A".into()), daily_usd: None, weekly_usd: None, monthly_usd: None };
        assert_eq!(Value::Object(changes.body()), json!({"name": "A"}));
    }
}
