//! The handshake: agreement, a version mismatch refused on both sides with both ranges named,
//! a peer that is not cadre, a stalled peer, an oversized or malformed `Hello`, a refusal the
//! agent reads, identity checks, and frames that follow the `Welcome` at once. Each refusal is
//! counted by reason and side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cadre_wire::frame::encode;
use cadre_wire::handshake::{MAGIC, PREAMBLE};
use cadre_wire::metrics::HANDSHAKE_REFUSALS;
use cadre_wire::{
    accept, connect, HandshakeConfig, HelloAnswer, Refusal, RefusalKind, ToWorker, VersionRange,
    WireError, DEFAULT_MAX_FRAME, PROTOCOL,
};
use support::{counter, hello, run, to_worker, welcome};
use tokio::io::{split, AsyncReadExt, AsyncWriteExt, DuplexStream};

fn pair() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(4096)
}

#[test]
fn agent_and_scheduler_agree_and_frames_follow_the_welcome_at_once() {
    run(|| async {
        let (a, s) = pair();
        let config = HandshakeConfig::default();
        let scheduler = tokio::spawn(async move {
            let (r, w) = split(s);
            let (mut conn, hello) = accept(r, w, &config).await.unwrap();
            assert_eq!(hello, support::hello());
            hello.validate().unwrap();
            // The welcome and the next frames in one burst: none may be lost to the handshake.
            conn.writer
                .send(&HelloAnswer::Welcome(welcome()))
                .await
                .unwrap();
            for m in to_worker() {
                conn.writer.send(&m).await.unwrap();
            }
            conn.version
        });
        let (r, w) = split(a);
        let (mut conn, got) = connect(r, w, &config, &hello()).await.unwrap();
        assert_eq!(got, welcome());
        assert_eq!(conn.version, PROTOCOL.max);
        for expected in to_worker() {
            assert_eq!(conn.reader.recv::<ToWorker>().await.unwrap(), expected);
        }
        assert_eq!(scheduler.await.unwrap(), PROTOCOL.max);
    });
}

#[test]
fn the_highest_common_version_is_chosen() {
    let a = VersionRange { min: 1, max: 4 };
    assert_eq!(a.negotiate(VersionRange { min: 2, max: 3 }), Some(3));
    assert_eq!(a.negotiate(VersionRange { min: 4, max: 9 }), Some(4));
    assert_eq!(a.negotiate(VersionRange { min: 5, max: 9 }), None);
    assert_eq!(VersionRange { min: 2, max: 2 }.to_string(), "2");
    assert_eq!(a.to_string(), "1..4");
}

#[test]
fn a_version_mismatch_is_refused_on_both_sides_naming_both_ranges() {
    let snap = run(|| async {
        let (a, s) = pair();
        let scheduler = tokio::spawn(async move {
            let (r, w) = split(s);
            accept(r, w, &HandshakeConfig::default()).await.map(|_| ())
        });
        let agent_config = HandshakeConfig {
            versions: VersionRange { min: 2, max: 2 },
            ..HandshakeConfig::default()
        };
        let (r, w) = split(a);
        let agent = connect(r, w, &agent_config, &hello()).await.map(|_| ());
        let scheduler = scheduler.await.unwrap();
        for err in [agent.unwrap_err(), scheduler.unwrap_err()] {
            assert!(matches!(err, WireError::VersionMismatch { .. }), "{err:?}");
            assert_eq!(err.to_string(), "agent speaks 2, scheduler 1");
        }
    });
    for side in ["agent", "scheduler"] {
        assert_eq!(
            counter(
                &snap,
                HANDSHAKE_REFUSALS,
                &[("reason", "version"), ("side", side)]
            ),
            1,
            "{side}"
        );
    }
}

#[test]
fn a_peer_that_is_not_cadre_is_refused_on_its_first_bytes() {
    let snap = run(|| async {
        let (mut a, s) = pair();
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (r, w) = split(s);
        let err = accept(r, w, &HandshakeConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        match err {
            WireError::NotCadre { found } => assert_eq!(&found, b"GET "),
            other => panic!("expected NotCadre, got {other:?}"),
        }
        // The scheduler answered nothing to a peer that is not cadre.
        drop(a.write_all(b"x").await);
        let mut buf = Vec::new();
        drop(tokio::time::timeout(Duration::from_millis(10), a.read_to_end(&mut buf)).await);
        assert!(buf.is_empty(), "{buf:?}");
    });
    assert_eq!(
        counter(&snap, HANDSHAKE_REFUSALS, &[("reason", "not_cadre")]),
        1
    );
}

#[test]
fn a_stalled_peer_is_dropped_at_the_deadline() {
    let snap = run(|| async {
        // Silent from the start.
        let (_a, s) = pair();
        let (r, w) = split(s);
        let start = tokio::time::Instant::now();
        let err = accept(r, w, &HandshakeConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::HandshakeTimeout {
                    waiting_for: "preamble",
                    timeout_ms: 10_000
                }
            ),
            "{err:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        // A preamble, then nothing: the hello never comes.
        let (mut a, s) = pair();
        a.write_all(&PROTOCOL.preamble()).await.unwrap();
        let (r, w) = split(s);
        let err = accept(r, w, &HandshakeConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::HandshakeTimeout {
                    waiting_for: "hello",
                    ..
                }
            ),
            "{err:?}"
        );

        // An agent whose scheduler never answers its hello.
        let (a, mut s) = pair();
        let (r, w) = split(a);
        let agent = tokio::spawn(async move {
            connect(r, w, &HandshakeConfig::default(), &hello())
                .await
                .map(|_| ())
        });
        let mut preamble = [0u8; PREAMBLE];
        s.read_exact(&mut preamble).await.unwrap();
        s.write_all(&PROTOCOL.preamble()).await.unwrap();
        let err = agent.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                WireError::HandshakeTimeout {
                    waiting_for: "welcome",
                    ..
                }
            ),
            "{err:?}"
        );
        drop(s);
    });
    assert_eq!(
        counter(&snap, HANDSHAKE_REFUSALS, &[("reason", "timeout")]),
        3
    );
}

#[test]
fn a_hello_of_two_gigabytes_or_of_garbage_is_refused() {
    let snap = run(|| async {
        let (mut a, s) = pair();
        a.write_all(&PROTOCOL.preamble()).await.unwrap();
        a.write_all(&(1u32 << 31).to_be_bytes()).await.unwrap();
        let (r, w) = split(s);
        let err = accept(r, w, &HandshakeConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, WireError::Oversized { len, max } if len == 1 << 31 && max == 1 << 20),
            "{err:?}"
        );

        let (mut a, s) = pair();
        a.write_all(&PROTOCOL.preamble()).await.unwrap();
        a.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
        let (r, w) = split(s);
        let err = accept(r, w, &HandshakeConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, WireError::Malformed { what: "hello", .. }),
            "{err:?}"
        );

        // A preamble with an empty version range.
        let (mut a, s) = pair();
        let mut bad = [0u8; PREAMBLE];
        bad[..4].copy_from_slice(&MAGIC);
        bad[4..].copy_from_slice(&[0, 3, 0, 1]);
        a.write_all(&bad).await.unwrap();
        let (r, w) = split(s);
        let err = accept(r, w, &HandshakeConfig::default())
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Malformed {
                    what: "preamble",
                    ..
                }
            ),
            "{err:?}"
        );
    });
    assert_eq!(
        counter(&snap, HANDSHAKE_REFUSALS, &[("reason", "oversized")]),
        1
    );
    assert_eq!(
        counter(&snap, HANDSHAKE_REFUSALS, &[("reason", "malformed")]),
        2
    );
}

#[test]
fn the_agent_reads_the_schedulers_refusal() {
    let snap = run(|| async {
        let (a, s) = pair();
        let scheduler = tokio::spawn(async move {
            let (r, w) = split(s);
            let (mut conn, _) = accept(r, w, &HandshakeConfig::default()).await.unwrap();
            conn.writer
                .send(&HelloAnswer::Refused(Refusal::new(
                    RefusalKind::Identity,
                    "node-7f3a/cpu-0 is connected from 10.0.0.5",
                )))
                .await
                .unwrap();
        });
        let (r, w) = split(a);
        let err = connect(r, w, &HandshakeConfig::default(), &hello())
            .await
            .map(|_| ())
            .unwrap_err();
        match &err {
            WireError::Refused(refusal) => assert_eq!(refusal.kind, RefusalKind::Identity),
            other => panic!("expected Refused, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "refused: node-7f3a/cpu-0 is connected from 10.0.0.5 (identity)"
        );
        scheduler.await.unwrap();
    });
    assert_eq!(
        counter(
            &snap,
            HANDSHAKE_REFUSALS,
            &[("reason", "refused"), ("side", "agent")]
        ),
        1
    );
}

#[test]
fn a_hello_is_checked_field_by_field() {
    type Change = Box<dyn Fn(&mut cadre_wire::Hello)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|h| h.node.clear()),
            "hello.node: must not be empty",
        ),
        (
            Box::new(|h| h.node = "rack/7".to_owned()),
            "hello.node: must not hold whitespace, control characters or '/'",
        ),
        (
            Box::new(|h| h.worker = "cpu 0".to_owned()),
            "hello.worker: must not hold whitespace",
        ),
        (
            Box::new(|h| h.datacenter = "d".repeat(129)),
            "hello.datacenter: 129 bytes is longer than 128",
        ),
        (
            Box::new(|h| {
                h.labels.insert("rack".to_owned(), "v".repeat(300));
            }),
            "hello.labels.rack: a value of 300 bytes",
        ),
        (
            Box::new(|h| h.gpus[1].index = 7),
            "hello.gpus[1].index: 7 is not one of the capacity's GPUs",
        ),
    ];
    for (change, expected) in cases {
        let mut h = hello();
        change(&mut h);
        let refusal = h.validate().unwrap_err();
        assert!(
            refusal.message.starts_with(expected),
            "{} does not start with {expected}",
            refusal.message
        );
    }
    let mut ok = hello();
    ok.datacenter.clear();
    ok.validate().unwrap();
}

#[test]
fn a_refusal_kind_from_a_newer_peer_reads_as_other() {
    // `{"kind": "quota_exceeded", "message": "m"}`, a kind this build does not know.
    let value = serde_json::json!({"kind": "quota_exceeded", "message": "m"});
    let payload = rmp_serde::to_vec_named(&value).unwrap();
    let refusal: Refusal = rmp_serde::from_slice(&payload).unwrap();
    assert_eq!(refusal.kind, RefusalKind::Other);
    // And a frame of one stays under the hello limit.
    assert!(
        encode(&HelloAnswer::Refused(refusal), DEFAULT_MAX_FRAME)
            .unwrap()
            .len()
            < 64
    );
}
