//! Warm CLI processes: started ahead of demand with `--input-format
//! stream-json`, each serves many requests, one at a time, and is reset
//! with `/clear` between them. A process is fixed at start to a *profile*
//! (model, system prompt, output cap), so processes are pooled per profile.
//!
//! A request whose profile has an idle process runs on it; any other runs
//! on a cold `claude -p` (the fallback) while a warm process for its
//! profile starts in the background, so the warm set follows demand. The
//! number of live warm processes is bounded by a memory budget, measured
//! from their resident sizes; at the bound, an idle process of another
//! profile is retired to make room, but only for a profile in demand: one
//! that has processes already, or missed before within the idle timeout. A
//! profile seen once (a system prompt that differs on every request, as
//! with retrieved context) takes free room at most, and never displaces a
//! process that others use. A process is replaced when it dies,
//! stalls, or has served `max_requests`, and retired when idle too long.
//!
//! Cost: a warm process reports `total_cost_usd` cumulatively over its
//! life, so a request's cost is the difference between the total after its
//! result and the total before it started.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cli::{through_gate, write_line, ClaudeCli, Conversation, Group, Output};
use super::gate::Ticket;
use super::stream_json::{parse_line, CliLine};
use super::{Event, Job, RunEnd, RunReport, Worker};
use crate::money::Micros;
use crate::pricing::TokenUsage;

/// System prompts longer than this are not warmed: the cold path passes
/// them through a file, which a long-lived process would have to keep.
const MAX_WARM_SYSTEM_PROMPT: usize = 32 * 1024;
/// Profiles remembered for having missed once; past this, the old ones are
/// forgotten.
const MAX_MISSED: usize = 4096;
/// How long a new process may take to answer its `initialize` request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `/clear` may take (it makes no upstream call).
const CLEAR_TIMEOUT: Duration = Duration::from_secs(10);
/// What a process is assumed to take before one has been measured
/// (../shared/CLAUDE_CLI.md measured about 310 MB).
const DEFAULT_PROCESS_BYTES: u64 = 320 * 1024 * 1024;

/// How the warm pool is sized and when processes are replaced.
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// The resident memory all warm processes together may use.
    pub memory_budget_bytes: u64,
    /// Requests one process serves before it is replaced.
    pub max_requests: u32,
    /// An idle process is retired after this long.
    pub idle_timeout: Duration,
    /// Models to start one process for at start-up (no system prompt).
    pub prestart: Vec<String>,
}

/// What a warm process is fixed to when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Profile {
    model: String,
    system_prompt: Option<String>,
    /// The output cap and thinking budget, which go in its environment.
    output: Output,
    /// The response schema (`--json-schema`), as JSON.
    output_schema: Option<String>,
}

impl Profile {
    fn of(job: &Job) -> Profile {
        Profile {
            model: job.model.clone(),
            system_prompt: job.system_prompt.clone(),
            output: Output::of(job),
            output_schema: job.output_schema.as_ref().map(ToString::to_string),
        }
    }
}

/// One pre-started CLI process, owned by whoever holds it (the idle list
/// or the one request it serves), so it is never shared.
struct WarmProcess {
    group: Group,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// The cumulative cost the process reported last.
    total_cost: Micros,
    served: u32,
    idle_since: Instant,
    /// Its address at the spend gate, when the gate is on.
    ticket: Option<Ticket>,
}

/// Counters for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct WarmStats {
    /// Requests served by a warm process.
    pub hits: AtomicU64,
    /// Requests that found no warm process for their profile and ran cold.
    pub misses: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WarmState {
    /// Live warm processes (idle, busy or starting).
    pub processes: usize,
    pub idle: usize,
    /// Profiles (model, system prompt, output cap, schema) with a live process.
    pub profiles: usize,
    pub memory_budget_bytes: u64,
    /// Resident memory of the live warm processes, as last measured.
    pub resident_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

pub struct WarmPool {
    cold: Arc<ClaudeCli>,
    settings: WarmSettings,
    idle: Mutex<HashMap<Profile, Vec<WarmProcess>>>,
    /// Live processes: idle, busy or starting. Counted on start, uncounted
    /// when the process is dropped for good.
    live: AtomicUsize,
    /// Processes starting or being reset, per profile: a request finds
    /// them worth waiting for (milliseconds) rather than running cold.
    coming: Mutex<HashMap<Profile, usize>>,
    /// Signalled whenever a coming process arrives or is given up.
    arrived: tokio::sync::Notify,
    /// Pids of live processes, for measuring memory.
    pids: Mutex<HashMap<i32, Profile>>,
    /// The largest resident size seen of one process.
    process_bytes: AtomicU64,
    /// When each profile (by hash) last ran cold for want of a process.
    missed: Mutex<HashMap<u64, Instant>>,
    stats: Arc<WarmStats>,
    shutdown: CancellationToken,
    me: Weak<WarmPool>,
}

impl WarmPool {
    pub fn new(cold: Arc<ClaudeCli>, settings: WarmSettings) -> Arc<WarmPool> {
        let pool = Arc::new_cyclic(|me| WarmPool {
            cold,
            settings,
            idle: Mutex::new(HashMap::new()),
            coming: Mutex::new(HashMap::new()),
            arrived: tokio::sync::Notify::new(),
            live: AtomicUsize::new(0),
            pids: Mutex::new(HashMap::new()),
            process_bytes: AtomicU64::new(DEFAULT_PROCESS_BYTES),
            missed: Mutex::new(HashMap::new()),
            stats: Arc::new(WarmStats::default()),
            shutdown: CancellationToken::new(),
            me: me.clone(),
        });
        for model in pool.settings.prestart.clone() {
            let profile = Profile { model, system_prompt: None, output: Output::PLAIN, output_schema: None };
            pool.grow(profile, true);
        }
        let reaper = Arc::downgrade(&pool);
        let every =
            (pool.settings.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = reaper.upgrade() else { return };
                if pool.shutdown.is_cancelled() {
                    return;
                }
                pool.retire_idle();
            }
        });
        pool
    }

    pub fn state(&self) -> WarmState {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum();
        let profiles = {
            let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
            pids.values().collect::<std::collections::HashSet<_>>().len()
        };
        WarmState {
            processes: self.live.load(Ordering::Relaxed),
            idle,
            profiles,
            memory_budget_bytes: self.settings.memory_budget_bytes,
            resident_bytes: self.resident_bytes(),
            hits: self.stats.hits.load(Ordering::Relaxed),
            misses: self.stats.misses.load(Ordering::Relaxed),
        }
    }

    /// The process ids of the idle processes.
    pub fn idle_pids(&self) -> Vec<u32> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values()
            .flatten()
            .filter_map(|p| p.group.pid())
            .filter_map(|pid| u32::try_from(pid).ok())
            .collect()
    }

    /// Ends every idle process; busy ones end with their requests.
    pub fn close(&self) {
        self.shutdown.cancel();
        let drained: Vec<WarmProcess> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.drain().flat_map(|(_, v)| v).collect()
        };
        for process in drained {
            self.discard(process);
        }
    }

    /// Takes an idle, still living process for the profile (the most
    /// recently used, so a burst's extra processes are the ones that age out).
    fn take(&self, profile: &Profile) -> Option<WarmProcess> {
        loop {
            let process = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(profile)?.pop()?
            };
            let mut process = process;
            if !process.group.has_exited() {
                return Some(process);
            }
            self.discard(process);
        }
    }

    fn expect(&self, profile: &Profile) {
        *self.coming.lock().unwrap_or_else(|e| e.into_inner()).entry(profile.clone()).or_default() += 1;
    }

    /// A process that was coming has arrived (or will not).
    fn arrive(&self, profile: &Profile) {
        {
            let mut coming = self.coming.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = coming.get_mut(profile) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    coming.remove(profile);
                }
            }
        }
        self.arrived.notify_waiters();
    }

    fn is_coming(&self, profile: &Profile) -> bool {
        self.coming.lock().unwrap_or_else(|e| e.into_inner()).contains_key(profile)
    }

    /// An idle process for the profile, waiting for one that is starting
    /// or being reset if there is one.
    async fn acquire(&self, profile: &Profile, deadline: tokio::time::Instant) -> Option<WarmProcess> {
        let give_up = deadline.min(tokio::time::Instant::now() + START_TIMEOUT);
        loop {
            // Registered before looking, so an arrival in between is not missed.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(process) = self.take(profile) {
                return Some(process);
            }
            if !self.is_coming(profile) {
                return None;
            }
            if tokio::time::timeout_at(give_up, arrived).await.is_err() {
                return None;
            }
        }
    }

    fn put_back(&self, mut process: WarmProcess, profile: Profile) {
        if self.shutdown.is_cancelled() {
            self.discard(process);
            return;
        }
        process.idle_since = Instant::now();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).entry(profile).or_default().push(process);
    }

    /// Ends a process for good (the group is killed when it drops).
    fn discard(&self, process: WarmProcess) {
        if let Some(pid) = process.group.pid() {
            self.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        }
        // Killed and reaped in the background, so no zombie is left.
        let mut group = process.group;
        tokio::spawn(async move { group.finish().await });
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    fn retire_idle(&self) {
        let expired: Vec<WarmProcess> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut expired = Vec::new();
            for list in idle.values_mut() {
                let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|p| p.idle_since.elapsed() >= self.settings.idle_timeout);
                *list = keep;
                expired.extend(old);
            }
            idle.retain(|_, list| !list.is_empty());
            expired
        };
        for process in expired {
            self.discard(process);
        }
    }

    /// The resident memory of the live processes (their group leaders; the
    /// CLI does its work in one process).
    fn resident_bytes(&self) -> u64 {
        let pids: Vec<i32> = self.pids.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        pids.into_iter().filter_map(resident_bytes_of).sum()
    }

    /// Whether one more process fits the memory budget; if not and
    /// `may_retire`, retires the longest-idle process of another profile
    /// to make room.
    fn make_room(&self, profile: &Profile, may_retire: bool) -> bool {
        let one = self.process_bytes.load(Ordering::Relaxed);
        let live = self.live.load(Ordering::Relaxed) as u64;
        if (live + 1) * one <= self.settings.memory_budget_bytes {
            return true;
        }
        if !may_retire {
            return false;
        }
        let victim = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let oldest = idle
                .iter()
                .filter(|(p, list)| *p != profile && !list.is_empty())
                .min_by_key(|(_, list)| list.first().map(|p| p.idle_since))
                .map(|(p, _)| p.clone());
            oldest.and_then(|p| {
                let list = idle.get_mut(&p)?;
                let victim = (!list.is_empty()).then(|| list.remove(0));
                if list.is_empty() {
                    idle.remove(&p);
                }
                victim
            })
        };
        match victim {
            Some(victim) => {
                self.discard(victim);
                true
            }
            None => false,
        }
    }

    /// Whether a profile that just missed is in demand: it has processes
    /// (all busy or starting), or missed before within the idle timeout.
    /// Remembers this miss.
    fn in_demand(&self, profile: &Profile) -> bool {
        if self.pids.lock().unwrap_or_else(|e| e.into_inner()).values().any(|p| p == profile) {
            return true;
        }
        let key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            profile.hash(&mut hasher);
            hasher.finish()
        };
        let now = Instant::now();
        let window = self.settings.idle_timeout;
        let mut missed = self.missed.lock().unwrap_or_else(|e| e.into_inner());
        if missed.len() >= MAX_MISSED {
            missed.retain(|_, at| now.duration_since(*at) < window);
            if missed.len() >= MAX_MISSED {
                missed.clear();
            }
        }
        missed.insert(key, now).is_some_and(|at| now.duration_since(at) < window)
    }

    /// Starts a process for the profile in the background, if it fits
    /// (retiring another profile's idle process if `may_retire`).
    fn grow(&self, profile: Profile, may_retire: bool) {
        if self.shutdown.is_cancelled()
            || profile.system_prompt.as_ref().is_some_and(|s| s.len() > MAX_WARM_SYSTEM_PROMPT)
            || !self.make_room(&profile, may_retire)
        {
            return;
        }
        let Some(pool) = self.me.upgrade() else { return };
        self.live.fetch_add(1, Ordering::Relaxed);
        self.expect(&profile);
        tokio::spawn(async move {
            let started = pool.start(&profile).await;
            match started {
                Ok(process) => {
                    pool.put_back(process, profile.clone());
                    pool.arrive(&profile);
                }
                Err(e) => {
                    pool.arrive(&profile);
                    pool.live.fetch_sub(1, Ordering::Relaxed);
                    pool.cold.stats.spawn_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %profile.model, error = %e, "a warm worker did not start");
                }
            }
        });
    }

    /// Starts a process and waits until it answers `initialize`.
    async fn start(&self, profile: &Profile) -> anyhow::Result<WarmProcess> {
        let mut cmd = self.cold.base_command(&profile.model, profile.output);
        cmd.args(["--input-format", "stream-json"]);
        if let Some(system) = &profile.system_prompt {
            cmd.args(["--system-prompt", system]);
        }
        if let Some(schema) = &profile.output_schema {
            cmd.args(["--json-schema", schema]);
        }
        let ticket = self.cold.gate.as_ref().map(|gate| gate.ticket());
        if let Some(ticket) = &ticket {
            through_gate(&mut cmd, ticket);
        }
        let mut child = cmd.spawn()?;
        self.cold.stats.spawned.fetch_add(1, Ordering::Relaxed);
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let group = Group::new(child, Arc::clone(&self.cold.stats));
        let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
            anyhow::bail!("the CLI's pipes were not opened");
        };
        if let Some(mut stderr) = stderr {
            // Nobody reads a warm process's stderr line by line; draining it
            // keeps a chatty CLI from blocking on a full pipe.
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stderr.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
        let mut lines = BufReader::new(stdout).lines();
        let request = r#"{"type":"control_request","request_id":"init","request":{"subtype":"initialize"}}"#;
        write_line(&mut stdin, request).await?;
        tokio::time::timeout(START_TIMEOUT, async {
            loop {
                match lines.next_line().await? {
                    Some(line) if line.contains("\"control_response\"") => return Ok(()),
                    Some(_) => {}
                    None => anyhow::bail!("the CLI exited while starting"),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the CLI did not answer initialize within {START_TIMEOUT:?}"))??;
        if let Some(pid) = group.pid() {
            self.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(pid, profile.clone());
            if let Some(bytes) = resident_bytes_of(pid) {
                self.process_bytes.fetch_max(bytes, Ordering::Relaxed);
            }
        }
        Ok(WarmProcess {
            group,
            stdin,
            lines,
            total_cost: Micros::ZERO,
            served: 0,
            idle_since: Instant::now(),
            ticket,
        })
    }

    /// Runs one job on a warm process. Returns the report, and whether the
    /// process can serve again.
    async fn serve(
        &self,
        process: &mut WarmProcess,
        job: &Job,
        events: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
    ) -> (RunReport, bool) {
        let conversation = Conversation {
            stdin: &mut process.stdin,
            lines: &mut process.lines,
            stall_timeout: self.cold.stall_timeout,
            stats: &self.cold.stats,
            ticket: process.ticket.as_ref(),
        };
        let (state, end) = conversation.run(job, events, cancel).await;
        let mut report = state.report;
        if report.reported_cost.is_none() || report.usage == TokenUsage::default() {
            report.usage = state.stream_usage;
        }
        report.end = end;
        if !matches!(report.end, RunEnd::Completed | RunEnd::Failed { .. }) {
            // Killed mid-request: its cost is unknown to the CLI's totals we
            // can read, so chat prices the streamed usage instead.
            report.reported_cost = None;
            return (report, false);
        }
        // The process reports its running total: this request's cost is
        // what the total grew by.
        if let Some(total) = report.reported_cost {
            report.reported_cost = Some(Micros(total.0.saturating_sub(process.total_cost.0)));
            process.total_cost = total;
        }
        process.served += 1;
        (report, true)
    }

    /// Resets a process with `/clear` and returns it to the idle list, or
    /// replaces it when it has served enough or did not reset cleanly.
    async fn recycle(self: Arc<Self>, mut process: WarmProcess, profile: Profile) {
        if process.served >= self.settings.max_requests {
            self.discard(process);
            self.grow(profile.clone(), true);
            self.arrive(&profile);
            return;
        }
        let clear = r#"{"type":"user","message":{"role":"user","content":"/clear"}}"#;
        let cleared = tokio::time::timeout(CLEAR_TIMEOUT, async {
            write_line(&mut process.stdin, clear).await.ok()?;
            loop {
                let line = process.lines.next_line().await.ok()??;
                if let Some(CliLine::Result(result)) = parse_line(&line) {
                    return Some(Micros::from_usd(result.total_cost_usd));
                }
            }
        })
        .await
        .ok()
        .flatten();
        match cleared {
            Some(total) => {
                // `/clear` makes no upstream call; should the total still
                // have moved, the growth is not lost but taken as the
                // new baseline for the next request.
                process.total_cost = process.total_cost.max(total);
                self.put_back(process, profile.clone());
                self.arrive(&profile);
            }
            None => {
                self.discard(process);
                self.grow(profile.clone(), true);
                self.arrive(&profile);
            }
        }
    }
}

#[async_trait]
impl Worker for WarmPool {
    async fn run(&self, job: Job, events: mpsc::Sender<Event>, cancel: CancellationToken) -> RunReport {
        if job.agent.is_some() {
            // Agents need their own flags, directory and session: always cold.
            return self.cold.run(job, events, cancel).await;
        }
        let profile = Profile::of(&job);
        let Some(mut process) = self.acquire(&profile, job.deadline).await else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let in_demand = self.in_demand(&profile);
            self.grow(profile, in_demand);
            return self.cold.run(job, events, cancel).await;
        };
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let (report, reusable) = self.serve(&mut process, &job, &events, &cancel).await;
        if reusable {
            // Sent before the reset, so the client need not wait for it.
            let _ = events.send(Event::Finished(Box::new(report.clone()))).await;
        }
        // A process that died before it read the request (say, while it
        // sat idle) cost nothing and showed nothing: the request runs cold.
        let unstarted = report.session_id.is_none() && report.first_token_at.is_none();
        if matches!(report.end, RunEnd::Crashed { .. }) && unstarted {
            self.discard(process);
            self.grow(profile, true);
            return self.cold.run(job, events, cancel).await;
        }
        match self.me.upgrade() {
            Some(pool) if reusable => {
                self.expect(&profile);
                tokio::spawn(pool.recycle(process, profile));
            }
            _ => {
                // Killed mid-request (deadline, stall, disconnect) or dead:
                // replaced by a fresh one.
                self.discard(process);
                self.grow(profile, true);
            }
        }
        report
    }
}

/// The resident set size of a process, from /proc (Linux).
fn resident_bytes_of(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
