//! Settings: built-in defaults, then an optional TOML file, then `CCGATE_*`
//! environment variables, then command-line flags, each layer overriding the
//! one before. An unknown or invalid setting stops start-up with its name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Optional settings that are numbers (absent from the defaults table, so
/// their type cannot be read from it).
const OPTIONAL_INTEGERS: &[&str] = &["default_rpm_limit", "default_tpm_limit", "default_max_concurrent"];

/// Where the direct backend sends requests when nothing says otherwise.
const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// Environment variables that start with `CCGATE_` but are not settings.
const NON_SETTING_VARS: &[&str] = &["CCGATE_CONFIG", "CCGATE_LOG", "CCGATE_URL", "CCGATE_API_KEY"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// `sqlite://FILE` (created if missing) or `postgres://…`.
    pub database_url: String,
    /// The Claude Code executable: a path, or a name looked up on PATH.
    pub claude_bin: String,
    /// How many CLI processes may run at once.
    pub pool_size: usize,
    /// How many requests may wait for a worker before new ones get 503.
    pub queue_limit: usize,
    /// Longest a request may run, queueing included, in seconds.
    pub request_timeout_secs: u64,
    /// Longest a worker may stay silent before it is killed, in seconds.
    pub stall_timeout_secs: u64,
    /// On SIGTERM or Ctrl-C, how long in-flight requests may finish, in seconds.
    pub shutdown_grace_secs: u64,
    /// Parent directory for the workers' scratch working directories.
    pub work_dir: PathBuf,
    /// Bearer key for `/admin/*`. Unset: admin is open, and only on loopback.
    pub admin_key: Option<String>,
    /// Replaces the built-in price table.
    pub prices_file: Option<PathBuf>,
    /// Input tokens the CLI adds to every run (its own system prompt), used
    /// in budget estimates.
    pub prompt_overhead_tokens: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most messages one chat request may carry.
    pub max_messages: usize,
    /// Largest image a message may carry, in bytes once decoded (larger
    /// ones get 413). Anthropic's own limit is 5 MiB.
    pub max_image_bytes: usize,
    /// `text` (human-readable) or `json` log lines.
    pub log_format: LogFormat,
    /// How long a crashed instance's reservations are held before another
    /// instance releases them, in seconds (heartbeats come every third of it).
    pub instance_ttl_secs: u64,
    /// Times the CLI itself retries a failed upstream call (429, 529,
    /// connection errors) before it reports the error.
    pub cli_max_retries: u32,
    /// Extra environment variables for workers (for example
    /// ANTHROPIC_BASE_URL), on top of what they inherit from the gateway.
    pub worker_env: BTreeMap<String, String>,
    /// Names of gateway environment variables workers inherit besides the
    /// built-in allow-list (PATH, HOME, locale, proxies, `ANTHROPIC_*`,
    /// `CLAUDE_*`…). `CCGATE_*`, `DATABASE_URL` and `PG*` are refused.
    pub worker_env_passthrough: Vec<String>,
    /// Requests per minute for project keys without their own limit.
    pub default_rpm_limit: Option<i64>,
    /// Tokens per minute for project keys without their own limit.
    pub default_tpm_limit: Option<i64>,
    /// Concurrent requests for project keys without their own limit.
    pub default_max_concurrent: Option<i64>,
    /// A bearer token that may scrape `/metrics` (besides the admin key).
    pub metrics_token: Option<String>,
    /// Log prompt text (off: prompts and secrets never reach the log).
    pub log_prompts: bool,
    /// Longest a client may take to send its request body, in seconds.
    pub client_body_timeout_secs: u64,
    /// Longest a connection may go without a whole request head, when it
    /// opens and between its requests (an idle keep-alive connection), in
    /// seconds; then it is closed.
    pub client_idle_timeout_secs: u64,
    /// Most client connections held at once; more wait to be accepted.
    pub max_connections: usize,
    /// The most of the pool batch work may hold at once, as a fraction of
    /// `pool_size` (rounded up, at least one worker).
    pub batch_pool_share: f64,
    /// Most requests in one `POST /v1/batch`.
    pub batch_max_tasks: usize,
    /// Most requests (lines) in one batch input file.
    pub batch_max_file_lines: usize,
    /// Largest `POST /v1/batch` body or uploaded batch file, in bytes.
    pub batch_max_body_bytes: usize,
    /// Keep pre-started CLI processes and reuse them (`/clear` between
    /// requests); off: every request starts a cold `claude -p`.
    pub warm_pool: bool,
    /// Send Claude Code workers' upstream calls through the gateway, which
    /// lets a run's later calls go only within what is left of its
    /// reservation; off: workers call the upstream themselves.
    pub spend_gate: bool,
    /// Resident memory all warm processes together may use, in MiB.
    pub warm_memory_mb: u64,
    /// Requests one warm process serves before it is replaced.
    pub warm_max_requests: u32,
    /// A warm process idle this long is retired, in seconds.
    pub warm_idle_secs: u64,
    /// Models (aliases or ids) to start one warm process for at start-up.
    pub warm_prestart: Vec<String>,
    /// How `"model": "auto"` weighs a request: signal weights, tier
    /// thresholds, low-budget steps (see docs/ROUTING.md).
    pub routing: ccgate_router::RouterConfig,
    /// Per-project routing policy: `allowed_tiers`, `min_tier`, `max_tier`,
    /// `fixed_model`, keyed by project id.
    pub routing_policies: BTreeMap<String, ccgate_router::Policy>,
    /// The Anthropic Messages API the direct backend calls (default: the
    /// `ANTHROPIC_BASE_URL` environment variable, else the public API).
    pub anthropic_base_url: String,
    /// The direct backend's API key (default: `ANTHROPIC_API_KEY`). A secret:
    /// never logged, never serialized.
    #[serde(skip_serializing)]
    pub anthropic_api_key: Option<ApiKey>,
    /// Which backend serves a model, by id or alias: `cli` (Claude Code
    /// processes) or `api` (the Messages API directly).
    pub backends: BTreeMap<String, String>,
    /// The backend of models that `backends` does not name.
    pub default_backend: String,
    /// How many direct (`api`) requests may run at once.
    pub api_max_concurrent: usize,
    /// Times the direct backend retries a 429, 529, 5xx or connection error
    /// (never once text has been streamed).
    pub api_max_retries: u32,
    /// The model to try next when a model is overloaded or rate-limited
    /// upstream, by id or alias (for example `{ opus = "sonnet" }`).
    pub fallback_models: BTreeMap<String, String>,
    /// Other names clients may send as `model`, each for a model of the
    /// price table by id or alias (for example `{ "gpt-4o" = "sonnet",
    /// "gpt-4o-mini" = "haiku" }`), for clients and tools that only offer
    /// OpenAI's model names. They are listed by `GET /v1/models`; the
    /// ledger keeps the name the client sent as the model requested.
    pub model_aliases: BTreeMap<String, String>,
    /// Per-project agent policy (`allowed_roots`, `allowed_tools`,
    /// `denied_tools`, `max_turns`, `max_task_usd`, `mcp_servers`,
    /// `skip_permissions`), keyed by project id. One set with
    /// `PUT /admin/projects/{id}/agent-policy` wins over this.
    pub agent_policies: BTreeMap<String, crate::agent::AgentPolicy>,
}

/// A secret setting: its `Debug` form never shows the value.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key itself, for the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Which kind of worker serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A cold Claude Code CLI process per request.
    Cli,
    /// The Anthropic Messages API over HTTP.
    Api,
}

impl Backend {
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "cli" => Some(Backend::Cli),
            "api" => Some(Backend::Api),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cli => "cli",
            Backend::Api => "api",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://ccgate.db".into(),
            claude_bin: "claude".into(),
            pool_size: 4,
            queue_limit: 64,
            request_timeout_secs: 300,
            stall_timeout_secs: 60,
            shutdown_grace_secs: 30,
            work_dir: std::env::temp_dir().join("ccgate-work"),
            admin_key: None,
            prices_file: None,
            prompt_overhead_tokens: 600,
            max_body_bytes: 8 * 1024 * 1024,
            max_messages: 2048,
            max_image_bytes: 5 * 1024 * 1024,
            log_format: LogFormat::Text,
            instance_ttl_secs: 30,
            cli_max_retries: 2,
            worker_env: BTreeMap::new(),
            worker_env_passthrough: Vec::new(),
            default_rpm_limit: None,
            default_tpm_limit: None,
            default_max_concurrent: None,
            metrics_token: None,
            log_prompts: false,
            client_body_timeout_secs: 30,
            client_idle_timeout_secs: 30,
            max_connections: 4096,
            batch_pool_share: 0.5,
            batch_max_tasks: 1000,
            batch_max_file_lines: 50_000,
            batch_max_body_bytes: 64 * 1024 * 1024,
            warm_pool: true,
            spend_gate: true,
            warm_memory_mb: 2048,
            warm_max_requests: 200,
            warm_idle_secs: 300,
            warm_prestart: Vec::new(),
            routing: ccgate_router::RouterConfig::default(),
            routing_policies: BTreeMap::new(),
            anthropic_base_url: DEFAULT_ANTHROPIC_BASE_URL.into(),
            anthropic_api_key: None,
            backends: BTreeMap::new(),
            default_backend: "cli".into(),
            api_max_concurrent: 512,
            api_max_retries: 2,
            fallback_models: BTreeMap::new(),
            model_aliases: BTreeMap::new(),
            agent_policies: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    File { path: String, message: String },
    #[error("unknown setting {name} (from the environment)")]
    UnknownEnv { name: String },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: String, message: String },
}

impl Settings {
    /// Builds settings from the layers. `overrides` are the command-line
    /// flags that were given, as `(setting name, TOML value)`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Vec<(&'static str, toml::Value)>,
    ) -> Result<Settings, ConfigError> {
        let mut table = toml::Table::try_from(Settings::default())
            .map_err(|e| ConfigError::Invalid { name: "defaults".into(), message: e.to_string() })?;
        let known: Vec<String> = known_settings();
        let env: BTreeMap<String, String> = env.into_iter().collect();
        // The Anthropic SDKs' own variables are defaults, below every layer.
        for (var, key) in
            [("ANTHROPIC_BASE_URL", "anthropic_base_url"), ("ANTHROPIC_API_KEY", "anthropic_api_key")]
        {
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                table.insert(key.into(), toml::Value::String(value.clone()));
            }
        }

        if let Some(path) = file {
            let path_text = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path_text.clone(), source })?;
            let from_file: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::File {
                path: path_text.clone(),
                message: e.message().to_string(),
            })?;
            for (key, value) in from_file {
                if !known.contains(&key) {
                    return Err(ConfigError::File {
                        path: path_text,
                        message: format!("unknown setting {key}"),
                    });
                }
                table.insert(key, value);
            }
        }

        for (var, raw) in env {
            let Some(name) = var.strip_prefix("CCGATE_") else { continue };
            if NON_SETTING_VARS.contains(&var.as_str()) {
                continue;
            }
            let key = name.to_ascii_lowercase();
            if !known.contains(&key) {
                return Err(ConfigError::UnknownEnv { name: var });
            }
            let value = env_value(&key, table.get(&key), &raw).ok_or_else(|| ConfigError::Invalid {
                name: var.clone(),
                message: format!("cannot parse {raw:?}"),
            })?;
            table.insert(key, value);
        }

        for (key, value) in overrides {
            table.insert(key.to_string(), value);
        }

        let settings: Settings = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            ConfigError::Invalid { name: setting_named_in(&e), message: e.message().to_string() }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, message: &str| {
            Err(ConfigError::Invalid { name: name.into(), message: message.into() })
        };
        if self.pool_size == 0 {
            return invalid("pool_size", "must be at least 1");
        }
        if self.max_image_bytes == 0 {
            return invalid("max_image_bytes", "must be at least 1");
        }
        if !(self.batch_pool_share > 0.0 && self.batch_pool_share <= 1.0) {
            return invalid("batch_pool_share", "must be more than 0 and at most 1");
        }
        for (name, value) in [
            ("batch_max_tasks", self.batch_max_tasks),
            ("batch_max_file_lines", self.batch_max_file_lines),
            ("batch_max_body_bytes", self.batch_max_body_bytes),
        ] {
            if value == 0 {
                return invalid(name, "must be at least 1");
            }
        }
        if self.warm_max_requests == 0 {
            return invalid("warm_max_requests", "must be at least 1");
        }
        if self.warm_idle_secs == 0 {
            return invalid("warm_idle_secs", "must be at least 1");
        }
        if self.request_timeout_secs == 0 {
            return invalid("request_timeout_secs", "must be at least 1");
        }
        if self.stall_timeout_secs == 0 {
            return invalid("stall_timeout_secs", "must be at least 1");
        }
        if self.instance_ttl_secs < 3 {
            return invalid("instance_ttl_secs", "must be at least 3");
        }
        if !(crate::store::is_sqlite_url(&self.database_url)
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return invalid("database_url", "must start with sqlite: or postgres://");
        }
        self.validate_worker_env()?;
        self.validate_backends()?;
        for (project, policy) in &self.agent_policies {
            if let Err(e) = policy.validate() {
                return invalid(&format!("agent_policies.{project}.{}", e.field), &e.message);
            }
        }
        if self.admin_key.as_deref().is_some_and(|k| k.len() < 16) {
            return invalid("admin_key", "must be at least 16 characters");
        }
        if self.admin_key.is_none() && !self.listen.ip().is_loopback() {
            return invalid(
                "admin_key",
                "must be set to listen on a non-loopback address: without it anyone who can reach the gateway could spend every budget",
            );
        }
        for (name, value) in [
            ("default_rpm_limit", self.default_rpm_limit),
            ("default_tpm_limit", self.default_tpm_limit),
            ("default_max_concurrent", self.default_max_concurrent),
        ] {
            if value.is_some_and(|v| v < 1) {
                return invalid(name, "must be at least 1");
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The backend that serves a model, given its id and aliases.
    pub fn backend_for(&self, id: &str, aliases: &[String]) -> Backend {
        std::iter::once(id)
            .chain(aliases.iter().map(String::as_str))
            .find_map(|name| self.backends.get(name))
            .or(Some(&self.default_backend))
            .and_then(|name| Backend::parse(name))
            .unwrap_or(Backend::Cli)
    }

    /// Whether any model may be served by the direct backend.
    pub fn uses_api(&self) -> bool {
        std::iter::once(&self.default_backend)
            .chain(self.backends.values())
            .any(|name| Backend::parse(name) == Some(Backend::Api))
    }

    /// The gateway's secrets never reach a worker, not even on purpose.
    fn validate_worker_env(&self) -> Result<(), ConfigError> {
        let secret = |name: &String| crate::workers::cli::is_gateway_secret(name);
        if let Some(name) = self.worker_env.keys().find(|n| secret(n)) {
            return Err(ConfigError::Invalid {
                name: "worker_env".into(),
                message: format!("{name} is one of the gateway's own variables and cannot go to workers"),
            });
        }
        if let Some(name) = self.worker_env_passthrough.iter().find(|n| secret(n)) {
            return Err(ConfigError::Invalid {
                name: "worker_env_passthrough".into(),
                message: format!("{name} is one of the gateway's own variables and cannot go to workers"),
            });
        }
        Ok(())
    }

    fn validate_backends(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, message: String| Err(ConfigError::Invalid { name: name.into(), message });
        if Backend::parse(&self.default_backend).is_none() {
            return invalid(
                "default_backend",
                format!("unknown backend {:?} (use cli or api)", self.default_backend),
            );
        }
        for (model, backend) in &self.backends {
            if Backend::parse(backend).is_none() {
                return invalid(
                    "backends",
                    format!("unknown backend {backend:?} for {model} (use cli or api)"),
                );
            }
        }
        if self.api_max_concurrent == 0 {
            return invalid("api_max_concurrent", "must be at least 1".into());
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1".into());
        }
        if self.client_idle_timeout_secs == 0 {
            return invalid("client_idle_timeout_secs", "must be at least 1".into());
        }
        if !(self.anthropic_base_url.starts_with("http://")
            || self.anthropic_base_url.starts_with("https://"))
        {
            return invalid("anthropic_base_url", "must start with http:// or https://".into());
        }
        if self.uses_api() && self.anthropic_api_key.as_ref().is_none_or(|k| k.expose().trim().is_empty()) {
            return invalid(
                "anthropic_api_key",
                "must be set (or ANTHROPIC_API_KEY) when a model is served by the api backend".into(),
            );
        }
        for (from, to) in &self.fallback_models {
            if from == to {
                return invalid("fallback_models", format!("{from} falls back to itself"));
            }
        }
        for alias in self.model_aliases.keys() {
            // An empty model and `auto` ask the router to choose.
            if alias.trim().is_empty() || alias == "auto" {
                return invalid("model_aliases", format!("{alias:?} cannot name a model"));
            }
        }
        Ok(())
    }
}

/// The names of every top-level setting, taken from the struct itself so the
/// list cannot drift from it.
fn known_settings() -> Vec<String> {
    let mut names: Vec<String> =
        toml::Table::try_from(Settings::default()).map(|t| t.keys().cloned().collect()).unwrap_or_default();
    // Optional settings are absent from the serialized defaults.
    names.extend(["admin_key", "prices_file", "metrics_token", "anthropic_api_key"].map(String::from));
    names.extend(OPTIONAL_INTEGERS.iter().map(|s| s.to_string()));
    names
}

/// Environment values take the type of the setting's default, so an admin
/// key made of digits stays a string and `CCGATE_POOL_SIZE=x` is an error.
fn env_value(key: &str, default: Option<&toml::Value>, raw: &str) -> Option<toml::Value> {
    match default {
        Some(toml::Value::Integer(_)) => raw.trim().parse().ok().map(toml::Value::Integer),
        Some(toml::Value::Boolean(_)) => raw.trim().parse().ok().map(toml::Value::Boolean),
        Some(toml::Value::Float(_)) => raw.trim().parse().ok().map(toml::Value::Float),
        None if OPTIONAL_INTEGERS.contains(&key) => raw.trim().parse().ok().map(toml::Value::Integer),
        Some(toml::Value::Table(_)) => map_value(raw),
        // A list: names separated by commas.
        Some(toml::Value::Array(_)) => Some(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )),
        _ => Some(toml::Value::String(raw.to_string())),
    }
}

/// A map setting from the environment: an inline TOML table
/// (`{ haiku = "api" }`) or `name=value` pairs separated by commas
/// (`haiku=api,opus=cli`).
fn map_value(raw: &str) -> Option<toml::Value> {
    let raw = raw.trim();
    if raw.starts_with('{') {
        let mut parsed: toml::Table = format!("value = {raw}").parse().ok()?;
        return parsed.remove("value");
    }
    let mut table = toml::Table::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        table.insert(name.trim().to_string(), toml::Value::String(value.trim().to_string()));
    }
    Some(toml::Value::Table(table))
}

fn setting_named_in(error: &toml::de::Error) -> String {
    // toml names the offending key in its message ("… for key `pool_size`").
    let message = error.to_string();
    message.split('`').nth(1).map(str::to_string).unwrap_or_else(|| "settings".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ccgate.toml");
        std::fs::write(&file, "pool_size = 2\nqueue_limit = 5\nclaude_bin = \"/opt/claude\"\n").unwrap();
        let settings = Settings::load(
            Some(&file),
            env(&[("CCGATE_QUEUE_LIMIT", "7"), ("CCGATE_STALL_TIMEOUT_SECS", "9"), ("HOME", "/root")]),
            vec![("stall_timeout_secs", toml::Value::Integer(11))],
        )
        .unwrap();
        assert_eq!(settings.pool_size, 2);
        assert_eq!(settings.queue_limit, 7);
        assert_eq!(settings.stall_timeout_secs, 11);
        assert_eq!(settings.claude_bin, "/opt/claude");
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    }

    #[test]
    fn unknown_and_invalid_settings_are_named() {
        let err = Settings::load(None, env(&[("CCGATE_POOLSIZE", "3")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("CCGATE_POOLSIZE"), "{err}");

        let err = Settings::load(None, env(&[("CCGATE_POOL_SIZE", "many")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("CCGATE_POOL_SIZE"), "{err}");

        let err = Settings::load(None, env(&[("CCGATE_POOL_SIZE", "0")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("pool_size"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ccgate.toml");
        std::fs::write(&file, "lisen = \"0.0.0.0:1\"\n").unwrap();
        let err = Settings::load(Some(&file), vec![], vec![]).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");

        let err = Settings::load(None, env(&[("CCGATE_LISTEN", "nowhere")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn the_batch_share_is_a_fraction_from_file_or_env() {
        let settings = Settings::load(None, env(&[("CCGATE_BATCH_POOL_SHARE", "0.25")]), vec![]).unwrap();
        assert_eq!(settings.batch_pool_share, 0.25);
        let settings = Settings::load(None, env(&[("CCGATE_BATCH_POOL_SHARE", "1")]), vec![]).unwrap();
        assert_eq!(settings.batch_pool_share, 1.0);
        for bad in ["0", "1.5", "half"] {
            let err = Settings::load(None, env(&[("CCGATE_BATCH_POOL_SHARE", bad)]), vec![]).unwrap_err();
            assert!(
                err.to_string().contains("batch_pool_share") || err.to_string().contains("BATCH_POOL_SHARE"),
                "{err}"
            );
        }
    }

    #[test]
    fn direct_backend_settings_come_from_anthropic_variables_and_maps() {
        let settings = Settings::load(
            None,
            env(&[
                ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
                ("ANTHROPIC_API_KEY", "sk-secret-value"),
                ("CCGATE_BACKENDS", "haiku=api, opus = cli"),
                ("CCGATE_FALLBACK_MODELS", "{ opus = \"sonnet\" }"),
                ("CCGATE_MODEL_ALIASES", "gpt-4o=sonnet, gpt-4o-mini = haiku"),
                ("CCGATE_API_MAX_RETRIES", "5"),
            ]),
            vec![],
        )
        .unwrap();
        assert_eq!(settings.anthropic_base_url, "http://127.0.0.1:9");
        assert_eq!(settings.anthropic_api_key.as_ref().map(ApiKey::expose), Some("sk-secret-value"));
        assert_eq!(settings.backend_for("claude-haiku-4-5-20251001", &["haiku".into()]), Backend::Api);
        assert_eq!(settings.backend_for("claude-opus-4-8", &["opus".into()]), Backend::Cli);
        assert_eq!(settings.backend_for("claude-sonnet-5", &["sonnet".into()]), Backend::Cli);
        assert_eq!(settings.fallback_models.get("opus").map(String::as_str), Some("sonnet"));
        assert_eq!(settings.model_aliases.get("gpt-4o-mini").map(String::as_str), Some("haiku"));
        assert_eq!(settings.api_max_retries, 5);
        // The key is never shown or serialized.
        assert!(!format!("{settings:?}").contains("sk-secret-value"));
        assert!(!toml::to_string(&settings).unwrap().contains("sk-secret-value"));

        let overridden = Settings::load(
            None,
            env(&[("ANTHROPIC_BASE_URL", "http://a"), ("CCGATE_ANTHROPIC_BASE_URL", "http://b")]),
            vec![],
        )
        .unwrap();
        assert_eq!(overridden.anthropic_base_url, "http://b");
        assert_eq!(Settings::default().anthropic_base_url, "https://api.anthropic.com");
    }

    #[test]
    fn bad_backend_settings_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CCGATE_BACKENDS", "haiku=grpc")], "backends"),
            (&[("CCGATE_DEFAULT_BACKEND", "http")], "default_backend"),
            (&[("CCGATE_BACKENDS", "haiku=api")], "anthropic_api_key"),
            (&[("CCGATE_DEFAULT_BACKEND", "api"), ("ANTHROPIC_API_KEY", " ")], "anthropic_api_key"),
            (&[("CCGATE_API_MAX_CONCURRENT", "0")], "api_max_concurrent"),
            (&[("CCGATE_FALLBACK_MODELS", "opus=opus")], "fallback_models"),
            (&[("CCGATE_MODEL_ALIASES", "auto=haiku")], "model_aliases"),
            (&[("CCGATE_MODEL_ALIASES", "{ \" \" = \"haiku\" }")], "model_aliases"),
        ];
        for (vars, name) in cases {
            let err = Settings::load(None, env(vars), vec![]).unwrap_err();
            assert!(err.to_string().contains(name), "{vars:?}: {err}");
        }
    }

    #[test]
    fn agent_policies_come_from_the_file_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ccgate.toml");
        std::fs::write(
            &file,
            "[agent_policies.acme]\nallowed_roots = [\"/srv/acme\"]\nallowed_tools = [\"Read\", \"Bash(git *)\"]\nmax_turns = 4\n",
        )
        .unwrap();
        let settings = Settings::load(Some(&file), vec![], vec![]).unwrap();
        let policy = &settings.agent_policies["acme"];
        assert_eq!(policy.allowed_roots, vec!["/srv/acme".to_string()]);
        assert_eq!(policy.allowed_tools, vec!["Read".to_string(), "Bash(git *)".to_string()]);
        assert_eq!((policy.max_turns, policy.max_task_usd, policy.skip_permissions), (4, 1.0, false));

        std::fs::write(&file, "[agent_policies.acme]\nallowed_roots = [\"srv\"]\n").unwrap();
        let err = Settings::load(Some(&file), vec![], vec![]).unwrap_err();
        assert!(err.to_string().contains("agent_policies.acme.allowed_roots[0]"), "{err}");
        let err =
            Settings::load(None, env(&[("CCGATE_AGENT_POLICIES", "{ acme = { max_turns = 0 } }")]), vec![])
                .unwrap_err();
        assert!(err.to_string().contains("agent_policies.acme.max_turns"), "{err}");
    }

    #[test]
    fn worker_env_settings_refuse_the_gateways_own_variables() {
        let settings = Settings::load(
            None,
            env(&[("CCGATE_WORKER_ENV_PASSTHROUGH", "AWS_REGION, GOOGLE_CLOUD_PROJECT")]),
            vec![],
        )
        .unwrap();
        assert_eq!(settings.worker_env_passthrough, ["AWS_REGION", "GOOGLE_CLOUD_PROJECT"]);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CCGATE_WORKER_ENV_PASSTHROUGH", "PATH,DATABASE_URL")], "worker_env_passthrough"),
            (&[("CCGATE_WORKER_ENV_PASSTHROUGH", "PGPASSWORD")], "worker_env_passthrough"),
            (&[("CCGATE_WORKER_ENV_PASSTHROUGH", "CCGATE_ADMIN_KEY")], "worker_env_passthrough"),
            (&[("CCGATE_WORKER_ENV", "CCGATE_ADMIN_KEY=x")], "worker_env"),
            (&[("CCGATE_MAX_IMAGE_BYTES", "0")], "max_image_bytes"),
        ];
        for (vars, name) in cases {
            let err = Settings::load(None, env(vars), vec![]).unwrap_err();
            assert!(err.to_string().contains(name), "{vars:?}: {err}");
        }
    }

    #[test]
    fn optional_settings_can_be_set_from_env() {
        let settings =
            Settings::load(None, env(&[("CCGATE_ADMIN_KEY", "0123456789abcdef0123")]), vec![]).unwrap();
        assert_eq!(settings.admin_key.as_deref(), Some("0123456789abcdef0123"));
    }
}
