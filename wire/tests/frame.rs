//! Framing: every message type round-trips; lengths over the limit are refused before any
//! allocation; empty, truncated and malformed frames are typed errors; frames split anywhere
//! decode the same; fields a newer peer adds are ignored and fields it omits take defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cadre_wire::frame::{decode, encode, HEADER};
use cadre_wire::{
    FrameDecoder, FrameReader, FrameWriter, Hello, HelloAnswer, ToScheduler, ToWorker, WireError,
    WireMessage, DEFAULT_MAX_FRAME,
};
use support::{counter, hello, hello_answers, run, to_scheduler, to_worker};
use tokio::io::AsyncWriteExt;

fn round_trip<M: WireMessage + PartialEq + std::fmt::Debug>(msg: &M) {
    let frame = encode(msg, DEFAULT_MAX_FRAME).unwrap();
    let len = u32::from_be_bytes(frame[..HEADER].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - HEADER);
    let back: M = decode(&frame[HEADER..]).unwrap();
    assert_eq!(&back, msg);
}

#[test]
fn every_message_round_trips() {
    round_trip(&hello());
    for m in hello_answers() {
        round_trip(&m);
    }
    for m in to_scheduler() {
        round_trip(&m);
    }
    for m in to_worker() {
        round_trip(&m);
    }
}

#[test]
fn a_length_over_the_limit_is_refused_from_its_four_bytes() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.push(&(1u32 << 31).to_be_bytes());
    match decoder.next_frame() {
        Err(WireError::Oversized { len, max }) => {
            assert_eq!(len, 1 << 31);
            assert_eq!(max, DEFAULT_MAX_FRAME);
        }
        other => panic!("expected Oversized, got {other:?}"),
    }
    // Nothing beyond the 4 bytes pushed was kept.
    assert_eq!(decoder.buffered(), 4);
}

#[test]
fn an_empty_frame_is_refused() {
    let mut decoder = FrameDecoder::new(64);
    decoder.push(&[0, 0, 0, 0, 1]);
    assert!(matches!(decoder.next_frame(), Err(WireError::Empty)));
}

#[test]
fn a_frame_split_anywhere_decodes_the_same() {
    let msgs = to_worker();
    let stream: Vec<u8> = msgs
        .iter()
        .flat_map(|m| encode(m, DEFAULT_MAX_FRAME).unwrap())
        .collect();
    for step in [1usize, 2, 3, 5, 7, 64, 1000] {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        for piece in stream.chunks(step) {
            decoder.push(piece);
            while let Some(frame) = decoder.next_frame().unwrap() {
                got.push(decode::<ToWorker>(&frame).unwrap());
            }
        }
        assert_eq!(got, msgs, "split every {step} bytes");
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn an_outgoing_message_over_the_limit_is_refused_not_sent() {
    let err = encode(&hello(), 16).unwrap_err();
    assert!(
        matches!(err, WireError::Encode { what: "hello", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("over the frame limit of 16"),
        "{err}"
    );
}

#[test]
fn a_payload_that_is_not_the_message_is_malformed_and_named() {
    // A MessagePack string where a map is expected, then bytes that are not MessagePack.
    for payload in [&[0xa3, b'a', b'b', b'c'][..], &[0xc1][..]] {
        let err = decode::<ToScheduler>(payload).unwrap_err();
        match &err {
            WireError::Malformed { what, .. } => assert_eq!(*what, "message to the scheduler"),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn a_newer_peers_extra_field_is_ignored_and_a_missing_default_is_filled() {
    let mut value = serde_json::to_value(hello()).unwrap();
    let map = value.as_object_mut().unwrap();
    map.insert("zone_affinity".to_owned(), serde_json::json!({"a": [1, 2]}));
    map.remove("labels");
    map.remove("running");
    let payload = rmp_serde::to_vec_named(&value).unwrap();
    let back: Hello = decode(&payload).unwrap();
    let mut expected = hello();
    expected.labels.clear();
    expected.running.clear();
    assert_eq!(back, expected);
}

#[test]
fn by_position_encoding_would_break_an_older_reader() {
    // Why frames use field names: an array with one element more than the struct is refused.
    #[derive(serde::Serialize)]
    struct Newer {
        id: u64,
        clock_us: u64,
        added: u32,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Older {
        id: u64,
        clock_us: u64,
    }
    let positional = rmp_serde::to_vec(&Newer {
        id: 1,
        clock_us: 2,
        added: 3,
    })
    .unwrap();
    assert!(rmp_serde::from_slice::<Older>(&positional).is_err());
    let named = rmp_serde::to_vec_named(&Newer {
        id: 1,
        clock_us: 2,
        added: 3,
    })
    .unwrap();
    assert!(rmp_serde::from_slice::<Older>(&named).is_ok());
}

#[test]
fn reader_and_writer_carry_frames_and_count_them() {
    let snap = run(|| async {
        let (a, b) = tokio::io::duplex(256);
        let mut writer = FrameWriter::new(a, DEFAULT_MAX_FRAME);
        let mut reader = FrameReader::new(b, DEFAULT_MAX_FRAME);
        let msgs = to_scheduler();
        let sent = msgs.clone();
        let send = tokio::spawn(async move {
            let mut bytes = 0;
            for m in &sent {
                bytes += writer.send(m).await.unwrap();
            }
            bytes
        });
        let mut got = Vec::new();
        for _ in 0..msgs.len() {
            got.push(reader.recv::<ToScheduler>().await.unwrap());
        }
        let bytes = send.await.unwrap();
        assert_eq!(got, msgs);
        // The writer is dropped: the peer closed between frames.
        assert!(matches!(
            reader.recv::<ToScheduler>().await,
            Err(WireError::Closed)
        ));
        assert!(bytes > 0);
    });
    let frames_out = counter(&snap, cadre_wire::metrics::FRAMES, &[("direction", "out")]);
    let frames_in = counter(&snap, cadre_wire::metrics::FRAMES, &[("direction", "in")]);
    assert_eq!(frames_out, to_scheduler().len() as u64);
    assert_eq!(frames_in, frames_out);
    assert_eq!(
        counter(
            &snap,
            cadre_wire::metrics::FRAMES,
            &[("direction", "in"), ("type", "renew")]
        ),
        1
    );
    assert_eq!(
        counter(&snap, cadre_wire::metrics::BYTES, &[("direction", "in")]),
        counter(&snap, cadre_wire::metrics::BYTES, &[("direction", "out")])
    );
}

#[test]
fn a_peer_closing_inside_a_frame_is_a_truncated_frame() {
    run(|| async {
        let (mut a, b) = tokio::io::duplex(256);
        let frame = encode(&HelloAnswer::Welcome(support::welcome()), DEFAULT_MAX_FRAME).unwrap();
        a.write_all(&frame[..frame.len() - 3]).await.unwrap();
        drop(a);
        let mut reader = FrameReader::new(b, DEFAULT_MAX_FRAME);
        match reader.recv::<HelloAnswer>().await {
            Err(WireError::Truncated { read, expected }) => {
                assert_eq!(read, frame.len() - 3);
                assert_eq!(expected, frame.len());
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    });
}

#[test]
fn a_reader_refuses_an_oversized_frame_without_waiting_for_its_payload() {
    run(|| async {
        let (mut a, b) = tokio::io::duplex(64);
        // Only the header is ever sent, and the writer stays open.
        a.write_all(&(1u32 << 31).to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::new(b, DEFAULT_MAX_FRAME);
        assert!(matches!(
            reader.recv::<ToScheduler>().await,
            Err(WireError::Oversized { len, .. }) if len == 1 << 31
        ));
        drop(a);
    });
}
