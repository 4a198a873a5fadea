//! The node's open-files limit is raised to its hard limit. A test binary of its own: it lowers
//! the whole process's soft limit first, which would starve tests running beside it of
//! descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use cadre_cpu::rlimit::{raise_open_files, MAX_OPEN_FILES};

fn soft_and_hard() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes into the struct we own, for the duration of the call.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

#[test]
fn a_low_soft_limit_is_raised_to_the_hard_one_and_a_high_one_kept() {
    let (_, hard) = soft_and_hard();
    let low = libc::rlimit {
        rlim_cur: hard.min(256),
        rlim_max: hard,
    };
    // Safety: setrlimit reads the struct we pass, for the duration of the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let raised = raise_open_files().unwrap();
    let target = hard.min(MAX_OPEN_FILES);
    assert_eq!(raised.before, low.rlim_cur);
    assert_eq!(raised.after, target);
    assert_eq!(soft_and_hard().0, target);
    let again = raise_open_files().unwrap();
    assert_eq!((again.before, again.after), (target, target));
}
