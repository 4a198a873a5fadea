//! What the launcher does to a child between fork and exec (rlimits, the parent-death signal,
//! CPU affinity), prepared in the parent so the child only makes async-signal-safe calls, and
//! the signals it sends to whole process groups.

use std::io;
use std::sync::OnceLock;

use tokio::process::Command;

use crate::metrics as m;

use super::ResourceLimits;

/// Sends `signal` to process group `pgid`. `Ok(false)` when the group no longer exists.
/// Sends `SIGKILL` to process group `pgid`: `Ok(false)` when no such group exists. Refuses
/// groups 0 and 1.
pub(crate) fn kill_group(pgid: i32) -> io::Result<bool> {
    killpg(pgid, libc::SIGKILL)
}

#[allow(unsafe_code)]
pub(crate) fn killpg(pgid: i32, signal: i32) -> io::Result<bool> {
    if pgid <= 1 {
        // 0 would signal our own group and 1 is init's: never ours to signal.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // Safety: killpg takes two integers and touches no memory of ours; pgid > 1 was checked, so
    // it cannot address our own group (0).
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The most CPUs a `cpu_set_t` can name.
pub(super) const CPU_SET_CAPACITY: usize = libc::CPU_SETSIZE as usize;

/// The number of CPUs this machine is configured with (online or not).
#[allow(unsafe_code)]
pub(super) fn configured_cpus() -> usize {
    // Safety: sysconf reads a configuration value and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    match usize::try_from(n) {
        Ok(n) if n > 0 => n.min(CPU_SET_CAPACITY),
        _ => {
            static WARNED: OnceLock<()> = OnceLock::new();
            if WARNED.set(()).is_ok() {
                tracing::warn!(result = n, error = %io::Error::last_os_error(),
                    "sysconf(_SC_NPROCESSORS_CONF) failed; checking cpu_set against {CPU_SET_CAPACITY} CPUs");
                metrics::counter!(m::LAUNCHER_ERRORS, "kind" => "cpu_count").increment(1);
            }
            CPU_SET_CAPACITY
        }
    }
}

/// What the child does between fork and exec, all of it prepared in the parent so that the
/// child only makes async-signal-safe system calls on plain values.
#[derive(Clone, Copy)]
pub(super) struct ChildSetup {
    address_space: Option<libc::rlimit>,
    open_files: Option<libc::rlimit>,
    cpu_seconds: Option<libc::rlimit>,
    affinity: Option<libc::cpu_set_t>,
    /// The signal for `PR_SET_PDEATHSIG` and the pid of the process that must stay its parent.
    death_signal: Option<(libc::c_int, libc::pid_t)>,
}

impl ChildSetup {
    /// `cpus` must have passed [`CommandSpec::validate`] (every index below the capacity).
    pub(super) fn new(limits: &ResourceLimits, cpus: Option<&[usize]>) -> ChildSetup {
        let rlimit = |v: Option<u64>| {
            v.map(|v| libc::rlimit {
                rlim_cur: v as libc::rlim_t,
                rlim_max: v as libc::rlim_t,
            })
        };
        ChildSetup {
            address_space: rlimit(limits.address_space_bytes),
            open_files: rlimit(limits.open_files),
            cpu_seconds: rlimit(limits.cpu_seconds),
            affinity: cpus.map(cpu_set),
            death_signal: limits
                .parent_death_signal
                .map(|signal| (signal, std::process::id() as libc::pid_t)),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.address_space.is_none()
            && self.open_files.is_none()
            && self.cpu_seconds.is_none()
            && self.affinity.is_none()
            && self.death_signal.is_none()
    }
}

/// A `cpu_set_t` holding `cpus`; indices at or beyond its capacity are left out (validation
/// refuses them before this runs).
#[allow(unsafe_code)]
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // Safety: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < CPU_SET_CAPACITY) {
        // Safety: cpu < CPU_SETSIZE, so the bit lies inside the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Installs `setup` as the child's pre-exec hook (nothing when it asks for nothing, so that
/// std can keep using posix_spawn).
#[allow(unsafe_code)]
pub(super) fn install_child_setup(cmd: &mut Command, setup: ChildSetup) {
    if setup.is_empty() {
        return;
    }
    let hook = move || -> io::Result<()> {
        let limits = [
            (libc::RLIMIT_AS, setup.address_space),
            (libc::RLIMIT_NOFILE, setup.open_files),
            (libc::RLIMIT_CPU, setup.cpu_seconds),
        ];
        for (resource, limit) in limits {
            if let Some(limit) = limit {
                // Safety: setrlimit reads the rlimit value we pass by reference, which lives on
                // this stack frame for the duration of the call.
                if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some((signal, parent)) = setup.death_signal {
            // Safety: prctl with PR_SET_PDEATHSIG takes the signal number by value; getppid has
            // no arguments. Both are async-signal-safe.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will ever come.
            if unsafe { libc::getppid() } != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        if let Some(set) = &setup.affinity {
            // Safety: the set is a valid cpu_set_t of the size we pass, read by the kernel only
            // during the call; pid 0 is this (child) process.
            if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) }
                != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // Safety: the hook runs in the forked child before exec. It allocates nothing, takes no lock
    // and calls only setrlimit and sched_setaffinity (async-signal-safe system calls) on values
    // copied into the closure before the fork; io::Error::last_os_error does not allocate.
    unsafe {
        cmd.pre_exec(hook);
    }
}
