//! The I/O engine's suite, run against both backends, and the fallback to std when the kernel
//! refuses io_uring for real (a child process with a seccomp filter on io_uring_setup).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use cadre_cpu::engine::DIRECT_ALIGN;
use cadre_cpu::{Backend, BackendSetting, CpuError, IoBuf, IoEngine, IoFile, OpenMode};
use common::{engines, Scratch};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn suite(engine: &IoEngine, dir: &std::path::Path) {
    let name = engine.backend().as_str();
    let file = IoFile::open(dir.join(format!("{name}.dat")), OpenMode::create_truncate()).unwrap();

    // Round trip, and the buffer comes back whole for reuse.
    let data = pattern(10_000, 7);
    let back = engine
        .write_all_sync_at(&file, IoBuf::from(data.clone()), 0)
        .await
        .unwrap();
    assert_eq!(back.as_slice(), &data[..], "{name}: buffer handed back");
    let read = engine.read_at(&file, 10_000, 0).await.unwrap();
    assert_eq!(read.as_slice(), &data[..], "{name}: read what was written");

    // Reads past the end are short, not errors.
    let tail = engine.read_at(&file, 500, 9_900).await.unwrap();
    assert_eq!(tail.len(), 100, "{name}: short read at end of file");
    assert!(engine.read_at(&file, 10, 20_000).await.unwrap().is_empty());

    // A large transfer goes through whole.
    let big = pattern(3 << 20, 3);
    engine
        .write_all_at(&file, IoBuf::from(big.clone()), 1 << 20)
        .await
        .unwrap();
    engine.sync_data(&file).await.unwrap();
    let read = engine.read_at(&file, 3 << 20, 1 << 20).await.unwrap();
    assert!(read.as_slice() == &big[..], "{name}: 3 MiB round trip");

    // More concurrent requests than the ring has entries (linked pairs count twice).
    let many = 600usize;
    let futs = (0..many).map(|i| {
        let engine = engine.clone();
        let file = file.clone();
        async move {
            let rec = vec![(i % 251) as u8; 64];
            engine
                .write_all_sync_at(&file, IoBuf::from(rec), (i * 64) as u64)
                .await
        }
    });
    for r in futures_join_all(futs).await {
        r.unwrap();
    }
    let all = engine.read_at(&file, many * 64, 0).await.unwrap();
    for i in 0..many {
        assert!(
            all.as_slice()[i * 64..(i + 1) * 64]
                .iter()
                .all(|&b| b == (i % 251) as u8),
            "{name}: concurrent write {i} landed at its offset"
        );
    }

    // A caller that gives up mid-flight loses nothing and breaks nothing.
    {
        let mut fut = pin!(engine.read_at(&file, 1 << 20, 0));
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            r.unwrap();
        }
    }
    let again = engine.read_at(&file, 64, 64).await.unwrap();
    assert_eq!(
        again.as_slice(),
        &[1u8; 64][..],
        "{name}: works after a dropped request"
    );

    // Directories sync too (what makes a rename durable).
    engine
        .sync_all(&IoFile::open_dir(dir).unwrap())
        .await
        .unwrap();

    // Errors are typed and name the file: a write to a read-only descriptor.
    let ro = IoFile::open(dir.join(format!("{name}.dat")), OpenMode::read()).unwrap();
    match engine
        .write_all_at(&ro, IoBuf::from(vec![1, 2, 3]), 0)
        .await
    {
        Err(CpuError::Io { op, path, source }) => {
            assert_eq!(op, "write");
            assert!(path.ends_with(format!("{name}.dat")));
            assert_eq!(source.raw_os_error(), Some(libc::EBADF), "{name}");
        }
        other => panic!("{name}: expected an Io error, got {other:?}"),
    }
}

/// Polls all futures to completion on the current task (no extra dependency for join_all).
async fn futures_join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, h) in out.iter_mut().zip(handles.iter_mut()) {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *slot = Some(v);
                        *h = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test]
async fn the_same_suite_passes_on_every_backend() {
    let dir = Scratch::new("engine");
    for engine in engines() {
        suite(&engine, dir.path()).await;
    }
}

/// Thousands of fsyncs at once finish in bursts on the kernel's worker threads: more
/// completions than the completion queue holds must still all be answered (the overflow list
/// is flushed), never left waiting.
#[tokio::test]
async fn more_completions_than_the_queue_holds_are_all_answered() {
    let dir = Scratch::new("overflow");
    for engine in engines() {
        let file = IoFile::open(
            dir.path().join(format!("{}.sync", engine.backend())),
            OpenMode::create_truncate(),
        )
        .unwrap();
        // Each a write of dirty data and its fdatasync, so the syncs take real time and finish
        // in bursts while the submitting task is busy submitting.
        let syncs = (0..10_000u64).map(|i| {
            let engine = engine.clone();
            let file = file.clone();
            async move {
                let rec = IoBuf::from(vec![(i % 251) as u8; 512]);
                engine
                    .write_all_sync_at(&file, rec, i * 512)
                    .await
                    .map(|_| ())
            }
        });
        let all =
            tokio::time::timeout(std::time::Duration::from_secs(120), futures_join_all(syncs))
                .await
                .unwrap_or_else(|_| panic!("{}: completions lost (hang)", engine.backend()));
        assert_eq!(all.len(), 10_000);
        for r in all {
            r.unwrap();
        }
    }
}

#[tokio::test]
async fn direct_io_needs_aligned_buffers() {
    let dir = Scratch::new("direct");
    for engine in engines() {
        let path = dir.path().join(format!("{}.direct", engine.backend()));
        let mode = OpenMode {
            direct: true,
            ..OpenMode::create_truncate()
        };
        let file = IoFile::open(&path, mode).unwrap();
        if !file.is_direct() {
            println!(
                "SKIP O_DIRECT: the filesystem of {} refuses it",
                path.display()
            );
            return;
        }
        let misaligned = IoBuf::from(vec![0u8; 100]);
        match engine.write_all_at(&file, misaligned, 0).await {
            Err(CpuError::Misaligned { what, .. }) => {
                assert!(what == "length" || what == "buffer address")
            }
            other => panic!("expected Misaligned, got {other:?}"),
        }
        let mut buf = IoBuf::aligned(2 * DIRECT_ALIGN, DIRECT_ALIGN);
        buf.as_mut_slice().fill(0xab);
        engine.write_all_sync_at(&file, buf, 0).await.unwrap();
        let read = engine.read_at(&file, 2 * DIRECT_ALIGN, 0).await.unwrap();
        assert!(read.as_slice().iter().all(|&b| b == 0xab));
        match engine.read_at(&file, DIRECT_ALIGN, 100).await {
            Err(CpuError::Misaligned {
                what: "offset",
                value: 100,
                ..
            }) => {}
            other => panic!("expected a misaligned offset, got {other:?}"),
        }
    }
}

#[test]
fn the_backend_setting_parses_and_names_its_field() {
    assert_eq!(
        "auto".parse::<BackendSetting>().unwrap(),
        BackendSetting::Auto
    );
    assert_eq!(
        "uring".parse::<BackendSetting>().unwrap(),
        BackendSetting::Uring
    );
    assert_eq!(
        "std".parse::<BackendSetting>().unwrap(),
        BackendSetting::Std
    );
    let err = "epoll".parse::<BackendSetting>().unwrap_err();
    assert!(err.to_string().contains("io.backend"), "{err}");
}

#[tokio::test]
async fn the_std_backend_outside_a_runtime_is_a_typed_error() {
    // Built inside a runtime, used from a plain thread with none.
    let engine = IoEngine::new(BackendSetting::Std).unwrap();
    let dir = Scratch::new("noruntime");
    let file = IoFile::open(dir.path().join("f"), OpenMode::create_truncate()).unwrap();
    let res = std::thread::spawn(move || {
        let mut fut = pin!(engine.sync_data(&file));
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("no runtime: must fail at once"),
        }
    })
    .join()
    .unwrap();
    assert!(matches!(res, Err(CpuError::NoRuntime)), "{res:?}");
}

#[test]
fn outside_a_runtime_uring_is_refused_and_auto_takes_std() {
    match IoEngine::new(BackendSetting::Uring) {
        Err(CpuError::NoRuntime) => {}
        other => panic!("io_uring reaps on a tokio runtime; without one: {other:?}"),
    }
    assert_eq!(
        IoEngine::new(BackendSetting::Auto).unwrap().backend(),
        Backend::Std
    );
}

const SECCOMP_ENV: &str = "CADRE_TEST_DENY_IO_URING";

/// Runs only in the child the next test starts: denies io_uring_setup with EPERM through a
/// seccomp filter, then checks that `uring` is a typed error and `auto` falls back to std.
#[tokio::test]
async fn child_with_io_uring_denied() {
    if std::env::var(SECCOMP_ENV).is_err() {
        return;
    }
    deny_io_uring_setup();
    match IoEngine::new(BackendSetting::Uring) {
        Err(CpuError::UringUnavailable { step, source }) => {
            assert_eq!(step, "io_uring_setup");
            assert_eq!(source.raw_os_error(), Some(libc::EPERM));
        }
        other => panic!("forcing uring under seccomp must fail, got {other:?}"),
    }
    let engine = IoEngine::new(BackendSetting::Auto).unwrap();
    assert_eq!(engine.backend(), Backend::Std);
    let dir = Scratch::new("seccomp");
    suite(&engine, dir.path()).await;
    println!("CHILD-OK backend={}", engine.backend());
}

#[allow(unsafe_code)]
fn deny_io_uring_setup() {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // Safety: plain prctl calls; `prog` and `filter` outlive the call, which copies them.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn auto_falls_back_to_std_when_the_kernel_denies_io_uring() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_with_io_uring_denied",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SECCOMP_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("CHILD-OK backend=std"),
        "child did not run the suite:\n{stdout}\n{stderr}"
    );
}
