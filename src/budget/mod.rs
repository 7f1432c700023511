//! Budgets: reserve an upper bound before work starts, settle to the actual
//! cost when it ends, and release what crashed instances left reserved.
//! It knows nothing of workers; amounts are integer micro-dollars.

pub mod period;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::Clock;
use crate::money::Micros;
use crate::store::{
    Completion, LedgerEntry, ModelUsage, NewReservation, PeriodKind, PeriodSlot, ReserveOutcome, Store,
    StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "project {project:?} has exhausted its {period} budget: limit ${limit:.6}, spent ${spent:.6}, \
         reserved by requests in flight ${reserved:.6}, this request may cost up to ${needed:.6}; \
         the {period} period resets at {resets_at}"
    )]
    Exhausted {
        project: String,
        period: &'static str,
        limit: f64,
        spent: f64,
        reserved: f64,
        needed: f64,
        resets_at: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a request asks to reserve.
#[derive(Debug, Clone)]
pub struct ReservationRequest {
    pub request_id: String,
    pub project_id: String,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub model_requested: Option<String>,
    pub model_used: Option<String>,
    pub amount: Micros,
}

/// A held reservation. Whoever holds it must settle it; if the process dies
/// first, crash recovery in another (or the next) instance releases it.
#[derive(Debug, Clone)]
#[must_use = "a reservation must be settled"]
pub struct Reservation {
    pub request_id: String,
    pub amount: Micros,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodUsage {
    pub project_id: String,
    pub period: PeriodKind,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub limit: Option<Micros>,
    pub spent: Micros,
    pub reserved: Micros,
    pub by_model: Vec<ModelUsage>,
}

impl PeriodUsage {
    pub fn remaining(&self) -> Option<Micros> {
        self.limit.map(|l| Micros(l.0.saturating_sub(self.spent.0).saturating_sub(self.reserved.0).max(0)))
    }
}

#[derive(Clone)]
pub struct Budget {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    instance_id: String,
    reservation_ttl: Duration,
}

impl Budget {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        instance_id: String,
        reservation_ttl: Duration,
    ) -> Budget {
        Budget { store, clock, instance_id, reservation_ttl }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Reserves `amount` against every period of the project, atomically.
    pub async fn reserve(&self, request: ReservationRequest) -> Result<Reservation, BudgetError> {
        let now = self.clock.now();
        let periods =
            PeriodKind::ALL.map(|kind| PeriodSlot { kind, start: period::bounds(kind, now).0.timestamp() });
        let new = NewReservation {
            request_id: request.request_id.clone(),
            created_at_ms: now.timestamp_millis(),
            project_id: request.project_id.clone(),
            key_id: request.key_id,
            endpoint: request.endpoint,
            model_requested: request.model_requested,
            model_used: request.model_used,
            amount: request.amount,
            periods,
            owner: self.instance_id.clone(),
            expires_at_ms: now.timestamp_millis() + self.reservation_ttl.as_millis() as i64,
        };
        match self.store.reserve(&new).await? {
            ReserveOutcome::Reserved => {
                Ok(Reservation { request_id: request.request_id, amount: request.amount })
            }
            ReserveOutcome::Exhausted { kind, limit, spent, reserved, .. } => Err(BudgetError::Exhausted {
                project: request.project_id,
                period: match kind {
                    PeriodKind::Day => "daily",
                    PeriodKind::Week => "weekly",
                    PeriodKind::Month => "monthly",
                },
                limit: limit.as_usd(),
                spent: spent.as_usd(),
                reserved: reserved.as_usd(),
                needed: request.amount.as_usd(),
                resets_at: period::bounds(kind, now).1.to_rfc3339(),
            }),
        }
    }

    /// Settles a reservation to what the request really cost.
    pub async fn settle(
        &self,
        reservation: Reservation,
        mut completion: Completion,
    ) -> Result<bool, BudgetError> {
        completion.finished_at_ms = self.clock.now_ms();
        Ok(self.store.settle(&reservation.request_id, &completion).await?)
    }

    /// Writes the ledger row of a request that never held a reservation.
    pub async fn record(&self, mut entry: LedgerEntry) -> Result<(), BudgetError> {
        entry.completion.finished_at_ms = self.clock.now_ms();
        Ok(self.store.record(&entry).await?)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub async fn usage(&self, project_id: &str, kind: PeriodKind) -> Result<PeriodUsage, BudgetError> {
        let Some(project) = self.store.get_project(project_id).await? else {
            return Err(StoreError::NotFound(format!("project {project_id:?} not found")).into());
        };
        let (start, end) = period::bounds(kind, self.clock.now());
        let totals = self.store.period_totals(project_id, kind, start.timestamp()).await?;
        let by_model =
            self.store.usage_by_model(project_id, start.timestamp_millis(), end.timestamp_millis()).await?;
        Ok(PeriodUsage {
            project_id: project_id.to_string(),
            period: kind,
            period_start: start,
            period_end: end,
            limit: project.limits.get(kind),
            spent: totals.spent,
            reserved: totals.reserved,
            by_model,
        })
    }

    /// The tightest remaining amount across the project's limited periods,
    /// with the limit it belongs to; `None` when nothing is limited.
    pub async fn headroom(&self, project_id: &str) -> Result<Option<(Micros, Micros)>, BudgetError> {
        let mut tightest: Option<(Micros, Micros)> = None;
        for kind in PeriodKind::ALL {
            let usage = self.usage(project_id, kind).await?;
            if let (Some(remaining), Some(limit)) = (usage.remaining(), usage.limit) {
                if tightest.is_none_or(|(r, _)| remaining < r) {
                    tightest = Some((remaining, limit));
                }
            }
        }
        Ok(tightest)
    }

    pub async fn register(&self) -> Result<(), BudgetError> {
        let host = hostname();
        self.store
            .register_instance(&self.instance_id, &host, i64::from(std::process::id()), self.clock.now_ms())
            .await?;
        Ok(())
    }

    pub async fn heartbeat(&self) -> Result<(), BudgetError> {
        Ok(self.store.heartbeat(&self.instance_id, self.clock.now_ms()).await?)
    }

    pub async fn deregister(&self) -> Result<(), BudgetError> {
        Ok(self.store.remove_instance(&self.instance_id).await?)
    }

    /// Releases reservations whose owner is gone (its heartbeat is older than
    /// `instance_ttl`, or it ran on this host and its process no longer
    /// exists) or whose own expiry has passed. The request is charged its
    /// whole reservation: its real cost is unknown, and the reservation is
    /// the most it could have spent, so the budget stays a hard cap.
    pub async fn recover(&self, instance_ttl: Duration) -> Result<usize, BudgetError> {
        let now_ms = self.clock.now_ms();
        let host = hostname();
        let stale_before = now_ms - instance_ttl.as_millis() as i64;
        let dead: Vec<String> = self
            .store
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.id != self.instance_id)
            .filter(|i| i.heartbeat_at_ms < stale_before || (i.host == host && !process_alive(i.pid)))
            .map(|i| i.id)
            .collect();
        let abandoned = self.store.abandoned_reservations(&dead, now_ms).await?;
        let mut released = 0;
        for request_id in abandoned {
            let Some(row) = self.store.ledger_row(&request_id).await? else { continue };
            let completion = Completion {
                finished_at_ms: now_ms,
                status: "interrupted".into(),
                error_message: Some("the gateway instance running this request stopped".into()),
                cost: row.reserved,
                ..Completion::default()
            };
            if self.store.settle(&request_id, &completion).await? {
                released += 1;
            }
        }
        for id in dead {
            self.store.remove_instance(&id).await?;
        }
        Ok(released)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Whether a process with this pid exists and has not exited. A gateway that
/// died but was not yet reaped by its parent is a zombie: `kill(pid, 0)` still
/// succeeds on it, so its state in `/proc/PID/stat` decides.
fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may itself hold parentheses.
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X'));
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::process_alive;

    #[test]
    fn an_exited_process_is_dead_before_it_is_reaped() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = i64::from(child.id());
        // Not reaped yet: once it exits it is a zombie, which kill(pid, 0)
        // alone would still report as alive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while process_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "an exited child still counts as alive");
            std::thread::yield_now();
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the zombie is still listed");
        assert!(stat.contains(") Z"), "expected a zombie, got {stat}");
        assert!(child.wait().expect("reap").success());
        assert!(!process_alive(pid));
    }

    #[test]
    fn this_process_is_alive_and_nonsense_pids_are_not() {
        assert!(process_alive(i64::from(std::process::id())));
        assert!(!process_alive(0));
        assert!(!process_alive(-5));
        assert!(!process_alive(i64::MAX));
    }
}
