//! The agent's link to its scheduler against a scripted scheduler on loopback: a connection
//! the agent closes itself (here: its worker registers again) reaches the scheduler as a reset,
//! never as an orderly close, since the scheduler takes a FIN for the agent's exit and runs its
//! jobs again at once while the agent's tasks may still run until they are fenced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cadre_actors::ids::{WorkerId, WorkerIdentity};
use cadre_actors::protocol::{Assign, Kill, Register, WorkerLink};
use cadre_actors::sched::WorkerCapacity;
use cadre_cpu::launcher::LogReader;
use cadre_cpu::{BackendSetting, IoEngine};
use cadre_runtime::cluster::client::{ClientConfig, SchedulerClient};
use cadre_runtime::cluster::files::AgentFiles;
use cadre_supervisor::{SupervisorSpec, WorkerSpec};
use cadre_wire::{HandshakeConfig, HelloAnswer, ToScheduler, Welcome, WireError};
use tokio::net::TcpListener;

/// Takes assignments and kills and does nothing with them: the worker side is not under test.
struct NoWorker;

impl Actor for NoWorker {
    type Context = Context<Self>;
}

impl Handler<Assign> for NoWorker {
    type Result = ();
    fn handle(&mut self, _: Assign, _: &mut Context<Self>) {}
}

impl Handler<Kill> for NoWorker {
    type Result = ();
    fn handle(&mut self, _: Kill, _: &mut Context<Self>) {}
}

fn register(link: &Addr<NoWorker>) -> Register {
    Register {
        identity: WorkerIdentity::new("a1", "cpu-0"),
        datacenter: "dc1".to_owned(),
        labels: Default::default(),
        capacity: WorkerCapacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: Vec::new(),
        },
        link: WorkerLink {
            assign: link.clone().recipient(),
            kill: link.clone().recipient(),
        },
        address: None,
    }
}

/// Accepts one agent, welcomes it, and reads its frames until the connection ends: how it
/// ended.
async fn scripted_scheduler(listener: &TcpListener) -> WireError {
    let (stream, _) = listener.accept().await.unwrap();
    let (r, w) = stream.into_split();
    let (mut conn, _hello) = cadre_wire::accept(r, w, &HandshakeConfig::default())
        .await
        .unwrap();
    conn.writer
        .send(&HelloAnswer::Welcome(Welcome {
            worker: WorkerId(7),
            scheduler: "scripted".to_owned(),
            lease_ttl_ms: 10_000,
            clock_us: 0,
        }))
        .await
        .unwrap();
    loop {
        if let Err(error) = conn.reader.recv::<ToScheduler>().await {
            return error;
        }
    }
}

#[test]
fn a_connection_the_agent_closes_itself_reaches_the_scheduler_as_a_reset() {
    actix::System::new().block_on(closes_with_a_reset());
}

async fn closes_with_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("cadre-client-reset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = Arc::new(ClientConfig {
        join: vec![addr.to_string()],
        handshake: HandshakeConfig::default(),
        identity: WorkerIdentity::new("a1", "cpu-0"),
        datacenter: "dc1".to_owned(),
        labels: Default::default(),
        gpus: Vec::new(),
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(3),
        seed: 1,
        tls: None,
        files: AgentFiles {
            reader: LogReader::new(IoEngine::new(BackendSetting::Auto).unwrap()),
            dir: dir.clone(),
            scratch_dir: dir.clone(),
            max_bytes: 1 << 20,
        },
    });
    let spec = WorkerSpec::new("scheduler-link", move || {
        SchedulerClient::new(Arc::clone(&config))
    });
    let client = spec.addr();
    let root = SupervisorSpec::one_for_one()
        .child(spec)
        .start("test")
        .await
        .unwrap();
    let worker = NoWorker.start();

    let scheduler = actix_rt::spawn(async move {
        let first = scripted_scheduler(&listener).await;
        (first, listener)
    });
    assert_eq!(
        client.send(register(&worker)).await.unwrap().unwrap(),
        WorkerId(7)
    );
    // Registering again closes the first connection: the agent's own close.
    let again = client.send(register(&worker));
    let (ended, _listener) = tokio::time::timeout(Duration::from_secs(10), scheduler)
        .await
        .unwrap()
        .unwrap();
    match &ended {
        WireError::Io { source, .. } => assert_eq!(
            source.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{ended}"
        ),
        other => panic!(
            "the agent's close read as {other} ({}), not a reset",
            other.kind()
        ),
    }
    drop(again);
    root.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
