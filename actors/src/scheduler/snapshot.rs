//! Snapshots written a chunk at a time, between the scheduler's messages, so that writing one
//! never pauses the scheduler for longer than one chunk (a few milliseconds, at any table
//! size). The store takes its view of the table and the journal's cut in one step; each step
//! then encodes at most [`STEP_ENTRIES`] entries on the actor thread and hands them to the
//! snapshot file, whose write runs off it; the next step follows once that write is done,
//! after whatever messages came meanwhile. Entries that change before they are written are
//! kept as they were at the cut (the table's copy-on-write), so the snapshot is exact.
//!
//! A failed snapshot (a full disk) changes nothing the journal relies on and is tried again
//! after half the interval.

use cadre_cpu::journal::SnapshotFile;

use super::*;

/// Entries encoded per step: about a millisecond of the actor thread on the development
/// machine (see the `snapshot_pause` bench case).
pub const STEP_ENTRIES: usize = 1024;

/// A snapshot in progress.
pub(super) struct SnapshotRun {
    started: Instant,
    jobs: usize,
    steps: u64,
    /// The longest step on the actor thread.
    longest: Duration,
    /// Who asked for this snapshot ([`TakeSnapshot`]) and waits for it.
    waiters: Vec<oneshot::Sender<Result<SnapshotDone, Error>>>,
}

/// What a snapshot took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDone {
    /// Entries in it.
    pub jobs: usize,
    /// From its cut to its install.
    pub took: Duration,
    /// The longest stretch it held the actor thread for.
    pub longest_step: Duration,
    /// Steps it took.
    pub steps: u64,
}

/// Takes a snapshot now (or joins the one in progress) and answers once it is installed:
/// for tests and benchmarks; the node takes one by itself every `snapshot_every` records.
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotDone, Error>")]
pub struct TakeSnapshot;

impl Handler<TakeSnapshot> for Scheduler {
    type Result = ResponseFuture<Result<SnapshotDone, Error>>;

    fn handle(&mut self, _: TakeSnapshot, ctx: &mut Ctx) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.core.as_mut() {
            None => {
                return Box::pin(async {
                    Err(Error::Unavailable {
                        reason: "the scheduler is still opening its journal".to_owned(),
                    })
                })
            }
            Some(core) => match &mut core.snapshot {
                Some(run) => run.waiters.push(tx),
                None => self.start_snapshot(ctx, Some(tx)),
            },
        }
        Box::pin(async move {
            rx.await.map_err(|_| Error::Mailbox {
                actor: "scheduler",
                reason: "the scheduler restarted before the snapshot was written".to_owned(),
            })?
        })
    }
}

impl Scheduler {
    /// Takes the store's cut and starts writing the snapshot.
    pub(super) fn start_snapshot(
        &mut self,
        ctx: &mut Ctx,
        waiter: Option<oneshot::Sender<Result<SnapshotDone, Error>>>,
    ) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let Some(store) = core.store.as_mut() else {
            // A waited commit holds the store: the next commit tries again.
            if let Some(tx) = waiter {
                answer(
                    tx,
                    Err(Error::Unavailable {
                        reason: "the journal is busy; retry".to_owned(),
                    }),
                );
            }
            return;
        };
        let cut = match store.begin_snapshot() {
            Ok(Some(cut)) => cut,
            Ok(None) => {
                if let Some(tx) = waiter {
                    answer(
                        tx,
                        Err(Error::Unavailable {
                            reason: "the journal's queue is full; retry".to_owned(),
                        }),
                    );
                }
                return;
            }
            Err(error) => {
                tracing::error!(%error, path = ctx.path(), "cannot start a job store snapshot");
                if let Some(tx) = waiter {
                    answer(tx, Err(error));
                }
                return;
            }
        };
        let journal = store.journal().clone();
        core.snapshot = Some(SnapshotRun {
            started: Instant::now(),
            jobs: store.table().len(),
            steps: 0,
            longest: Duration::ZERO,
            waiters: waiter.into_iter().collect(),
        });
        ctx.spawn(
            async move {
                let cut = cut.await?;
                journal.snapshot_file(cut).await
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(file) => act.snapshot_step(ctx, file),
                Err(source) => act.snapshot_failed(
                    ctx,
                    Error::Store {
                        op: "snapshot",
                        source,
                    },
                ),
            }),
        );
    }

    /// Encodes the next chunk and has the file write it; the step after follows its write.
    fn snapshot_step(&mut self, ctx: &mut Ctx, mut file: SnapshotFile) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        if core.closing {
            // The node is stopping: the snapshot is dropped with its file; the journal has all.
            self.snapshot_failed(
                ctx,
                Error::Unavailable {
                    reason: "the node stopped while a snapshot was being written".to_owned(),
                },
            );
            return;
        }
        let Some(store) = core.store.as_mut() else {
            ctx.run_later(Duration::from_millis(1), move |act, ctx| {
                act.snapshot_step(ctx, file)
            });
            return;
        };
        let step = Instant::now();
        let encoded = store.snapshot_chunk(STEP_ENTRIES);
        if let Some(run) = core.snapshot.as_mut() {
            run.steps += 1;
            run.longest = run.longest.max(step.elapsed());
        }
        let (chunk, done) = match encoded {
            Ok(c) => c,
            Err(error) => {
                self.snapshot_failed(ctx, error);
                return;
            }
        };
        ctx.spawn(
            async move {
                let written = file.write(chunk).await;
                match written {
                    Ok(()) if done => (None, file.install().await),
                    Ok(()) => (Some(file), Ok(())),
                    Err(e) => (None, Err(e)),
                }
            }
            .into_actor(self)
            .map(|(file, result), act, ctx| match (file, result) {
                (Some(file), Ok(())) => act.snapshot_step(ctx, file),
                (None, Ok(())) => act.snapshot_written(ctx),
                (_, Err(source)) => act.snapshot_failed(
                    ctx,
                    Error::Store {
                        op: "snapshot",
                        source,
                    },
                ),
            }),
        );
    }

    fn snapshot_written(&mut self, ctx: &mut Ctx) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        if let Some(store) = core.store.as_mut() {
            store.end_snapshot(true);
        }
        let Some(run) = core.snapshot.take() else {
            return;
        };
        let done = SnapshotDone {
            jobs: run.jobs,
            took: run.started.elapsed(),
            longest_step: run.longest,
            steps: run.steps,
        };
        tracing::info!(
            jobs = done.jobs,
            took_ms = done.took.as_millis() as u64,
            longest_step_us = done.longest_step.as_micros() as u64,
            steps = done.steps,
            path = ctx.path(),
            "job store snapshot written"
        );
        for tx in run.waiters {
            answer(tx, Ok(done));
        }
    }

    fn snapshot_failed(&mut self, ctx: &mut Ctx, error: Error) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        if let Some(store) = core.store.as_mut() {
            store.end_snapshot(false);
        }
        let waiters = core.snapshot.take().map_or_else(Vec::new, |r| r.waiters);
        // The journal is whole without it (its records stay in their segments).
        tracing::error!(%error, path = ctx.path(),
            "job store snapshot failed; the journal keeps its records and it is tried again later");
        metrics::counter!(m::STORE_ERRORS, "op" => "snapshot").increment(1);
        for tx in waiters {
            answer(
                tx,
                Err(Error::Rejected {
                    reason: format!("the snapshot failed: {error}"),
                }),
            );
        }
    }
}

fn answer(tx: oneshot::Sender<Result<SnapshotDone, Error>>, result: Result<SnapshotDone, Error>) {
    if tx.send(result).is_err() {
        tracing::debug!("snapshot waiter left before it was written");
    }
}
