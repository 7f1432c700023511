//! `AppState`: the handles every request needs, built in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::batch::{fair, BatchControl};
use crate::budget::Budget;
use crate::clock::{Clock, SystemClock};
use crate::config::{Backend, ConfigError, Settings};
use crate::limits::{KeyLimits, RateLimiter};
use crate::metrics::Metrics;
use crate::pricing::{Model, PriceTable};
use crate::store::Store;
use crate::workers::anthropic::{AnthropicApi, ApiSettings};
use crate::workers::cli::{ClaudeCli, CliSettings};
use crate::workers::gate::SpendGate;
use crate::workers::warm::{WarmPool, WarmSettings};
use crate::workers::{PoolStats, Worker, WorkerPool};

/// Cloned for every request and by every middleware: one `Arc`, so a
/// clone is one atomic increment rather than one per handle.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub settings: Arc<Settings>,
    pub prices: Arc<PriceTable>,
    pub budget: Budget,
    /// The CLI pool (health, metrics and batch fair share read it).
    pub pool: Arc<WorkerPool>,
    /// The direct (Messages API) pool, when `backends` or `default_backend`
    /// names `api`; sized `api_max_concurrent`, apart from the CLI pool.
    pub api_pool: Option<Arc<WorkerPool>>,
    /// Wakes the batch runner and stops cancelled batches.
    pub batches: Arc<BatchControl>,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Background work that must finish before the process exits (run
    /// supervisors, ledger writes).
    pub tasks: TaskTracker,
    /// Running async tasks of this instance (to cancel them) and a signal
    /// for their event followers.
    pub task_control: Arc<crate::tasks::TaskControl>,
    /// The warm CLI processes, when `warm_pool` is on.
    pub warm: Option<Arc<WarmPool>>,
    /// Project keys recently read from the store.
    pub keys: crate::auth::KeyCache,
}

impl AppState {
    /// Builds the state from settings and an open store.
    pub fn new(settings: Settings, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
        let mut prices = match &settings.prices_file {
            Some(path) => PriceTable::load(path)?,
            None => PriceTable::builtin(),
        };
        prices
            .add_aliases(&settings.model_aliases)
            .map_err(|message| ConfigError::Invalid { name: "model_aliases".into(), message })?;
        std::fs::create_dir_all(&settings.work_dir)?;
        let stats = Arc::new(PoolStats::default());
        let gate = match settings.spend_gate {
            true => Some(Arc::new(SpendGate::start(
                &cli_upstream(&settings),
                Arc::new(prices.clone()),
                Arc::clone(&stats),
            )?)),
            false => None,
        };
        let cli = Arc::new(ClaudeCli::new(
            CliSettings {
                bin: resolve_bin(&settings.claude_bin),
                work_dir: settings.work_dir.clone(),
                stall_timeout: Duration::from_secs(settings.stall_timeout_secs),
                max_retries: settings.cli_max_retries,
                extra_env: settings.worker_env.clone(),
                passthrough: settings.worker_env_passthrough.clone(),
                gate,
            },
            Arc::clone(&stats),
        ));
        check_model_names(&settings, &prices)?;
        let api_pool = direct_pool(&settings, &prices)?;
        if !settings.warm_pool {
            let mut state = Shared::with_worker(settings, store, clock, prices, cli, stats);
            state.api_pool = api_pool;
            return Ok(AppState(Arc::new(state)));
        }
        // Prestarted processes are fixed to a model's CLI name, as jobs are.
        let prestart = settings
            .warm_prestart
            .iter()
            .map(|name| match prices.resolve(name) {
                Some(model) => Ok(model.cli_name().to_string()),
                None => anyhow::bail!("warm_prestart: unknown model {name:?}"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let warm = WarmPool::new(
            cli,
            WarmSettings {
                memory_budget_bytes: settings.warm_memory_mb * 1024 * 1024,
                max_requests: settings.warm_max_requests,
                idle_timeout: Duration::from_secs(settings.warm_idle_secs),
                prestart,
            },
        );
        let mut state =
            Shared::with_worker(settings, store, clock, prices, Arc::clone(&warm) as Arc<dyn Worker>, stats);
        state.warm = Some(warm);
        state.api_pool = api_pool;
        Ok(AppState(Arc::new(state)))
    }

    /// The pool whose backend serves `model`. A model configured for `api`
    /// always has a pool: start-up builds it whenever one is configured.
    pub fn pool_for(&self, model: &Model) -> &Arc<WorkerPool> {
        match (self.settings.backend_for(&model.id, &model.aliases), &self.api_pool) {
            (Backend::Api, Some(pool)) => pool,
            _ => &self.pool,
        }
    }

    /// The pool a request naming `model` runs on, known before the request
    /// is resolved: `auto` (which the router settles later), and a name the
    /// price table does not know (which will be refused), take the default
    /// backend's.
    pub fn pool_for_name(&self, model: &str) -> &Arc<WorkerPool> {
        match self.prices.resolve(model) {
            Some(model) => self.pool_for(model),
            None => match (Backend::parse(&self.settings.default_backend), &self.api_pool) {
                (Some(Backend::Api), Some(pool)) => pool,
                _ => &self.pool,
            },
        }
    }

    /// The most batch slots any pool has: how many of a batch's requests
    /// may be under way at once.
    pub fn most_batch_slots(&self) -> usize {
        self.pools().map(|pool| pool.state().batch_slots).max().unwrap_or(1).max(1)
    }

    /// Every pool, for shutdown.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<WorkerPool>> {
        std::iter::once(&self.pool).chain(self.api_pool.as_ref())
    }

    pub fn with_worker(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        prices: PriceTable,
        worker: Arc<dyn Worker>,
        stats: Arc<PoolStats>,
    ) -> AppState {
        AppState(Arc::new(Shared::with_worker(settings, store, clock, prices, worker, stats)))
    }

    pub fn system_clock() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }
}

impl Shared {
    fn with_worker(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        prices: PriceTable,
        worker: Arc<dyn Worker>,
        stats: Arc<PoolStats>,
    ) -> Shared {
        let instance_id = format!("gw-{}", uuid::Uuid::new_v4().simple());
        // A reservation outlives its request only if its owner died; give
        // the request its whole deadline plus time to settle.
        let ttl = Duration::from_secs(settings.request_timeout_secs * 2 + 60);
        let limiter = Arc::new(RateLimiter::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            KeyLimits {
                rpm: settings.default_rpm_limit,
                tpm: settings.default_tpm_limit,
                concurrent: settings.default_max_concurrent,
            },
            // Several instances share a PostgreSQL database, and so its windows.
            !crate::store::is_sqlite_url(&settings.database_url),
        ));
        let budget = Budget::new(store, clock, instance_id, ttl);
        let pool = Arc::new(
            WorkerPool::new(worker, settings.pool_size, settings.queue_limit, stats)
                .with_batch_slots(fair::share_slots(settings.pool_size, settings.batch_pool_share)),
        );
        Shared {
            settings: Arc::new(settings),
            prices: Arc::new(prices),
            budget,
            pool,
            api_pool: None,
            batches: Arc::new(BatchControl::default()),
            limiter,
            metrics: Arc::new(Metrics::new()),
            tasks: TaskTracker::new(),
            task_control: Arc::new(crate::tasks::TaskControl::default()),
            warm: None,
            keys: crate::auth::KeyCache::default(),
        }
    }
}

/// The upstream Claude Code workers call: the one their environment names
/// (`worker_env`, else the gateway's own), else `anthropic_base_url`.
fn cli_upstream(settings: &Settings) -> String {
    settings
        .worker_env
        .get("ANTHROPIC_BASE_URL")
        .cloned()
        .or_else(|| std::env::var("ANTHROPIC_BASE_URL").ok())
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| settings.anthropic_base_url.clone())
}

/// The direct backend's pool, if any model uses it.
fn direct_pool(settings: &Settings, prices: &PriceTable) -> anyhow::Result<Option<Arc<WorkerPool>>> {
    if !settings.uses_api() {
        return Ok(None);
    }
    // Settings validation refuses an api backend without a key.
    let Some(api_key) = settings.anthropic_api_key.clone() else {
        anyhow::bail!(
            "invalid setting anthropic_api_key: must be set when a model is served by the api backend"
        );
    };
    let stats = Arc::new(PoolStats::default());
    let worker = AnthropicApi::new(
        ApiSettings {
            base_url: settings.anthropic_base_url.clone(),
            api_key,
            stall_timeout: Duration::from_secs(settings.stall_timeout_secs),
            max_retries: settings.api_max_retries,
            max_concurrent: settings.api_max_concurrent,
        },
        prices,
        Arc::clone(&stats),
    )?;
    let size = settings.api_max_concurrent;
    // Waiting for a direct slot is as cheap as waiting for a CLI one, so the
    // queue is as deep as the CLI's, past the pool itself.
    let pool = WorkerPool::new(Arc::new(worker), size, settings.queue_limit, stats)
        .with_batch_slots(fair::share_slots(size, settings.batch_pool_share));
    Ok(Some(Arc::new(pool)))
}

/// `backends` and `fallback_models` may only name models the price table
/// knows, or a typo would silently fall back to the default.
fn check_model_names(settings: &Settings, prices: &PriceTable) -> Result<(), ConfigError> {
    let named = [
        ("backends", settings.backends.keys().collect::<Vec<_>>()),
        ("fallback_models", settings.fallback_models.iter().flat_map(|(k, v)| [k, v]).collect()),
    ];
    for (setting, names) in named {
        if let Some(unknown) = names.into_iter().find(|name| prices.resolve(name).is_none()) {
            return Err(ConfigError::Invalid {
                name: setting.into(),
                message: format!("the price table has no model {unknown:?}"),
            });
        }
    }
    Ok(())
}

/// Looks a bare command name up on PATH once, so that errors name the file
/// that was tried and each spawn skips the search.
pub fn resolve_bin(bin: &str) -> PathBuf {
    if bin.contains('/') {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(bin)).find(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from(bin))
}
