//! What the cpu crate says when things go wrong: a torn journal tail is one warn event with its
//! segment and offset and one counter increment; corruption is one error event and one counter
//! increment; a failed capture write is one error event naming the job; the engine's backend is
//! visible as `cadre_io_backend_info`. One test function, since the recorder is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::sync::{Arc, Mutex};

use cadre_cpu::journal::{Journal, JournalOptions};
use cadre_cpu::launcher::{CommandSpec, Launcher};
use cadre_cpu::{BackendSetting, IoEngine};
use common::Scratch;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

type Fields = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(Level, Fields)>>>);

impl Captured {
    fn take(&self) -> Vec<(Level, Fields)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().into(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().into(), value.into()));
    }
}

impl<S: Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Visitor(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn counter(snap: &Snapshotter, name: &str, label: (&str, &str)) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            DebugValue::Gauge(g) => g.into_inner() as u64,
            DebugValue::Histogram(_) => 0,
        })
        .sum()
}

fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap()
}

/// Warn-or-error events only: the ones an operator sees.
fn loud_events(events: &[(Level, Fields)]) -> Vec<&(Level, Fields)> {
    events.iter().filter(|(l, _)| *l <= Level::WARN).collect()
}

#[test]
fn every_failure_is_one_event_and_one_counter_increment() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().unwrap();
    let captured = Captured::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    // Current-thread, so every event of the journal and launcher lands on this thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = IoEngine::new(BackendSetting::Auto).unwrap();
        let backend = engine.backend().as_str();
        assert_eq!(
            counter(&snap, "cadre_io_backend_info", ("backend", backend)),
            1
        );
        let other = if backend == "uring" { "std" } else { "uring" };
        assert_eq!(
            counter(&snap, "cadre_io_backend_info", ("backend", other)),
            0
        );

        // A torn tail: one warn event with segment and offset, one counter increment.
        let dir = Scratch::new("obs-torn");
        let (j, _) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
            .await
            .unwrap();
        j.append(b"one".to_vec()).await.unwrap();
        j.close().await;
        let seg = first_segment(dir.path());
        let good = fs::metadata(&seg).unwrap().len();
        let mut bytes = fs::read(&seg).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1]);
        fs::write(&seg, &bytes).unwrap();
        captured.take();
        let (j, _) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
            .await
            .unwrap();
        j.close().await;
        let events = captured.take();
        let loud = loud_events(&events);
        assert_eq!(loud.len(), 1, "{loud:?}");
        let (level, fields) = loud[0];
        assert_eq!(*level, Level::WARN);
        assert_eq!(
            field(fields, "segment"),
            Some(seg.display().to_string().as_str())
        );
        assert_eq!(field(fields, "offset"), Some(good.to_string().as_str()));
        assert_eq!(
            counter(&snap, "cadre_journal_errors_total", ("kind", "torn_tail")),
            1
        );

        // Corruption before the tail: one error event, one counter increment, open fails.
        let dir = Scratch::new("obs-corrupt");
        let (j, _) = Journal::open(dir.path(), engine.clone(), JournalOptions::default())
            .await
            .unwrap();
        for i in 0..3u8 {
            j.append(vec![i; 20]).await.unwrap();
        }
        j.close().await;
        let seg = first_segment(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        bytes[32 + 8 + 3] ^= 0xff; // first record's payload, two records follow it
        fs::write(&seg, &bytes).unwrap();
        captured.take();
        assert!(
            Journal::open(dir.path(), engine.clone(), JournalOptions::default())
                .await
                .is_err()
        );
        let events = captured.take();
        let loud = loud_events(&events);
        assert_eq!(loud.len(), 1, "{loud:?}");
        assert_eq!(loud[0].0, Level::ERROR);
        assert_eq!(field(&loud[0].1, "kind"), Some("corrupt"));
        assert_eq!(
            counter(&snap, "cadre_journal_errors_total", ("kind", "corrupt")),
            1
        );

        // A capture write that fails (/dev/full): one error event naming the job and stream.
        if fs::metadata("/dev/full").is_ok() {
            let dir = Scratch::new("obs-capture");
            let launcher = Launcher::new(engine.clone());
            let spec = CommandSpec {
                argv: vec!["/bin/echo".into(), "hello".into()],
                stdout_log: "/dev/full".into(),
                stderr_log: dir.path().join("err"),
                ..CommandSpec::default()
            };
            captured.take();
            let before = counter(&snap, "cadre_launcher_errors_total", ("kind", "capture"));
            let mut p = launcher.spawn(&spec, "job-obs").unwrap();
            let report = p.wait().await.unwrap();
            assert!(!report.logs_complete);
            let events = captured.take();
            let loud = loud_events(&events);
            assert_eq!(loud.len(), 1, "{loud:?}");
            assert_eq!(field(&loud[0].1, "job_id"), Some("job-obs"));
            assert_eq!(field(&loud[0].1, "stream"), Some("stdout"));
            assert_eq!(
                counter(&snap, "cadre_launcher_errors_total", ("kind", "capture")),
                before + 1
            );
        } else {
            println!("SKIP capture failure: no /dev/full");
        }
    });
}
