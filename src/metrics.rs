//! Prometheus metrics: what the gateway counts and how `/metrics` renders
//! it (OpenMetrics text, which Prometheus scrapes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::workers::warm::WarmState;
use crate::workers::{PoolState, PoolStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    pub project: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub project: String,
    pub model: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub project: String,
    pub period: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub model: String,
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to ~164 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

fn overhead_histogram() -> Histogram {
    // 50 µs to ~3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<RouteLabels>,
    pub runs: Family<RunLabels, Counter>,
    pub run_seconds: HistogramFamily<ModelLabels>,
    pub ttft_seconds: HistogramFamily<ModelLabels>,
    pub overhead_seconds: Histogram,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_usd: Family<UsageLabels, Counter<f64, AtomicU64>>,
    /// What runs cost past their reservations (see `observe_overrun`).
    pub overrun_usd: Family<UsageLabels, Counter<f64, AtomicU64>>,
    pub budget_remaining_usd: Family<BudgetLabels, Gauge<f64, AtomicU64>>,
    workers: Family<WorkerLabels, Gauge>,
    worker_events: Family<WorkerEventLabels, Counter>,
    warm_processes: Family<StateLabels, Gauge>,
    warm_resident_bytes: Gauge,
    warm_requests: Family<ResultLabels, Counter>,
    /// Serialises scrapes, which bring the worker counters up to date.
    scrape: Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    /// `cli` or `api` (the direct backend's pool).
    backend: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerEventLabels {
    event: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ccgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method, status and model",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by route (for streams: to the first token)",
            request_seconds.clone(),
        );
        let runs = Family::<RunLabels, Counter>::default();
        registry.register("runs", "Chat runs by model and outcome", runs.clone());
        let run_seconds: HistogramFamily<ModelLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "run_duration_seconds",
            "Whole run latency, request to answer",
            run_seconds.clone(),
        );
        let ttft_seconds: HistogramFamily<ModelLabels> = Family::new_with_constructor(latency_histogram);
        registry.register("time_to_first_token_seconds", "Request to first token", ttft_seconds.clone());
        let overhead_seconds = overhead_histogram();
        registry.register(
            "gateway_overhead_seconds",
            "Latency the gateway adds around a run: before the worker starts (validation, budget, queue) \
             and after it reports (answer dispatch)",
            overhead_seconds.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens by project, model and direction (input/output)", tokens.clone());
        let cost_usd = Family::<UsageLabels, Counter<f64, AtomicU64>>::default();
        registry.register("cost_usd", "Cost by project and model, in USD", cost_usd.clone());
        let overrun_usd = Family::<UsageLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "reservation_overrun_usd",
            "What runs cost past their budget reservations, by project and model, in USD (charged in full: \
             when the upstream reports more input than the bound a request or a call was priced with, or, \
             with spend_gate off, when Claude Code makes a call past its run's reservation)",
            overrun_usd.clone(),
        );
        let budget_remaining_usd = Family::<BudgetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_remaining_usd",
            "Remaining budget per project and limited period, at scrape time",
            budget_remaining_usd.clone(),
        );
        let workers = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "workers",
            "Worker pool slots by backend (cli, api) and state (busy, idle), and queued requests",
            workers.clone(),
        );
        let worker_events = Family::<WorkerEventLabels, Counter>::default();
        registry.register(
            "worker_events",
            "Worker process spawns, kills, timeouts, stalls, spawn failures, and calls the spend gate refused",
            worker_events.clone(),
        );
        let warm_processes = Family::<StateLabels, Gauge>::default();
        registry.register(
            "warm_processes",
            "Warm CLI processes: live (idle, busy or starting) and idle",
            warm_processes.clone(),
        );
        let warm_resident_bytes = Gauge::default();
        registry.register(
            "warm_resident_bytes",
            "Resident memory of the live warm CLI processes",
            warm_resident_bytes.clone(),
        );
        let warm_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "warm_requests",
            "CLI requests that found a warm process (hit) or ran cold (miss)",
            warm_requests.clone(),
        );
        Metrics {
            registry,
            warm_processes,
            warm_resident_bytes,
            warm_requests,
            requests,
            request_seconds,
            runs,
            run_seconds,
            ttft_seconds,
            overhead_seconds,
            tokens,
            cost_usd,
            overrun_usd,
            budget_remaining_usd,
            workers,
            worker_events,
            scrape: Mutex::new(()),
        }
    }

    /// Records one finished chat run.
    #[allow(clippy::too_many_arguments)]
    pub fn observe_run(
        &self,
        project: &str,
        model: &str,
        outcome: &str,
        latency: Duration,
        ttft: Option<Duration>,
        overhead: Option<Duration>,
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: f64,
    ) {
        let model_label = ModelLabels { model: model.to_string() };
        self.runs.get_or_create(&RunLabels { model: model.to_string(), outcome: outcome.to_string() }).inc();
        self.run_seconds.get_or_create(&model_label).observe(latency.as_secs_f64());
        if let Some(ttft) = ttft {
            self.ttft_seconds.get_or_create(&model_label).observe(ttft.as_secs_f64());
        }
        if let Some(overhead) = overhead {
            self.overhead_seconds.observe(overhead.as_secs_f64());
        }
        for (direction, n) in [("input", input_tokens), ("output", output_tokens)] {
            let labels = TokenLabels { project: project.to_string(), model: model.to_string(), direction };
            self.tokens.get_or_create(&labels).inc_by(n);
        }
        self.cost_usd
            .get_or_create(&UsageLabels { project: project.to_string(), model: model.to_string() })
            .inc_by(cost_usd);
    }

    /// A run that cost more than it reserved: the reservation is meant to be
    /// an upper bound, so the excess is worth an operator's attention.
    pub fn observe_overrun(&self, project: &str, model: &str, excess_usd: f64) {
        self.overrun_usd
            .get_or_create(&UsageLabels { project: project.to_string(), model: model.to_string() })
            .inc_by(excess_usd);
    }

    /// Renders the registry, first bringing pool figures and budgets (given
    /// as `(project, period, remaining USD)`) up to date.
    pub fn render(
        &self,
        pools: &[(&'static str, PoolState)],
        stats: &PoolStats,
        warm: Option<&WarmState>,
        budgets: &[(String, &'static str, f64)],
    ) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for (backend, pool) in pools {
            for (state, n) in [("busy", pool.busy), ("idle", pool.idle), ("queued", pool.queued)] {
                self.workers.get_or_create(&WorkerLabels { backend, state }).set(n as i64);
            }
        }
        if let Some(warm) = warm {
            self.warm_processes.get_or_create(&StateLabels { state: "live" }).set(warm.processes as i64);
            self.warm_processes.get_or_create(&StateLabels { state: "idle" }).set(warm.idle as i64);
            self.warm_resident_bytes.set(i64::try_from(warm.resident_bytes).unwrap_or(i64::MAX));
            for (result, total) in [("hit", warm.hits), ("miss", warm.misses)] {
                let counter = self.warm_requests.get_or_create(&ResultLabels { result });
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let events = [
            ("spawn", &stats.spawned),
            ("kill", &stats.killed),
            ("timeout", &stats.timeouts),
            ("stall", &stats.stalls),
            ("spawn_failure", &stats.spawn_failures),
            ("gate_refusal", &stats.gate_refusals),
        ];
        for (event, source) in events {
            let counter = self.worker_events.get_or_create(&WorkerEventLabels { event });
            // The pool keeps plain atomics; scrapes are serialised, so the
            // difference is added exactly once.
            counter.inc_by(source.load(Ordering::Relaxed).saturating_sub(counter.get()));
        }
        self.budget_remaining_usd.clear();
        for (project, period, remaining) in budgets {
            self.budget_remaining_usd
                .get_or_create(&BudgetLabels { project: project.clone(), period })
                .set(*remaining);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("failed to encode metrics");
        }
        out
    }
}
