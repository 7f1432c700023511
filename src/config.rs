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
    /// `text` (human-readable) or `json` log lines.
    pub log_format: LogFormat,
    /// How long a crashed instance's reservations are held before another
    /// instance releases them, in seconds (heartbeats come every third of it).
    pub instance_ttl_secs: u64,
    /// Times the CLI itself retries a failed upstream call (429, 529,
    /// connection errors) before it reports the error.
    pub cli_max_retries: u32,
    /// Extra environment variables for workers (for example
    /// ANTHROPIC_BASE_URL), on top of the gateway's own environment.
    pub worker_env: BTreeMap<String, String>,
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
            log_format: LogFormat::Text,
            instance_ttl_secs: 30,
            cli_max_retries: 2,
            worker_env: BTreeMap::new(),
            default_rpm_limit: None,
            default_tpm_limit: None,
            default_max_concurrent: None,
            metrics_token: None,
            log_prompts: false,
            client_body_timeout_secs: 30,
            batch_pool_share: 0.5,
            batch_max_tasks: 1000,
            batch_max_file_lines: 50_000,
            batch_max_body_bytes: 64 * 1024 * 1024,
            warm_pool: true,
            warm_memory_mb: 2048,
            warm_max_requests: 200,
            warm_idle_secs: 300,
            warm_prestart: Vec::new(),
            routing: ccgate_router::RouterConfig::default(),
            routing_policies: BTreeMap::new(),
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

        let env: BTreeMap<String, String> = env.into_iter().collect();
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
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return invalid("database_url", "must start with sqlite: or postgres://");
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

/// The names of every top-level setting, taken from the struct itself so the
/// list cannot drift from it.
fn known_settings() -> Vec<String> {
    let mut names: Vec<String> =
        toml::Table::try_from(Settings::default()).map(|t| t.keys().cloned().collect()).unwrap_or_default();
    // Optional settings are absent from the serialized defaults.
    names.extend(["admin_key", "prices_file", "metrics_token"].map(String::from));
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
        _ => Some(toml::Value::String(raw.to_string())),
    }
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
    fn optional_settings_can_be_set_from_env() {
        let settings =
            Settings::load(None, env(&[("CCGATE_ADMIN_KEY", "0123456789abcdef0123")]), vec![]).unwrap();
        assert_eq!(settings.admin_key.as_deref(), Some("0123456789abcdef0123"));
    }
}
