//! A seeded fuzz of the frame decoder, the message decoders and the handshake: random byte
//! streams, cut at random, and valid frames mutated at random, must give frames within the
//! limit or typed errors, never a panic, an allocation past the limit or a hang.
//!
//! `CADRE_WIRE_FUZZ_ITERS` (default 4,000) bounds the run; `CADRE_WIRE_FUZZ_SEED` replays one
//! iteration: a failure prints the seed to set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use cadre_wire::frame::{decode, encode, HEADER};
use cadre_wire::handshake::{MAGIC, PREAMBLE};
use cadre_wire::{
    accept, FrameDecoder, HandshakeConfig, Hello, HelloAnswer, ToScheduler, ToWorker, VersionRange,
    DEFAULT_MAX_FRAME, PROTOCOL,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{split, AsyncWriteExt};

const BASE_SEED: u64 = 0xC0DE_F00D_2026_1207;
const MAX: u32 = 512;

fn iterations() -> u64 {
    std::env::var("CADRE_WIRE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000)
}

/// Runs `case` for every seed (or the one in `CADRE_WIRE_FUZZ_SEED`), naming the seed that fails.
fn each_seed(name: &str, iters: u64, case: impl Fn(&mut SmallRng)) {
    let seeds: Vec<u64> = match std::env::var("CADRE_WIRE_FUZZ_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (0..iters)
            .map(|i| BASE_SEED ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect(),
    };
    for seed in seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            case(&mut SmallRng::seed_from_u64(seed))
        }));
        if outcome.is_err() {
            panic!("{name} failed: replay with CADRE_WIRE_FUZZ_SEED={seed}");
        }
    }
}

fn decode_every_type(frame: &[u8]) {
    drop(decode::<ToScheduler>(frame));
    drop(decode::<ToWorker>(frame));
    drop(decode::<Hello>(frame));
    drop(decode::<HelloAnswer>(frame));
}

/// Cuts `stream` at random into a decoder with a small limit and checks what comes out.
fn feed(rng: &mut SmallRng, stream: &[u8]) {
    let mut decoder = FrameDecoder::new(MAX);
    let mut rest = stream;
    let mut pushed = 0usize;
    'outer: while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(300));
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        decoder.push(piece);
        pushed += n;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= MAX as usize);
                    decode_every_type(&frame);
                }
                Ok(None) => break,
                // The stream is out of step after an error: a connection would close here.
                Err(_) => break 'outer,
            }
        }
        assert!(decoder.buffered() <= pushed);
    }
}

fn random_bytes(rng: &mut SmallRng, max_len: usize) -> Vec<u8> {
    let len = rng.random_range(0..max_len);
    let mut out: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    // Often start with a plausible header, so payloads get decoded too.
    if len > HEADER && rng.random_bool(0.5) {
        let payload = rng.random_range(1..=(len - HEADER) as u32);
        out[..HEADER].copy_from_slice(&payload.to_be_bytes());
    }
    out
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    frames.push(encode(&support::hello(), DEFAULT_MAX_FRAME).unwrap());
    frames.extend(
        support::hello_answers()
            .iter()
            .map(|m| encode(m, DEFAULT_MAX_FRAME).unwrap()),
    );
    frames.extend(
        support::to_scheduler()
            .iter()
            .map(|m| encode(m, DEFAULT_MAX_FRAME).unwrap()),
    );
    frames.extend(
        support::to_worker()
            .iter()
            .map(|m| encode(m, DEFAULT_MAX_FRAME).unwrap()),
    );
    frames
}

fn mutate(rng: &mut SmallRng, frame: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..6) {
        if frame.is_empty() {
            return;
        }
        let at = rng.random_range(0..frame.len());
        match rng.random_range(0..5) {
            0 => frame[at] ^= 1 << rng.random_range(0..8),
            1 => frame[at] = rng.random(),
            2 => {
                frame.remove(at);
            }
            3 => frame.insert(at, rng.random()),
            _ => {
                let end = rng.random_range(at..frame.len());
                let copy = frame[at..end].to_vec();
                let to = rng.random_range(0..frame.len());
                frame.splice(to..to, copy);
            }
        }
    }
}

#[test]
fn random_streams_give_bounded_frames_or_errors() {
    each_seed("random streams", iterations(), |rng| {
        let stream = random_bytes(rng, 2048);
        feed(rng, &stream);
    });
}

#[test]
fn mutated_frames_decode_or_are_refused() {
    let frames = valid_frames();
    each_seed("mutated frames", iterations(), |rng| {
        let mut stream = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let mut frame = frames[rng.random_range(0..frames.len())].clone();
            mutate(rng, &mut frame);
            stream.extend_from_slice(&frame);
        }
        // The payloads alone too, past the framing.
        decode_every_type(stream.get(HEADER..).unwrap_or_default());
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        decoder.push(&stream);
        while let Ok(Some(frame)) = decoder.next_frame() {
            decode_every_type(&frame);
        }
        feed(rng, &stream);
    });
}

#[test]
fn preambles_and_negotiation_hold_their_rules() {
    each_seed("preambles", iterations(), |rng| {
        let mut bytes: [u8; PREAMBLE] = rng.random();
        if rng.random_bool(0.7) {
            bytes[..4].copy_from_slice(&MAGIC);
        }
        let Ok(theirs) = VersionRange::from_preamble(bytes) else {
            return;
        };
        assert!(1 <= theirs.min && theirs.min <= theirs.max);
        let ours = VersionRange {
            min: rng.random_range(1..5),
            max: rng.random_range(5..9),
        };
        match ours.negotiate(theirs) {
            Some(v) => {
                assert!(ours.min <= v && v <= ours.max && theirs.min <= v && v <= theirs.max);
                assert!(v == ours.max || v == theirs.max);
            }
            None => assert!(theirs.max < ours.min || theirs.min > ours.max),
        }
    });
}

#[test]
fn the_scheduler_side_never_hangs_or_panics_on_garbage() {
    let iters = (iterations() / 20).max(50);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let frames = valid_frames();
    each_seed("handshakes", iters, |rng| {
        let mut stream = Vec::new();
        if rng.random_bool(0.7) {
            stream.extend_from_slice(&PROTOCOL.preamble());
        }
        if rng.random_bool(0.5) {
            let mut frame = frames[rng.random_range(0..frames.len())].clone();
            mutate(rng, &mut frame);
            stream.extend_from_slice(&frame);
        } else {
            stream.extend(random_bytes(rng, 600));
        }
        let close = rng.random_bool(0.5);
        rt.block_on(async {
            let (mut a, s) = tokio::io::duplex(1 << 16);
            a.write_all(&stream).await.unwrap();
            if close {
                drop(a.shutdown().await);
            }
            let (r, w) = split(s);
            let config = HandshakeConfig::default();
            // Bounded by the handshake's own deadline (virtual time).
            let outcome = tokio::time::timeout(
                config.timeout + Duration::from_secs(1),
                accept(r, w, &config),
            )
            .await;
            assert!(outcome.is_ok(), "the handshake outlived its deadline");
            drop(a);
        });
    });
}
