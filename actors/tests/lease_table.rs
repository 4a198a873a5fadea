//! The lease table, rule by rule: tokens only ever grow (across restarts too, and an exhausted
//! counter refuses grants), grants are counted and the active gauge follows the table, only the
//! holder of the live lease may renew or speak for a job, zombies of older attempts are refused,
//! logged and counted, overdue leases are reaped in deadline order, a dead worker loses all its
//! leases, a gang holds one lease per task, and the self-fence deadline keeps its margin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/leases.rs"]
mod leases;

use std::time::Duration;

use cadre_actors::lease::{self_fence_deadline, Lease, LeaseTable, RenewOutcome};
use cadre_actors::metrics as m;
use cadre_actors::{Error, FencingToken, JobId, WorkerId};
use tokio::time::Instant;
use tracing::Level;

use leases::{counter, gauge, observed, secs, stale, subscribed, TTL};

#[test]
fn tokens_strictly_increase_and_continue_above_the_persisted_floor() {
    let _subscriber = subscribed();
    let now = Instant::now();
    let mut table = LeaseTable::new(TTL, FencingToken(0));
    assert_eq!(table.ttl(), TTL);
    let mut last = table.high_water();
    for i in 0..20 {
        let lease = table
            .grant(JobId(i % 3), 1, 0, WorkerId(i % 2), now)
            .unwrap();
        assert!(lease.token > last, "{} after {}", lease.token, last);
        assert_eq!(table.high_water(), lease.token);
        last = lease.token;
        if i % 4 == 0 {
            table.release_job(JobId(i % 3));
        }
    }
    // Releasing leases never lowers the high-water mark or lets a token be reused.
    table.release_job(JobId(0));
    table.release_job(JobId(1));
    table.release_job(JobId(2));
    assert!(table.is_empty());
    assert_eq!(table.high_water(), FencingToken(20));
    assert_eq!(
        table.grant(JobId(9), 1, 0, WorkerId(0), now).unwrap().token,
        FencingToken(21)
    );

    // A restart: the store persisted 41, so the first token after it is 42.
    let mut restarted = LeaseTable::new(TTL, FencingToken(41));
    assert_eq!(restarted.high_water(), FencingToken(41));
    let first = restarted.grant(JobId(1), 2, 0, WorkerId(5), now).unwrap();
    assert_eq!(first.token, FencingToken(42));
    assert_eq!(first.expires_at, now + TTL);
    assert_eq!(restarted.get(first.token), Some(&first));
}

#[test]
fn grants_are_counted_and_the_active_gauge_follows_the_table() {
    let now = Instant::now();
    let (_, snap) = observed(|_| {
        let mut table = LeaseTable::new(TTL, FencingToken(0));
        table.grant(JobId(1), 1, 0, WorkerId(1), now).unwrap();
        table.grant(JobId(2), 1, 0, WorkerId(1), now).unwrap();
        let l3 = table.grant(JobId(3), 1, 0, WorkerId(2), now).unwrap();
        table
            .release(JobId(3), WorkerId(2), l3.token, "finished")
            .unwrap();
    });
    assert_eq!(counter(&snap, m::LEASE_GRANTS, &[]), 3);
    assert_eq!(gauge(&snap, m::LEASES_ACTIVE), Some(2.0));
}

#[test]
fn the_holder_extends_its_lease_and_anyone_else_is_refused_and_counted() {
    let t0 = Instant::now();
    let ((), snap) = observed(|warnings| {
        let mut table = LeaseTable::new(TTL, FencingToken(0));
        let a = table.grant(JobId(1), 1, 0, WorkerId(1), t0).unwrap();
        let b = table.grant(JobId(2), 1, 0, WorkerId(1), t0).unwrap();
        let other = table.grant(JobId(3), 1, 0, WorkerId(2), t0).unwrap();

        let t1 = t0 + secs(4);
        let out = table.renew(
            WorkerId(1),
            &[
                (JobId(1), a.token),
                (JobId(3), other.token),       // another worker's lease
                (JobId(2), FencingToken(999)), // a token never handed out
                (JobId(2), b.token),
                (JobId(1), b.token), // a live token, but of another job
            ],
            t1,
        );
        assert_eq!(out.len(), 5, "one outcome per renewal");
        let order: Vec<(JobId, FencingToken, bool)> = out
            .iter()
            .map(|o| (o.job(), o.token(), o.is_renewed()))
            .collect();
        assert_eq!(
            order,
            vec![
                (JobId(1), a.token, true),
                (JobId(3), other.token, false),
                (JobId(2), FencingToken(999), false),
                (JobId(2), b.token, true),
                (JobId(1), b.token, false),
            ],
            "same order as the batch"
        );
        match &out[0] {
            RenewOutcome::Renewed { expires_at, .. } => assert_eq!(*expires_at, t1 + TTL),
            o => panic!("{o:?}"),
        }
        assert_eq!(table.get(a.token).unwrap().expires_at, t1 + TTL);
        assert_eq!(table.get(b.token).unwrap().expires_at, t1 + TTL);
        assert_eq!(
            table.get(other.token).unwrap().expires_at,
            t0 + TTL,
            "a refused renewal does not move the lease"
        );
        assert_eq!(table.next_expiry(), Some(t0 + TTL));

        let refusals: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                RenewOutcome::Refused { error, .. } => Some(stale(error)),
                RenewOutcome::Renewed { .. } => None,
            })
            .collect();
        assert_eq!(
            refusals,
            vec![
                (JobId(3), WorkerId(1), other.token, Some(other.token)),
                (JobId(2), WorkerId(1), FencingToken(999), Some(b.token)),
                (JobId(1), WorkerId(1), b.token, Some(a.token)),
            ]
        );

        let warned = warnings.take(Level::WARN);
        assert_eq!(warned.len(), 3, "one warning per refusal: {warned:?}");
        assert_eq!(warned[0]["job"], "3");
        assert_eq!(warned[0]["worker"], "1");
        assert_eq!(warned[0]["token"], other.token.to_string());
        assert_eq!(warned[0]["op"], "renew");

        // The rightful holder's messages are accepted; a message from another worker is not.
        assert_eq!(
            table
                .check(JobId(3), WorkerId(2), other.token, "progress")
                .unwrap(),
            &other
        );
        let err = table
            .check(JobId(3), WorkerId(1), other.token, "progress")
            .unwrap_err();
        assert_eq!(
            stale(&err),
            (JobId(3), WorkerId(1), other.token, Some(other.token))
        );
        assert_eq!(warnings.take(Level::WARN)[0]["op"], "progress");
    });
    assert_eq!(counter(&snap, m::LEASE_RENEWALS, &[]), 2);
    assert_eq!(counter(&snap, m::LEASE_STALE_TOKENS, &[("op", "renew")]), 3);
    assert_eq!(
        counter(&snap, m::LEASE_STALE_TOKENS, &[("op", "progress")]),
        1
    );
    assert_eq!(counter(&snap, m::LEASE_STALE_TOKENS, &[]), 4);
}

#[test]
fn a_zombie_of_an_expired_attempt_is_fenced_off_and_each_lease_is_released_once() {
    let t0 = Instant::now();
    let ((), snap) = observed(|warnings| {
        let mut table = LeaseTable::new(TTL, FencingToken(0));
        let first = table.grant(JobId(7), 1, 0, WorkerId(1), t0).unwrap();
        // Worker 1 goes quiet: its lease expires.
        let expired = table.expire_due(t0 + TTL);
        assert_eq!(expired, vec![first.clone()]);
        let warned = warnings.take(Level::WARN);
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0]["job"], "7");
        assert_eq!(warned[0]["attempt"], "1");
        assert_eq!(warned[0]["token"], first.token.to_string());

        // While no lease exists, a message from the old attempt names no current token.
        let err = table
            .check(JobId(7), WorkerId(1), first.token, "progress")
            .unwrap_err();
        assert_eq!(stale(&err).3, None);

        let second = table
            .grant(JobId(7), 2, 0, WorkerId(2), t0 + TTL + secs(1))
            .unwrap();
        assert!(second.token > first.token);

        // The zombie wakes up and reports: refused, pointing at the current token.
        for op in ["progress", "finished"] {
            let err = table
                .check(JobId(7), WorkerId(1), first.token, op)
                .unwrap_err();
            assert_eq!(
                stale(&err),
                (JobId(7), WorkerId(1), first.token, Some(second.token))
            );
        }
        let err = table
            .release(JobId(7), WorkerId(1), first.token, "finished")
            .unwrap_err();
        assert_eq!(stale(&err).3, Some(second.token));
        // Even from the new worker, the old token is stale.
        assert!(table
            .release(JobId(7), WorkerId(2), first.token, "finished")
            .is_err());
        let out = table.renew(WorkerId(1), &[(JobId(7), first.token)], t0 + TTL + secs(2));
        assert!(!out[0].is_renewed());
        assert_eq!(table.len(), 1, "the zombie removed nothing");

        // The live attempt is accepted, exactly once.
        assert_eq!(
            table
                .check(JobId(7), WorkerId(2), second.token, "started")
                .unwrap(),
            &second
        );
        let released = table
            .release(JobId(7), WorkerId(2), second.token, "finished")
            .unwrap();
        assert_eq!(released, second);
        assert!(table.is_empty());
        let err = table
            .release(JobId(7), WorkerId(2), second.token, "finished")
            .unwrap_err();
        assert_eq!(
            stale(&err),
            (JobId(7), WorkerId(2), second.token, None),
            "a second release of the same lease is refused"
        );
        assert!(table.leases_of_job(JobId(7)).is_empty());
        assert!(table.leases_of_worker(WorkerId(2)).is_empty());
        assert_eq!(table.next_expiry(), None);
    });
    assert_eq!(counter(&snap, m::LEASE_EXPIRATIONS, &[]), 1);
    assert_eq!(
        counter(&snap, m::LEASE_STALE_TOKENS, &[("op", "progress")]),
        2
    );
    assert_eq!(
        counter(&snap, m::LEASE_STALE_TOKENS, &[("op", "finished")]),
        4
    );
    assert_eq!(counter(&snap, m::LEASE_STALE_TOKENS, &[("op", "renew")]), 1);
    assert_eq!(
        counter(&snap, m::LEASE_STALE_TOKENS, &[("op", "started")]),
        0
    );
    assert_eq!(gauge(&snap, m::LEASES_ACTIVE), Some(0.0));
}

#[test]
fn expire_due_reaps_only_due_leases_in_deadline_order() {
    let t0 = Instant::now();
    let (leases, snap) = observed(|warnings| {
        let mut table = LeaseTable::new(TTL, FencingToken(0));
        // Granted at t0+3, t0+1, t0+2, t0+1 (a tie), t0+8: deadlines 13, 11, 12, 11, 18.
        let c = table
            .grant(JobId(1), 1, 0, WorkerId(1), t0 + secs(3))
            .unwrap();
        let a = table
            .grant(JobId(2), 1, 0, WorkerId(1), t0 + secs(1))
            .unwrap();
        let b = table
            .grant(JobId(3), 1, 0, WorkerId(2), t0 + secs(2))
            .unwrap();
        let a2 = table
            .grant(JobId(4), 1, 0, WorkerId(3), t0 + secs(1))
            .unwrap();
        let late = table
            .grant(JobId(5), 1, 0, WorkerId(3), t0 + secs(8))
            .unwrap();
        assert_eq!(table.next_expiry(), Some(t0 + secs(11)));

        assert!(
            table.expire_due(t0 + secs(10)).is_empty(),
            "nothing due yet"
        );
        assert_eq!(table.len(), 5);

        let due = table.expire_due(t0 + secs(12));
        assert_eq!(
            due,
            vec![a.clone(), a2.clone(), b.clone()],
            "deadline order, ties by token"
        );
        assert_eq!(
            warnings.take(Level::WARN).len(),
            3,
            "one warning per expiry"
        );
        assert_eq!(table.len(), 2);
        for gone in [&a, &a2, &b] {
            assert_eq!(table.get(gone.token), None);
            assert!(table.leases_of_job(gone.job).is_empty());
        }
        assert!(table.leases_of_worker(WorkerId(2)).is_empty());
        assert_eq!(table.leases_of_worker(WorkerId(3)), vec![&late]);
        assert_eq!(table.next_expiry(), Some(t0 + secs(13)), "moves forward");

        // A renewal pushes a deadline back; the timer follows.
        table.renew(WorkerId(1), &[(JobId(1), c.token)], t0 + secs(12));
        assert_eq!(table.next_expiry(), Some(t0 + secs(18)));
        let due = table.expire_due(t0 + secs(18));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].token, late.token);
        assert_eq!(table.next_expiry(), Some(t0 + secs(22)));
        assert_eq!(
            table.expire_due(t0 + secs(100)).len(),
            1,
            "the renewed one, at last"
        );
        assert!(table.is_empty());
        assert_eq!(table.next_expiry(), None);
        vec![a, a2, b]
    });
    assert_eq!(leases.len(), 3);
    assert_eq!(counter(&snap, m::LEASE_EXPIRATIONS, &[]), 5);
}

#[test]
fn a_renewal_arriving_after_the_deadline_does_not_resurrect_the_lease() {
    let _subscriber = subscribed();
    let t0 = Instant::now();
    let mut table = LeaseTable::new(TTL, FencingToken(0));
    let lease = table.grant(JobId(1), 1, 0, WorkerId(1), t0).unwrap();
    // Just before the deadline: renewed.
    assert!(table.renew(WorkerId(1), &[(JobId(1), lease.token)], t0 + secs(9))[0].is_renewed());
    // Past the new deadline, before the timer reaped it: refused, and left for expire_due.
    let out = table.renew(WorkerId(1), &[(JobId(1), lease.token)], t0 + secs(19));
    match &out[0] {
        RenewOutcome::Refused { error, .. } => assert_eq!(
            stale(error),
            (JobId(1), WorkerId(1), lease.token, None),
            "an overdue lease is not current"
        ),
        o => panic!("{o:?}"),
    }
    assert_eq!(table.get(lease.token).unwrap().expires_at, t0 + secs(19));
    assert_eq!(table.expire_due(t0 + secs(19)).len(), 1);

    // A renewal with an earlier `now` than the last never shortens a lease.
    let l2 = table
        .grant(JobId(2), 1, 0, WorkerId(1), t0 + secs(30))
        .unwrap();
    let out = table.renew(WorkerId(1), &[(JobId(2), l2.token)], t0 + secs(25));
    assert!(out[0].is_renewed());
    assert_eq!(table.get(l2.token).unwrap().expires_at, t0 + secs(40));
}

#[test]
fn revoking_a_dead_worker_removes_all_its_leases_and_only_its() {
    let t0 = Instant::now();
    let (revoked, snap) = observed(|warnings| {
        let mut table = LeaseTable::new(TTL, FencingToken(0));
        // Worker 1: one job just leased, one running (it has renewed), one gang task.
        let leased = table.grant(JobId(1), 1, 0, WorkerId(1), t0).unwrap();
        let running = table.grant(JobId(2), 3, 0, WorkerId(1), t0).unwrap();
        table.renew(WorkerId(1), &[(JobId(2), running.token)], t0 + secs(5));
        let gang0 = table.grant(JobId(3), 1, 0, WorkerId(2), t0).unwrap();
        let gang1 = table.grant(JobId(3), 1, 1, WorkerId(1), t0).unwrap();
        let kept = table.grant(JobId(4), 1, 0, WorkerId(2), t0).unwrap();

        let revoked = table.revoke_worker(WorkerId(1));
        let tokens: Vec<FencingToken> = revoked.iter().map(|l| l.token).collect();
        assert_eq!(tokens, vec![leased.token, running.token, gang1.token]);
        assert!(table.leases_of_worker(WorkerId(1)).is_empty());
        assert_eq!(table.leases_of_worker(WorkerId(2)), vec![&gang0, &kept]);
        assert_eq!(table.leases_of_job(JobId(3)), vec![&gang0]);
        assert!(table.leases_of_job(JobId(1)).is_empty());
        assert!(table.leases_of_job(JobId(2)).is_empty());
        assert_eq!(table.len(), 2);
        assert_eq!(table.next_expiry(), Some(t0 + TTL));
        // Nothing of worker 1 is left to expire.
        assert_eq!(table.expire_due(t0 + secs(14)).len(), 2);

        let warned = warnings.take(Level::WARN);
        let revocations: Vec<_> = warned.iter().filter(|w| w.contains_key("count")).collect();
        assert_eq!(revocations.len(), 1, "one warning per worker: {warned:?}");
        assert_eq!(revocations[0]["worker"], "1");
        assert_eq!(revocations[0]["count"], "3");
        assert!(revocations[0]["jobs"].contains("JobId(2)"));

        assert!(table.revoke_worker(WorkerId(1)).is_empty(), "idempotent");
        assert!(table.revoke_worker(WorkerId(9)).is_empty());
        assert!(
            warnings.take(Level::WARN).is_empty(),
            "no warning for a worker holding nothing"
        );
        revoked
    });
    assert_eq!(revoked.len(), 3);
    assert_eq!(counter(&snap, m::LEASE_REVOCATIONS, &[]), 3);
}

#[test]
fn a_gang_holds_one_lease_per_task_and_release_job_ends_them_all() {
    let t0 = Instant::now();
    let ((), snap) = observed(|_| {
        let mut table = LeaseTable::new(TTL, FencingToken(100));
        let other = table.grant(JobId(8), 1, 0, WorkerId(1), t0).unwrap();
        let gang: Vec<Lease> = (0..3)
            .map(|task| {
                table
                    .grant(JobId(5), 2, task, WorkerId(u64::from(task) + 1), t0)
                    .unwrap()
            })
            .collect();
        let tokens: Vec<FencingToken> = gang.iter().map(|l| l.token).collect();
        assert_eq!(
            tokens,
            vec![FencingToken(102), FencingToken(103), FencingToken(104)],
            "each task its own token"
        );
        assert_eq!(
            table.leases_of_job(JobId(5)),
            gang.iter().collect::<Vec<_>>()
        );

        // Each task's holder speaks only for its own task.
        table
            .check(JobId(5), WorkerId(2), gang[1].token, "progress")
            .unwrap();
        let err = table
            .check(JobId(5), WorkerId(2), gang[2].token, "progress")
            .unwrap_err();
        assert_eq!(stale(&err).3, Some(gang[2].token));

        let released = table.release_job(JobId(5));
        assert_eq!(released, gang);
        assert!(table.leases_of_job(JobId(5)).is_empty());
        for w in 2..=3 {
            assert!(table.leases_of_worker(WorkerId(w)).is_empty());
        }
        assert_eq!(table.leases_of_worker(WorkerId(1)), vec![&other]);
        assert_eq!(table.len(), 1);
        assert!(table.release_job(JobId(5)).is_empty(), "nothing left");
        assert!(table.release_job(JobId(99)).is_empty());
    });
    assert_eq!(
        counter(&snap, m::LEASE_REVOCATIONS, &[]) + counter(&snap, m::LEASE_EXPIRATIONS, &[]),
        0,
        "release_job counts nothing of its own"
    );
    assert_eq!(gauge(&snap, m::LEASES_ACTIVE), Some(1.0));
}

#[test]
fn self_fence_deadline_subtracts_the_margin_and_saturates_at_the_send() {
    let _subscriber = subscribed();
    let sent = Instant::now();
    assert_eq!(self_fence_deadline(sent, secs(10), secs(2)), sent + secs(8));
    assert_eq!(
        self_fence_deadline(sent, secs(10), Duration::ZERO),
        sent + secs(10)
    );
    assert_eq!(self_fence_deadline(sent, secs(10), secs(10)), sent);
    assert_eq!(
        self_fence_deadline(sent, secs(2), secs(10)),
        sent,
        "margin > ttl"
    );
    // The worker fences itself before the manager can expire a lease renewed at or after the
    // send.
    let mut table = LeaseTable::new(TTL, FencingToken(0));
    let lease = table
        .grant(
            JobId(1),
            1,
            0,
            WorkerId(1),
            sent + Duration::from_millis(30),
        )
        .unwrap();
    assert!(self_fence_deadline(sent, TTL, secs(1)) < lease.expires_at);
    // An absurd ttl saturates instead of panicking.
    let far = self_fence_deadline(sent, Duration::MAX, Duration::ZERO);
    assert!(far > sent + secs(1_000_000));
    let lease = LeaseTable::new(Duration::MAX, FencingToken(0))
        .grant(JobId(1), 1, 0, WorkerId(1), sent)
        .unwrap();
    assert!(lease.expires_at > sent + secs(1_000_000));
}

#[test]
fn an_exhausted_token_counter_refuses_grants_and_never_reuses_a_token() {
    let _subscriber = subscribed();
    let now = Instant::now();
    let mut table = LeaseTable::new(TTL, FencingToken(u64::MAX - 1));
    let last = table.grant(JobId(1), 1, 0, WorkerId(1), now).unwrap();
    assert_eq!(last.token, FencingToken(u64::MAX));
    let refused = table.grant(JobId(2), 1, 0, WorkerId(2), now);
    assert!(
        matches!(refused, Err(Error::TokensExhausted { job: JobId(2) })),
        "{refused:?}"
    );
    assert_eq!(table.high_water(), FencingToken(u64::MAX));
    assert_eq!(table.len(), 1);
    assert_eq!(table.leases_of_job(JobId(1)), vec![&last]);
    assert!(table.leases_of_job(JobId(2)).is_empty());
}
