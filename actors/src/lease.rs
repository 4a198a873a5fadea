//! The lease table: the pure core of the lease manager, with no actor, no clock and no I/O.
//!
//! Every job attempt runs under a lease: `{job, attempt, task, worker, token, expires_at}`. A
//! gang job holds one lease per task (task `0..gang`), all for the same job and attempt, each
//! with its own fencing token. Workers renew their leases in batches; a lease that is not
//! renewed before its deadline expires, and every lease of a worker declared dead is revoked.
//! Messages from workers (`started`, `progress`, `finished`) are accepted only if they carry the
//! token of a live lease of that job held by that worker; anything else comes from a zombie (an
//! older attempt, an expired or revoked lease) and is refused, logged and counted.
//!
//! Time is never read here: every method that needs it takes `now`, a [`tokio::time::Instant`]
//! chosen by the caller, so the table is deterministic and tested without sleeping.
//!
//! Invariants, kept by every method:
//!
//! - Tokens are handed out in strictly increasing order, starting above the `token_floor` the
//!   table is created with (the highest token ever handed out, persisted by the store), so a
//!   token is never reused, not even across restarts. [`LeaseTable::high_water`] is the value
//!   to persist.
//! - Every lease held is in exactly the by-token map, the job index, the worker index and the
//!   expiry index, under its current `expires_at`; a removed lease is in none of them. No index
//!   keeps an empty entry.
//! - A lease is live while it is in the table and, where the method knows `now`, its deadline
//!   has not passed: a renewal that arrives after `expires_at` does not resurrect the lease
//!   (its worker may already have fenced itself), it is refused and the lease is left for
//!   [`LeaseTable::expire_due`] to reap.
//! - A lease's deadline never moves backwards.
//! - Arithmetic on instants and tokens never panics: instants saturate at the furthest
//!   representable one, and an exhausted token counter refuses grants rather than reuse a token.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::ids::{FencingToken, WorkerId};
use crate::job::JobId;
use crate::metrics as m;

/// One lease: the right of `worker` to run task `task` of attempt `attempt` of `job` until
/// `expires_at`, proven by `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job: JobId,
    /// The job's attempt this lease runs (1 for the first).
    pub attempt: u32,
    /// The task of a gang job (0 for an ordinary job).
    pub task: u32,
    /// The worker holding it.
    pub worker: WorkerId,
    /// Its fencing token, unique and larger than every token handed out before it.
    pub token: FencingToken,
    /// The instant it expires unless renewed.
    pub expires_at: Instant,
}

/// What became of one renewal in a batch (see [`LeaseTable::renew`]).
#[derive(Debug)]
pub enum RenewOutcome {
    /// The lease was renewed until `expires_at`.
    Renewed {
        /// The job.
        job: JobId,
        /// The token presented, the lease's token.
        token: FencingToken,
        /// The lease's new deadline.
        expires_at: Instant,
    },
    /// The renewal was refused: the token is not a live lease of the job held by the worker.
    Refused {
        /// The job.
        job: JobId,
        /// The token presented.
        token: FencingToken,
        /// Why: always [`Error::StaleToken`].
        error: Error,
    },
}

impl RenewOutcome {
    /// Whether the lease was renewed.
    pub fn is_renewed(&self) -> bool {
        matches!(self, RenewOutcome::Renewed { .. })
    }

    /// The job the renewal was about.
    pub fn job(&self) -> JobId {
        match self {
            RenewOutcome::Renewed { job, .. } | RenewOutcome::Refused { job, .. } => *job,
        }
    }

    /// The token the renewal presented.
    pub fn token(&self) -> FencingToken {
        match self {
            RenewOutcome::Renewed { token, .. } | RenewOutcome::Refused { token, .. } => *token,
        }
    }
}

/// The leases held, indexed by token, job, worker and deadline. See the module documentation
/// for its invariants.
#[derive(Debug)]
pub struct LeaseTable {
    ttl: Duration,
    high_water: FencingToken,
    by_token: BTreeMap<FencingToken, Lease>,
    /// `(job, token)` pairs: a job's tokens are one range, and a grant allocates no set of its
    /// own.
    by_job: BTreeSet<(JobId, FencingToken)>,
    by_worker: BTreeMap<WorkerId, BTreeSet<FencingToken>>,
    by_expiry: BTreeSet<(Instant, FencingToken)>,
    /// `cadre_lease_grants_total` and `cadre_leases_active`, looked up once: they change on
    /// every grant and release.
    grants: metrics::Counter,
    active: metrics::Gauge,
}

impl LeaseTable {
    /// An empty table granting leases of `ttl`. `token_floor` is the highest token ever handed
    /// out (persisted by the store; `FencingToken(0)` on a fresh node): the next grant gets
    /// `token_floor + 1`.
    pub fn new(ttl: Duration, token_floor: FencingToken) -> LeaseTable {
        LeaseTable {
            ttl,
            high_water: token_floor,
            by_token: BTreeMap::new(),
            by_job: BTreeSet::new(),
            by_worker: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            grants: metrics::counter!(m::LEASE_GRANTS),
            active: metrics::gauge!(m::LEASES_ACTIVE),
        }
    }

    /// How long a lease lives after its grant or last renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The highest token handed out so far (the floor when none was): what the store persists.
    pub fn high_water(&self) -> FencingToken {
        self.high_water
    }

    /// Grants a lease on task `task` of attempt `attempt` of `job` to `worker`, until
    /// `now + ttl`, with a fresh token strictly greater than any before. Counts
    /// `LEASE_GRANTS` and sets the `LEASES_ACTIVE` gauge.
    ///
    /// A token is never reused: should the counter ever reach `u64::MAX` (half a million years
    /// at a million grants a second), the grant is refused with [`Error::TokensExhausted`].
    pub fn grant(
        &mut self,
        job: JobId,
        attempt: u32,
        task: u32,
        worker: WorkerId,
        now: Instant,
    ) -> Result<Lease, Error> {
        let Some(next) = self.high_water.0.checked_add(1) else {
            tracing::error!(job = %job, worker = %worker, token = %self.high_water,
                "fencing tokens exhausted: lease refused");
            metrics::counter!(m::LEASE_GRANT_REFUSALS).increment(1);
            return Err(Error::TokensExhausted { job });
        };
        let token = FencingToken(next);
        self.high_water = token;
        let lease = Lease {
            job,
            attempt,
            task,
            worker,
            token,
            expires_at: add_saturating(now, self.ttl),
        };
        self.insert(lease.clone());
        tracing::debug!(job = %job, worker = %worker, token = %token, attempt, task,
            "lease granted");
        self.grants.increment(1);
        self.set_gauge();
        Ok(lease)
    }

    /// Renews a batch of leases from one worker. Each `(job, token)` is renewed until
    /// `now + ttl` only if `token` is a live lease of `job` held by `worker` whose deadline has
    /// not passed at `now`; otherwise it is refused with [`Error::StaleToken`] (`current`: the
    /// presented token when it is the job's live lease but held by another worker, else the
    /// lowest live token of the job, `None` when the job holds none). Returns one outcome per
    /// renewal, in the batch's order.
    ///
    /// Each renewal counts `LEASE_RENEWALS`; each refusal logs one warning (job, worker, token)
    /// and counts `LEASE_STALE_TOKENS{op="renew"}`. A refused lease is left as it is: an
    /// overdue one is reaped by [`LeaseTable::expire_due`].
    pub fn renew(
        &mut self,
        worker: WorkerId,
        batch: &[(JobId, FencingToken)],
        now: Instant,
    ) -> Vec<RenewOutcome> {
        let deadline = add_saturating(now, self.ttl);
        let mut outcomes = Vec::with_capacity(batch.len());
        for &(job, token) in batch {
            let renewable = self
                .by_token
                .get(&token)
                .is_some_and(|l| l.job == job && l.worker == worker && l.expires_at > now);
            if renewable {
                let expires_at = self.set_deadline(token, deadline);
                metrics::counter!(m::LEASE_RENEWALS).increment(1);
                outcomes.push(RenewOutcome::Renewed {
                    job,
                    token,
                    expires_at,
                });
            } else {
                let error = self.refuse(job, worker, token, "renew", Some(now));
                outcomes.push(RenewOutcome::Refused { job, token, error });
            }
        }
        outcomes
    }

    /// Checks that a message from `worker` about `job` carrying `token` comes from the live
    /// lease: `token` is a lease of `job` in the table, held by `worker`. `op` names the message
    /// (`"progress"`, `"started"`, `"finished"`) and labels the metric.
    ///
    /// Refusal: [`Error::StaleToken`] (with `current` as in [`LeaseTable::renew`]), one warning
    /// (job, worker, token, op) and `LEASE_STALE_TOKENS{op}` counted. This method knows no
    /// time: the caller reaps overdue leases with [`LeaseTable::expire_due`] before checking.
    pub fn check(
        &self,
        job: JobId,
        worker: WorkerId,
        token: FencingToken,
        op: &'static str,
    ) -> Result<&Lease, Error> {
        match self.by_token.get(&token) {
            Some(lease) if lease.job == job && lease.worker == worker => Ok(lease),
            _ => Err(self.refuse(job, worker, token, op, None)),
        }
    }

    /// Ends a lease normally (its job finished or was cancelled by its worker): the same check
    /// as [`LeaseTable::check`] with `op`, then removes the lease and returns it. A second
    /// release of the same lease is refused, so each lease is released at most once.
    pub fn release(
        &mut self,
        job: JobId,
        worker: WorkerId,
        token: FencingToken,
        op: &'static str,
    ) -> Result<Lease, Error> {
        self.check(job, worker, token, op)?;
        match self.remove(token) {
            Some(lease) => {
                tracing::debug!(job = %job, worker = %worker, token = %token, op,
                    "lease released");
                self.set_gauge();
                Ok(lease)
            }
            // `check` just found it; kept total rather than trusting that.
            None => Err(self.refuse(job, worker, token, op, None)),
        }
    }

    /// Removes every lease of `job` whatever its token (cancel, timeout, an end decided by the
    /// scheduler) and returns them in token order; empty when the job holds none. Counts
    /// nothing.
    pub fn release_job(&mut self, job: JobId) -> Vec<Lease> {
        let tokens: Vec<FencingToken> = self.job_tokens(job).collect();
        let released: Vec<Lease> = tokens.into_iter().filter_map(|t| self.remove(t)).collect();
        if !released.is_empty() {
            tracing::debug!(job = %job, leases = released.len(), "job's leases released");
            self.set_gauge();
        }
        released
    }

    /// Removes and returns every lease whose `expires_at <= now`, in expiry order (ties by
    /// token). Each logs one warning (job, worker, token, attempt) and counts
    /// `LEASE_EXPIRATIONS`.
    pub fn expire_due(&mut self, now: Instant) -> Vec<Lease> {
        let mut expired = Vec::new();
        while let Some(&(at, token)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            match self.remove(token) {
                Some(lease) => {
                    tracing::warn!(job = %lease.job, worker = %lease.worker,
                        token = %lease.token, attempt = lease.attempt, task = lease.task,
                        "lease expired unrenewed");
                    metrics::counter!(m::LEASE_EXPIRATIONS).increment(1);
                    expired.push(lease);
                }
                None => {
                    // An index entry without its lease would break an invariant; drop it
                    // rather than loop on it forever.
                    tracing::error!(token = %token, "expiry index held a token with no lease");
                    self.by_expiry.remove(&(at, token));
                }
            }
        }
        if !expired.is_empty() {
            self.set_gauge();
        }
        expired
    }

    /// Removes and returns (in token order) every lease held by `worker`, declared dead. Each
    /// counts `LEASE_REVOCATIONS`; one warning per worker with the count and the job ids,
    /// logged only when the worker held any.
    pub fn revoke_worker(&mut self, worker: WorkerId) -> Vec<Lease> {
        let tokens: Vec<FencingToken> = self
            .by_worker
            .get(&worker)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let revoked: Vec<Lease> = tokens.into_iter().filter_map(|t| self.remove(t)).collect();
        if !revoked.is_empty() {
            let jobs: Vec<JobId> = revoked.iter().map(|l| l.job).collect();
            tracing::warn!(worker = %worker, count = revoked.len(), jobs = ?jobs,
                "leases revoked: worker declared dead");
            metrics::counter!(m::LEASE_REVOCATIONS).increment(revoked.len() as u64);
            self.set_gauge();
        }
        revoked
    }

    /// The earliest deadline of the leases held, for the actor's timer; `None` when empty.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|&(at, _)| at)
    }

    /// The lease holding `token`, if any.
    pub fn get(&self, token: FencingToken) -> Option<&Lease> {
        self.by_token.get(&token)
    }

    /// The leases of `job`, in token order (a gang's tasks in grant order).
    pub fn leases_of_job(&self, job: JobId) -> Vec<&Lease> {
        self.job_tokens(job)
            .filter_map(|t| self.by_token.get(&t))
            .collect()
    }

    /// The leases held by `worker`, in token order.
    pub fn leases_of_worker(&self, worker: WorkerId) -> Vec<&Lease> {
        self.collect(self.by_worker.get(&worker))
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// The tokens of `job`'s leases, in order.
    fn job_tokens(&self, job: JobId) -> impl Iterator<Item = FencingToken> + '_ {
        self.by_job
            .range((job, FencingToken(0))..=(job, FencingToken(u64::MAX)))
            .map(|&(_, token)| token)
    }

    fn collect(&self, tokens: Option<&BTreeSet<FencingToken>>) -> Vec<&Lease> {
        tokens
            .into_iter()
            .flatten()
            .filter_map(|t| self.by_token.get(t))
            .collect()
    }

    fn insert(&mut self, lease: Lease) {
        self.by_job.insert((lease.job, lease.token));
        self.by_worker
            .entry(lease.worker)
            .or_default()
            .insert(lease.token);
        self.by_expiry.insert((lease.expires_at, lease.token));
        self.by_token.insert(lease.token, lease);
    }

    /// Removes a lease from every index.
    fn remove(&mut self, token: FencingToken) -> Option<Lease> {
        let lease = self.by_token.remove(&token)?;
        self.by_job.remove(&(lease.job, token));
        if let Some(tokens) = self.by_worker.get_mut(&lease.worker) {
            tokens.remove(&token);
            if tokens.is_empty() {
                self.by_worker.remove(&lease.worker);
            }
        }
        self.by_expiry.remove(&(lease.expires_at, token));
        Some(lease)
    }

    /// Moves a held lease's deadline to `deadline`, never backwards; returns the deadline it
    /// ends up with.
    fn set_deadline(&mut self, token: FencingToken, deadline: Instant) -> Instant {
        match self.by_token.get_mut(&token) {
            Some(lease) => {
                if deadline > lease.expires_at {
                    self.by_expiry.remove(&(lease.expires_at, token));
                    lease.expires_at = deadline;
                    self.by_expiry.insert((deadline, token));
                }
                lease.expires_at
            }
            None => deadline,
        }
    }

    /// The job's current token for a refusal of `presented`: the presented token itself when it
    /// is the job's live lease (held by another worker), else the job's lowest live token.
    /// `now`, when known, excludes leases past their deadline.
    fn current(
        &self,
        job: JobId,
        presented: FencingToken,
        now: Option<Instant>,
    ) -> Option<FencingToken> {
        let live = |l: &&Lease| l.job == job && now.is_none_or(|now| l.expires_at > now);
        if self.by_token.get(&presented).filter(live).is_some() {
            return Some(presented);
        }
        self.job_tokens(job)
            .filter_map(|t| self.by_token.get(&t))
            .find(live)
            .map(|l| l.token)
    }

    /// Logs, counts and builds the refusal of a stale token.
    fn refuse(
        &self,
        job: JobId,
        worker: WorkerId,
        presented: FencingToken,
        op: &'static str,
        now: Option<Instant>,
    ) -> Error {
        let current = self.current(job, presented, now);
        tracing::warn!(job = %job, worker = %worker, token = %presented, op,
            current = ?current.map(|t| t.0), "stale fencing token refused");
        metrics::counter!(m::LEASE_STALE_TOKENS, "op" => op).increment(1);
        Error::StaleToken {
            job,
            worker,
            presented,
            current,
        }
    }

    fn set_gauge(&self) {
        self.active.set(self.by_token.len() as f64);
    }
}

/// Worker-side self-fencing: the instant by which a worker must have killed its job, given the
/// instant it *sent* its last acknowledged renewal (earlier than the manager's renewal, so
/// conservative), the lease `ttl` and a safety `margin`: `renew_sent_at + ttl - margin`,
/// saturating at `renew_sent_at` when `margin >= ttl`. A worker that cannot renew before this
/// instant kills its job itself, before the manager can hand the lease to another worker.
pub fn self_fence_deadline(renew_sent_at: Instant, ttl: Duration, margin: Duration) -> Instant {
    add_saturating(renew_sent_at, ttl.saturating_sub(margin))
}

/// `at + d`, or the furthest instant representable below it when that overflows.
fn add_saturating(at: Instant, d: Duration) -> Instant {
    if let Some(t) = at.checked_add(d) {
        return t;
    }
    // `at + x` overflows for every `x >= d`: add the largest halvings of `d` that still fit.
    // Once `step` fits, the gap left is below `step`, so each size succeeds at most once and
    // the loop ends after ~100 halvings.
    let mut reached = at;
    let mut step = d / 2;
    while !step.is_zero() {
        match reached.checked_add(step) {
            Some(next) => reached = next,
            None => step /= 2,
        }
    }
    reached
}
