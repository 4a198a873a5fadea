//! The capacity table under random operations (workers added, removed and drained, GPUs marked
//! healthy or not, jobs reserved and released): after every step the table's invariant holds and
//! it agrees with the test's own picture of who holds what, so no resource is booked twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/placement.rs"]
mod placement;

use std::collections::BTreeMap;

use cadre_actors::sched::{CapacityTable, Grant};
use cadre_actors::{Error, JobId, Resources, WorkerId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use placement::{cap, pick, res, subscribed, GIB};

/// The test's own picture of the table: what each worker has and who holds what.
#[derive(Debug, Clone)]
struct ModelWorker {
    cpu: u64,
    mem: u64,
    healthy: BTreeMap<u32, bool>,
    accepting: bool,
}

#[derive(Debug, Default)]
struct Model {
    workers: BTreeMap<WorkerId, ModelWorker>,
    live: BTreeMap<JobId, Vec<Grant>>,
}

impl Model {
    fn used(&self, w: WorkerId) -> (u64, u64, BTreeMap<u32, JobId>) {
        let (mut cpu, mut mem, mut gpus) = (0u64, 0u64, BTreeMap::new());
        for (job, grants) in &self.live {
            for g in grants.iter().filter(|g| g.worker == w) {
                cpu += u64::from(g.cpu_millis);
                mem += g.memory_bytes;
                for &i in &g.gpus {
                    if let Some(other) = gpus.insert(i, *job) {
                        panic!("GPU {i} of worker {w} granted to {other} and {job}");
                    }
                }
            }
        }
        (cpu, mem, gpus)
    }

    /// How many tasks of `r` fit on `w` now.
    fn fit_count(&self, w: WorkerId, r: &Resources) -> u64 {
        let mw = &self.workers[&w];
        if !mw.accepting {
            return 0;
        }
        let (cpu, mem, held) = self.used(w);
        let free_gpus = mw
            .healthy
            .iter()
            .filter(|(i, h)| **h && !held.contains_key(*i))
            .count() as u64;
        // A dimension the task does not use (division by zero) sets no bound.
        [
            (mw.cpu - cpu).checked_div(u64::from(r.cpu_millis)),
            (mw.mem - mem).checked_div(r.memory_bytes),
            free_gpus.checked_div(u64::from(r.gpus)),
        ]
        .into_iter()
        .flatten()
        .fold(u64::MAX, u64::min)
    }
}

#[test]
fn random_operations_never_book_a_resource_twice() {
    let _sub = subscribed();
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut t = CapacityTable::new();
        let mut model = Model::default();
        let mut next_worker = 0u64;
        for step in 0..300 {
            let ctx = format!("seed {seed} step {step}");
            let workers: Vec<WorkerId> = model.workers.keys().copied().collect();
            match rng.random_range(0..100) {
                0..=11 => {
                    // Add a worker; now and then an id already registered.
                    if rng.random_bool(0.1) {
                        if let Some(w) = pick(&mut rng, &workers) {
                            let before = t.summary();
                            assert!(
                                matches!(
                                    t.add_worker(w, &cap(1, 1, &[])),
                                    Err(Error::DuplicateWorker { .. })
                                ),
                                "{ctx}"
                            );
                            assert_eq!(t.summary(), before, "{ctx}");
                            continue;
                        }
                    }
                    next_worker += 1;
                    let w = WorkerId(next_worker);
                    let cpu = rng.random_range(1..=16) * 500;
                    let mem = rng.random_range(1..=32) * (GIB / 2);
                    let n = rng.random_range(0..=4u32);
                    let base = rng.random_range(0..3u32);
                    let mut gpus: Vec<u32> = (0..n).map(|i| base + 2 * i).collect();
                    if n > 0 && rng.random_bool(0.2) {
                        gpus.push(base); // a duplicate: counted once
                    }
                    t.add_worker(w, &cap(cpu, mem, &gpus)).unwrap();
                    model.workers.insert(
                        w,
                        ModelWorker {
                            cpu,
                            mem,
                            healthy: gpus.iter().map(|&i| (i, true)).collect(),
                            accepting: true,
                        },
                    );
                }
                12..=17 => {
                    let Some(w) = pick(&mut rng, &workers) else {
                        assert!(
                            matches!(
                                t.remove_worker(WorkerId(0)),
                                Err(Error::UnknownWorker { .. })
                            ),
                            "{ctx}"
                        );
                        continue;
                    };
                    let expected: Vec<JobId> = model
                        .live
                        .iter()
                        .filter(|(_, gs)| gs.iter().any(|g| g.worker == w))
                        .map(|(j, _)| *j)
                        .collect();
                    assert_eq!(t.remove_worker(w).unwrap(), expected, "{ctx}");
                    for j in &expected {
                        model.live.remove(j);
                        assert_eq!(t.reservation(*j), None, "{ctx}");
                    }
                    model.workers.remove(&w);
                }
                18..=59 => {
                    let job = JobId(rng.random_range(0..40));
                    let r = res(
                        rng.random_range(0..=8) * 500,
                        rng.random_range(0..=16) * (GIB / 2),
                        [0, 0, 0, 1, 1, 2, 3][rng.random_range(0..7)],
                    );
                    let gang = rng.random_range(1..=3u32);
                    let before = t.summary();
                    let result = t.reserve(job, &r, gang);
                    if model.live.contains_key(&job) {
                        assert!(
                            matches!(result, Err(Error::AlreadyReserved { job: j }) if j == job),
                            "{ctx}: {result:?}"
                        );
                        assert_eq!(t.summary(), before, "{ctx}");
                        continue;
                    }
                    let room = workers
                        .iter()
                        .fold(0u64, |acc, w| acc.saturating_add(model.fit_count(*w, &r)));
                    match result.unwrap() {
                        None => {
                            assert!(
                                room < u64::from(gang),
                                "{ctx}: room {room} for {gang} of {r:?}"
                            );
                            assert_eq!(t.summary(), before, "{ctx}: refused gang booked something");
                            assert_eq!(t.reservation(job), None, "{ctx}");
                        }
                        Some(grants) => {
                            assert!(room >= u64::from(gang), "{ctx}: no room but granted");
                            assert_eq!(grants.len(), gang as usize, "{ctx}");
                            for (i, g) in grants.iter().enumerate() {
                                assert_eq!(g.task, i as u32, "{ctx}");
                                assert_eq!(
                                    (g.cpu_millis, g.memory_bytes),
                                    (r.cpu_millis, r.memory_bytes),
                                    "{ctx}"
                                );
                                assert_eq!(g.gpus.len(), r.gpus as usize, "{ctx}");
                                let mw = &model.workers[&g.worker];
                                assert!(mw.accepting, "{ctx}: granted on a draining worker");
                                let (_, _, held) = model.used(g.worker);
                                for gpu in &g.gpus {
                                    assert_eq!(
                                        mw.healthy.get(gpu),
                                        Some(&true),
                                        "{ctx}: GPU {gpu}"
                                    );
                                    assert!(
                                        !held.contains_key(gpu),
                                        "{ctx}: GPU {gpu} already held"
                                    );
                                }
                            }
                            model.live.insert(job, grants);
                            // Panics in `used` if the new grants overlap among themselves.
                            for w in &workers {
                                model.used(*w);
                            }
                        }
                    }
                }
                60..=79 => {
                    let job = JobId(rng.random_range(0..40));
                    assert_eq!(t.release(job), model.live.remove(&job), "{ctx}");
                    assert_eq!(t.release(job), None, "{ctx}");
                }
                80..=89 => {
                    let Some(w) = pick(&mut rng, &workers) else {
                        continue;
                    };
                    let indices: Vec<u32> = model.workers[&w].healthy.keys().copied().collect();
                    let Some(i) = pick(&mut rng, &indices) else {
                        assert!(matches!(
                            t.set_gpu_health(w, 99, true),
                            Err(Error::UnknownDevice { .. })
                        ));
                        continue;
                    };
                    let healthy = rng.random_bool(0.5);
                    let holder = model.used(w).2.get(&i).copied();
                    assert_eq!(t.set_gpu_health(w, i, healthy).unwrap(), holder, "{ctx}");
                    model
                        .workers
                        .get_mut(&w)
                        .unwrap()
                        .healthy
                        .insert(i, healthy);
                }
                _ => {
                    let Some(w) = pick(&mut rng, &workers) else {
                        continue;
                    };
                    let accepting = rng.random_bool(0.6);
                    t.set_accepting(w, accepting).unwrap();
                    model.workers.get_mut(&w).unwrap().accepting = accepting;
                }
            }

            if let Err(e) = t.check() {
                panic!("{ctx}: {e}");
            }
            assert_eq!(t.reserved_jobs(), model.live.len(), "{ctx}");
            for (job, grants) in &model.live {
                assert_eq!(t.reservation(*job), Some(grants.as_slice()), "{ctx}");
            }
            let mut expect = (0u64, 0u64, 0u64, 0u64, 0usize);
            for (w, mw) in &model.workers {
                let (cpu, mem, held) = model.used(*w);
                expect.0 += mw.cpu - cpu;
                expect.1 += mw.mem - mem;
                expect.2 += mw
                    .healthy
                    .iter()
                    .filter(|(i, h)| **h && !held.contains_key(*i))
                    .count() as u64;
                expect.3 += mw.healthy.values().filter(|h| !**h).count() as u64;
                expect.4 += usize::from(mw.accepting);
            }
            let s = t.summary();
            assert_eq!(
                (
                    s.cpu_free,
                    s.memory_free,
                    s.gpus_free,
                    s.gpus_unhealthy,
                    s.accepting
                ),
                expect,
                "{ctx}"
            );
            assert_eq!(s.workers, model.workers.len(), "{ctx}");
        }
    }
}
