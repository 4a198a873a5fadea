//! The GPU health monitor against a scripted health source and a fake scheduler: it reports an
//! unhealthy device on every sample (so a scheduler that restarted and took every GPU as
//! healthy learns it again at once), a healthy one only when it recovers (once the scheduler
//! took its being unhealthy), never a device that stayed healthy; counts an unreadable device
//! as unhealthy, sends a recovery the scheduler refused again on the next sample, and exports
//! every sample as gauges. (The monitor's logs, a warning only when a device turns unhealthy,
//! are not captured here.)
//!
//! This crate's tests cannot pause tokio's clock (its dev-dependencies do not enable tokio's
//! `test-util`), so the monitor samples on the real clock, every `EVERY`, and the tests count
//! samples instead of measuring time: each scripted step is one sample, and a report is
//! recorded with the number of the sample it came from. No assertion is about how long
//! anything took; the wall-clock limit in `until_samples` only keeps a broken monitor from
//! hanging the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::protocol::{GpuDevice, GpuHealth};
use cadre_actors::{Error, WorkerIdentity};
use cadre_gpu::{GpuError, HealthLimits, HealthSample};
use cadre_runtime::gpu::{GpuMonitor, GpuMonitorConfig, HealthSource};
use cadre_supervisor::{SupervisorSpec, WorkerSpec};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// How often the monitor samples in these tests. Long enough that a report's answer is back
/// long before the next sample (the scheduler answers at once, on the same thread).
const EVERY: Duration = Duration::from_millis(100);

fn worker() -> WorkerIdentity {
    WorkerIdentity::new("test-node", "cpu-0")
}
const GPU_A: &str = "GPU-00000000-0000-0000-0000-00000000000a";
const GPU_B: &str = "GPU-00000000-0000-0000-0000-00000000000b";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

/// One scripted sample.
#[derive(Debug, Clone)]
enum Step {
    /// A reading at this temperature (the limit is 90 C), no ECC errors.
    Celsius(u32),
    /// A reading with this many uncorrected ECC errors, at a fine temperature.
    Ecc(u64),
    /// A reading in which NVML could read nothing (every field `None`).
    Blank,
    /// The device cannot be read.
    Fail,
}

use Step::{Blank, Celsius, Ecc, Fail};

const FINE: Step = Celsius(50);
const HOT: Step = Celsius(95);

/// One device's script: its steps are taken one per sample; the last one repeats forever.
struct DeviceScript {
    steps: VecDeque<Step>,
    samples: usize,
}

/// A health source that answers from per-device scripts and counts the samples taken.
#[derive(Clone, Default)]
struct ScriptedSource {
    devices: Arc<Mutex<HashMap<String, DeviceScript>>>,
}

impl ScriptedSource {
    fn new(scripts: &[(&str, Vec<Step>)]) -> ScriptedSource {
        let devices = scripts
            .iter()
            .map(|(uuid, steps)| {
                assert!(!steps.is_empty());
                (
                    (*uuid).to_owned(),
                    DeviceScript {
                        steps: steps.iter().cloned().collect(),
                        samples: 0,
                    },
                )
            })
            .collect();
        ScriptedSource {
            devices: Arc::new(Mutex::new(devices)),
        }
    }

    /// How many samples of `uuid` were taken.
    fn samples(&self, uuid: &str) -> usize {
        lock(&self.devices).get(uuid).map_or(0, |d| d.samples)
    }
}

impl HealthSource for ScriptedSource {
    fn sample(&self, uuid: &str) -> Result<HealthSample, GpuError> {
        let mut devices = lock(&self.devices);
        let device = devices
            .get_mut(uuid)
            .unwrap_or_else(|| panic!("sampled unknown device {uuid}"));
        device.samples += 1;
        let step = if device.steps.len() > 1 {
            device.steps.pop_front().unwrap()
        } else {
            device.steps[0].clone()
        };
        match step {
            Celsius(t) => Ok(HealthSample {
                temperature_celsius: Some(t),
                ecc_uncorrected: Some(0),
                ..HealthSample::default()
            }),
            Ecc(n) => Ok(HealthSample {
                temperature_celsius: Some(50),
                ecc_uncorrected: Some(n),
                ..HealthSample::default()
            }),
            Blank => Ok(HealthSample::default()),
            Fail => Err(GpuError::Nvml {
                op: "sample",
                reason: "scripted failure".to_owned(),
            }),
        }
    }
}

/// A report the fake scheduler received, with the sample (of that device) it came from.
#[derive(Debug, Clone)]
struct Report {
    msg: GpuHealth,
    sample: usize,
    accepted: bool,
}

/// A scheduler stand-in: records every `GpuHealth` and answers `Ok`, or `Err` for as many
/// reports as `refuse` says (in order: `true` refuses the next report).
struct FakeScheduler {
    source: ScriptedSource,
    uuids: HashMap<u32, String>,
    refuse: VecDeque<bool>,
    reports: Arc<Mutex<Vec<Report>>>,
}

impl Actor for FakeScheduler {
    type Context = Context<Self>;
}

impl Handler<GpuHealth> for FakeScheduler {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: GpuHealth, _: &mut Self::Context) -> Self::Result {
        let uuid = &self.uuids[&msg.index];
        let sample = self.source.samples(uuid);
        let refused = self.refuse.pop_front().unwrap_or(false);
        lock(&self.reports).push(Report {
            msg,
            sample,
            accepted: !refused,
        });
        if refused {
            Err(Error::Unavailable {
                reason: "scripted refusal".to_owned(),
            })
        } else {
            Ok(())
        }
    }
}

fn devices(uuids: &[&str]) -> Vec<GpuDevice> {
    uuids
        .iter()
        .enumerate()
        .map(|(i, uuid)| GpuDevice {
            index: i as u32,
            uuid: (*uuid).to_owned(),
            ordinal: i as u32,
        })
        .collect()
}

/// Runs a monitor over the devices of `scripts` (index `i` is the `i`-th) until every device
/// has been sampled `samples` times, with a scheduler that refuses per `refuse`; returns what
/// the scheduler received from the samples before the last, in order. (A report of the last
/// sample, or of one the monitor takes while it stops, may or may not arrive before the
/// monitor stops, so it is left out; every earlier one arrived a whole `EVERY` before the next
/// sample.)
fn monitor(scripts: &[(&str, Vec<Step>)], refuse: &[bool], samples: usize) -> Vec<Report> {
    let source = ScriptedSource::new(scripts);
    let uuids: Vec<&str> = scripts.iter().map(|(u, _)| *u).collect();
    let devices = devices(&uuids);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&reports);
    actix::System::new().block_on(async move {
        let scheduler = FakeScheduler {
            source: source.clone(),
            uuids: devices.iter().map(|d| (d.index, d.uuid.clone())).collect(),
            refuse: refuse.iter().copied().collect(),
            reports: r,
        }
        .start();
        let config = Arc::new(GpuMonitorConfig {
            devices,
            worker: worker(),
            every: EVERY,
            limits: HealthLimits::default(),
            source: Arc::new(source.clone()),
            scheduler: scheduler.recipient(),
        });
        let spec = WorkerSpec::new("gpu-health", move || GpuMonitor::new(Arc::clone(&config)));
        let root = SupervisorSpec::one_for_one()
            .child(spec)
            .start("test")
            .await
            .unwrap();
        until_samples(&source, &uuids, samples).await;
        root.stop().await.unwrap();
    });
    let mut reports = lock(&reports).clone();
    for r in &reports {
        assert_eq!(r.msg.worker, worker());
    }
    reports.retain(|r| r.sample < samples);
    reports
}

/// Waits until every device in `uuids` has been sampled `n` times.
async fn until_samples(source: &ScriptedSource, uuids: &[&str], n: usize) {
    // Only a guard against a monitor that stopped sampling: n samples take n * EVERY.
    let limit = EVERY * (n as u32) * 20 + Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + limit;
    while uuids.iter().any(|u| source.samples(u) < n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the monitor stopped sampling: {:?}",
            uuids.iter().map(|u| source.samples(u)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Each report as (device index, healthy, sample number).
fn summary(reports: &[Report]) -> Vec<(u32, bool, usize)> {
    reports
        .iter()
        .map(|r| (r.msg.index, r.msg.healthy, r.sample))
        .collect()
}

#[test]
fn healthy_samples_send_nothing() {
    // Below the limit, at it, and with readings NVML cannot give (no temperature, no ECC).
    let reports = monitor(
        &[
            (GPU_A, vec![FINE, Celsius(90), FINE]),
            (GPU_B, vec![Blank, FINE]),
        ],
        &[],
        5,
    );
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn a_hot_device_is_reported_unhealthy_on_every_sample_and_healthy_once_when_it_cools() {
    let reports = monitor(
        &[(GPU_A, vec![FINE, HOT, HOT, Celsius(99), HOT, FINE])],
        &[],
        9,
    );
    assert_eq!(
        summary(&reports),
        vec![
            (0, false, 2),
            (0, false, 3),
            (0, false, 4),
            (0, false, 5),
            (0, true, 6)
        ]
    );
    // Each report says why the device is unhealthy at that sample.
    let reasons: Vec<&str> = reports.iter().map(|r| r.msg.reason.as_str()).collect();
    for (i, celsius) in [(0, 95), (1, 95), (2, 99), (3, 95)] {
        assert!(
            reasons[i].contains(&format!("temperature {celsius} C above 90 C")),
            "{i}: {}",
            reasons[i]
        );
    }
    assert!(reports.iter().all(|r| r.accepted));
}

#[test]
fn a_device_hot_from_the_first_sample_is_reported_at_once_and_on_every_sample() {
    let reports = monitor(&[(GPU_A, vec![HOT])], &[], 5);
    assert_eq!(
        summary(&reports),
        vec![(0, false, 1), (0, false, 2), (0, false, 3), (0, false, 4)]
    );
}

#[test]
fn an_unhealthy_device_is_reported_on_every_sample_a_recovery_once_and_a_healthy_one_never() {
    // The scheduler takes every report: the repeats are not resends of refused reports. Once
    // the device recovered, it stays healthy for six samples and nothing more is sent.
    let reports = monitor(
        &[
            (GPU_A, vec![FINE]),
            (GPU_B, vec![FINE, HOT, Ecc(3), Fail, HOT, FINE]),
        ],
        &[],
        12,
    );
    assert_eq!(
        summary(&reports),
        vec![
            (1, false, 2),
            (1, false, 3),
            (1, false, 4),
            (1, false, 5),
            (1, true, 6)
        ]
    );
    assert!(reports.iter().all(|r| r.accepted));
    assert!(
        reports[4].msg.reason.contains("within limits"),
        "{}",
        reports[4].msg.reason
    );
}

#[test]
fn an_unreadable_device_counts_as_unhealthy() {
    // Unhealthy for any reason (unreadable, ECC errors, too hot) is reported on every sample,
    // with the reason of that sample, until the device is healthy again.
    let reports = monitor(
        &[(GPU_A, vec![FINE, Fail, Fail, Ecc(2), HOT, Fail, FINE, FINE])],
        &[],
        10,
    );
    assert_eq!(
        summary(&reports),
        vec![
            (0, false, 2),
            (0, false, 3),
            (0, false, 4),
            (0, false, 5),
            (0, false, 6),
            (0, true, 7)
        ]
    );
    let reasons: Vec<&str> = reports.iter().map(|r| r.msg.reason.as_str()).collect();
    for (i, part) in [
        (0, "cannot be read"),
        (1, "cannot be read"),
        (2, "uncorrected ECC"),
        (3, "temperature 95 C above 90 C"),
        (4, "cannot be read"),
    ] {
        assert!(reasons[i].contains(part), "{i}: {}", reasons[i]);
    }
}

#[test]
fn only_the_unhealthy_device_is_reported() {
    let reports = monitor(
        &[(GPU_A, vec![FINE]), (GPU_B, vec![FINE, FINE, Ecc(1)])],
        &[],
        6,
    );
    assert_eq!(
        summary(&reports),
        vec![(1, false, 3), (1, false, 4), (1, false, 5)]
    );
    for r in &reports {
        assert!(r.msg.reason.contains("uncorrected ECC"), "{}", r.msg.reason);
    }
}

#[test]
fn a_recovery_the_scheduler_refused_is_sent_again_on_the_next_sample() {
    // Unhealthy: refused, accepted, accepted (sent on every sample either way). Then the
    // recovery: refused twice, so sent again on the next samples, then accepted and not sent
    // again.
    let reports = monitor(
        &[(GPU_A, vec![HOT, HOT, HOT, FINE])],
        &[true, false, false, true, true],
        9,
    );
    assert_eq!(
        summary(&reports),
        vec![
            (0, false, 1),
            (0, false, 2),
            (0, false, 3),
            (0, true, 4),
            (0, true, 5),
            (0, true, 6),
        ]
    );
    let accepted: Vec<bool> = reports.iter().map(|r| r.accepted).collect();
    assert_eq!(accepted, vec![false, true, true, false, false, true]);
}

#[test]
fn a_refused_report_whose_device_recovered_meanwhile_is_not_sent() {
    // Refused while hot; by the next sample the device is fine again, which is what the
    // scheduler already believes: nothing to send.
    let reports = monitor(&[(GPU_A, vec![HOT, FINE])], &[true], 5);
    assert_eq!(summary(&reports), vec![(0, false, 1)]);
    assert!(!reports[0].accepted);
}

/// Every value each counter and gauge took, by `name{label=value,...}`, in order (a counter's
/// entries are its running totals).
#[derive(Clone, Default)]
struct History(Arc<Mutex<HashMap<String, Vec<f64>>>>);

/// One metric's handle in a [`History`].
struct Series {
    key: String,
    history: History,
}

impl Series {
    fn push(&self, f: impl FnOnce(f64) -> f64) {
        let mut all = lock(&self.history.0);
        let values = all.entry(self.key.clone()).or_default();
        let next = f(values.last().copied().unwrap_or(0.0));
        values.push(next);
    }
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        self.push(|last| last + value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(|_| value as f64);
    }
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        self.push(|last| last + value);
    }
    fn decrement(&self, value: f64) {
        self.push(|last| last - value);
    }
    fn set(&self, value: f64) {
        self.push(|_| value);
    }
}

impl History {
    fn series(&self, key: &Key) -> Arc<Series> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Series {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            history: self.clone(),
        })
    }

    fn of(&self, key: &str) -> Vec<f64> {
        lock(&self.0).get(key).cloned().unwrap_or_default()
    }
}

impl Recorder for History {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn every_sample_is_exported_and_a_refusal_is_counted() {
    let history = History::default();
    let reports = {
        // Every actor of the test runs on this thread.
        let _recorder = metrics::set_default_local_recorder(&history);
        monitor(
            &[(GPU_A, vec![Celsius(70), HOT, Fail, Blank, FINE])],
            &[true],
            7,
        )
    };
    assert_eq!(
        summary(&reports),
        vec![(0, false, 2), (0, false, 3), (0, true, 4)]
    );
    // Healthy while the readings NVML gives are within limits, absent ones included.
    let healthy = history.of(&format!("cadre_gpu_healthy{{device={GPU_A}}}"));
    assert!(healthy.len() >= 7, "{healthy:?}");
    assert_eq!(healthy[..7], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    // An unreadable sample and absent readings leave the temperature as it was.
    let celsius = history.of(&format!("cadre_gpu_temperature_celsius{{device={GPU_A}}}"));
    assert_eq!(celsius[..3], [70.0, 95.0, 50.0]);
    assert_eq!(
        history.of("cadre_gpu_errors_total{kind=health_refused}"),
        vec![1.0]
    );
}
