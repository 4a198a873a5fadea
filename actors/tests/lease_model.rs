//! The lease table under random operations (grants, batch renewals, time passing, expiry, a dead
//! worker's leases revoked, checks and releases with live, stale or unheard-of tokens, a job's
//! leases released): after every step every index agrees with a simple model, the live leases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/leases.rs"]
mod leases;

use std::time::Duration;

use cadre_actors::lease::{Lease, LeaseTable, RenewOutcome};
use cadre_actors::{FencingToken, JobId, WorkerId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use leases::{stale, subscribed, TTL};

/// The model: the live leases, in no particular order.
struct Model {
    leases: Vec<Lease>,
}

impl Model {
    fn by(&self, pred: impl Fn(&Lease) -> bool) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.leases.iter().filter(|l| pred(l)).cloned().collect();
        v.sort_by_key(|l| l.token);
        v
    }
    fn find(&self, token: FencingToken) -> Option<&Lease> {
        self.leases.iter().find(|l| l.token == token)
    }
    /// The `current` a refusal must name (see `LeaseTable::check`/`renew`).
    fn current(
        &self,
        job: JobId,
        presented: FencingToken,
        now: Option<Instant>,
    ) -> Option<FencingToken> {
        let live = |l: &Lease| l.job == job && now.is_none_or(|n| l.expires_at > n);
        if self.find(presented).is_some_and(live) {
            return Some(presented);
        }
        self.by(live).first().map(|l| l.token)
    }
    fn remove(&mut self, pred: impl Fn(&Lease) -> bool) -> Vec<Lease> {
        let out = self.by(&pred);
        self.leases.retain(|l| !pred(l));
        out
    }
}

const JOBS: u64 = 6;
const WORKERS: u64 = 4;

fn agree(table: &LeaseTable, model: &Model, ctx: &str) {
    assert_eq!(table.len(), model.leases.len(), "{ctx}: len");
    assert_eq!(table.is_empty(), model.leases.is_empty(), "{ctx}");
    for l in &model.leases {
        assert_eq!(table.get(l.token), Some(l), "{ctx}: get {}", l.token);
    }
    for j in 0..JOBS {
        let want = model.by(|l| l.job == JobId(j));
        let got: Vec<Lease> = table.leases_of_job(JobId(j)).into_iter().cloned().collect();
        assert_eq!(got, want, "{ctx}: job {j}");
    }
    for w in 0..WORKERS {
        let want = model.by(|l| l.worker == WorkerId(w));
        let got: Vec<Lease> = table
            .leases_of_worker(WorkerId(w))
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(got, want, "{ctx}: worker {w}");
    }
    assert_eq!(
        table.next_expiry(),
        model.leases.iter().map(|l| l.expires_at).min(),
        "{ctx}: next expiry"
    );
}

/// A token to present: usually a live one, sometimes a stale or unheard-of one.
fn pick_token(rng: &mut SmallRng, model: &Model, high: FencingToken) -> (JobId, FencingToken) {
    if !model.leases.is_empty() && rng.random_bool(0.7) {
        let l = &model.leases[rng.random_range(0..model.leases.len())];
        let job = if rng.random_bool(0.9) {
            l.job
        } else {
            JobId(rng.random_range(0..JOBS))
        };
        (job, l.token)
    } else {
        (
            JobId(rng.random_range(0..JOBS)),
            FencingToken(rng.random_range(0..=high.0 + 2)),
        )
    }
}

fn pick_worker(rng: &mut SmallRng, model: &Model, token: FencingToken) -> WorkerId {
    match model.find(token) {
        Some(l) if rng.random_bool(0.75) => l.worker,
        _ => WorkerId(rng.random_range(0..WORKERS)),
    }
}

fn run_random_ops(seed: u64) {
    let _subscriber = subscribed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let floor = FencingToken(rng.random_range(0..1000));
    let mut table = LeaseTable::new(TTL, floor);
    let mut model = Model { leases: Vec::new() };
    let mut now = Instant::now();
    let mut last_token = floor;
    let mut seen_tokens = std::collections::BTreeSet::new();

    for step in 0..600 {
        let ctx = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..=29 => {
                let job = JobId(rng.random_range(0..JOBS));
                let worker = WorkerId(rng.random_range(0..WORKERS));
                let (attempt, task) = (rng.random_range(1..4), rng.random_range(0..3));
                let lease = table.grant(job, attempt, task, worker, now).unwrap();
                assert!(lease.token > last_token, "{ctx}: tokens increase");
                assert!(seen_tokens.insert(lease.token), "{ctx}: tokens unique");
                assert_eq!(
                    (lease.job, lease.worker, lease.attempt, lease.task),
                    (job, worker, attempt, task)
                );
                assert_eq!(lease.expires_at, now + TTL, "{ctx}");
                last_token = lease.token;
                model.leases.push(lease);
            }
            30..=49 => {
                let worker = WorkerId(rng.random_range(0..WORKERS));
                let n = rng.random_range(0..5);
                let mut batch = Vec::new();
                let own = model.by(|l| l.worker == worker);
                for _ in 0..n {
                    // Biased towards the worker's own leases.
                    if !own.is_empty() && rng.random_bool(0.5) {
                        let l = &own[rng.random_range(0..own.len())];
                        batch.push((l.job, l.token));
                    } else {
                        batch.push(pick_token(&mut rng, &model, last_token));
                    }
                }
                let out = table.renew(worker, &batch, now);
                assert_eq!(out.len(), batch.len(), "{ctx}");
                for (o, &(job, token)) in out.iter().zip(&batch) {
                    assert_eq!((o.job(), o.token()), (job, token), "{ctx}: order");
                    let current = model.current(job, token, Some(now));
                    let held = model.leases.iter_mut().find(|l| {
                        l.token == token && l.job == job && l.worker == worker && l.expires_at > now
                    });
                    match (o, held) {
                        (RenewOutcome::Renewed { expires_at, .. }, Some(l)) => {
                            l.expires_at = l.expires_at.max(now + TTL);
                            assert_eq!(*expires_at, l.expires_at, "{ctx}");
                        }
                        (RenewOutcome::Refused { error, .. }, None) => {
                            assert_eq!(stale(error), (job, worker, token, current), "{ctx}");
                        }
                        (o, held) => panic!("{ctx}: {o:?} but model holds {held:?}"),
                    }
                }
            }
            50..=64 => now += Duration::from_millis(rng.random_range(0..8_000)),
            65..=74 => {
                let got = table.expire_due(now);
                let mut want = model.remove(|l| l.expires_at <= now);
                want.sort_by_key(|l| (l.expires_at, l.token));
                assert_eq!(got, want, "{ctx}: expired");
                assert!(
                    (0..JOBS).all(|j| table
                        .leases_of_job(JobId(j))
                        .iter()
                        .all(|l| l.expires_at > now)),
                    "{ctx}: nothing overdue survives"
                );
                if let Some(next) = table.next_expiry() {
                    assert!(next > now, "{ctx}");
                }
            }
            75..=79 => {
                let worker = WorkerId(rng.random_range(0..WORKERS));
                let got = table.revoke_worker(worker);
                assert_eq!(got, model.remove(|l| l.worker == worker), "{ctx}: revoked");
            }
            80..=89 => {
                let (job, token) = pick_token(&mut rng, &model, last_token);
                let worker = pick_worker(&mut rng, &model, token);
                let current = model.current(job, token, None);
                let ok = model
                    .find(token)
                    .is_some_and(|l| l.job == job && l.worker == worker);
                if rng.random_bool(0.5) {
                    match table.check(job, worker, token, "progress") {
                        Ok(l) => {
                            assert!(ok, "{ctx}");
                            assert_eq!(Some(l), model.find(token), "{ctx}");
                        }
                        Err(e) => {
                            assert!(!ok, "{ctx}");
                            assert_eq!(stale(&e), (job, worker, token, current), "{ctx}");
                        }
                    }
                } else {
                    match table.release(job, worker, token, "finished") {
                        Ok(l) => {
                            assert!(ok, "{ctx}");
                            assert_eq!(model.remove(|m| m.token == token), vec![l], "{ctx}");
                        }
                        Err(e) => {
                            assert!(!ok, "{ctx}");
                            assert_eq!(stale(&e), (job, worker, token, current), "{ctx}");
                        }
                    }
                }
            }
            _ => {
                let job = JobId(rng.random_range(0..JOBS));
                let got = table.release_job(job);
                assert_eq!(got, model.remove(|l| l.job == job), "{ctx}: release_job");
            }
        }
        assert_eq!(table.high_water(), last_token, "{ctx}: high water");
        agree(&table, &model, &ctx);
    }
}

#[test]
fn random_operations_agree_with_a_simple_model() {
    for seed in 0..40 {
        run_random_ops(seed);
    }
}
