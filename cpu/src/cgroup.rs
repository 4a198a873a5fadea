//! Cgroups for command jobs: each task runs in a cgroup of its own, under the node's parent group,
//! with its CPU, memory and pids limits, its OOM kills counted, and a kill that reaches every
//! process in it, including those that left its process group (`setsid -f child`).
//!
//! [`Cgroups::open`] detects the hierarchy from `/proc/self/mountinfo` and `/proc/self/cgroup`:
//! cgroup v2 where the unified tree offers `cpu`, `memory` and `pids` to the node's own group,
//! else v1 where `cpu`, `memory`, `pids` and `freezer` are mounted. It creates (or reuses) the
//! parent group `<the node's own cgroup>/<parent>` in each hierarchy. Where cgroups cannot be used
//! (not root, read-only, nothing mounted, a controller missing, v2's no-internal-process rule)
//! it returns [`CpuError::CgroupUnavailable`](crate::CpuError::CgroupUnavailable) with the
//! reason; falling back to process groups is the caller's decision.
//!
//! Guarantees:
//! - A child spawned after [`TaskCgroup::join_on_exec`] moves itself into the group between fork
//!   and exec, before it runs any of the job's code; if it cannot, the spawn fails, so a job never
//!   runs outside its group. On v1 a thread can instead spawn from inside the group's memory,
//!   pids and freezer groups ([`TaskCgroup::run_inside`]): the child starts in them, the spawn
//!   needs no fork of the node, and the child (with anything it forked meanwhile) is moved into
//!   the CPU group by pid before the spawn returns (the launcher does this where it can).
//! - [`TaskCgroup::kill_all`] freezes the group (v1 freezer, v2 `cgroup.freeze`) so nothing forks
//!   while it reads the pids and sends `SIGKILL`, then thaws it, and repeats until the group and
//!   its descendants are empty, in a bounded number of rounds; v2 uses `cgroup.kill` where the
//!   kernel has it. Pids come from `cgroup.procs` while the group is frozen, so they cannot be
//!   reused meanwhile.
//! - Task names are one path component of at most 64 bytes. On v1 the node names its task
//!   groups `slot-<n>` and reuses emptied ones (see `spares`), so a group's name says nothing of
//!   the task in it ([`TaskCgroup::label`] does, and the launcher's log); on v2 a group is named
//!   after its task. Every file read from `/proc` or `/sys` is size-checked before use.
//! - Every failure emits one `tracing` event and counts in [`m::CGROUP_ERRORS`] by `op`.
//!
//! Not guaranteed: a job running as root can write its pid elsewhere and leave its group; the
//! group limits resources, it is not a security boundary against root.
//!
//! Costs: a handful of small writes to cgroupfs per task (blocking, each microseconds, through
//! files held open on v1; a move into a group can wait for an RCU grace period, ~10 ms, when
//! none happened lately);
//! the retry sleeps of [`TaskCgroup::kill_all`] and [`TaskCgroup::remove`] run on `tokio::time`
//! in steps of [`POLL`].

mod detect;
mod fs;
mod held;
mod kill;
mod limits;
mod place;
mod procs;
mod spares;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use self::fs::{
    check_name, enable_controllers, fail, invalid, keyed_value, mkdir_error, read_small, rmdir,
    unavailable, undo_mkdir, write_ctl,
};
use self::held::{read_held, Held};
use self::kill::KILL_ROUNDS;
use self::spares::Spares;
pub use self::spares::{HELD_SPARES, MAX_RESIDUE_BYTES, MAX_SPARES};
use crate::error::Result;
use crate::metrics as m;

/// `cpu.cfs_period_us` (v1) and the period of `cpu.max` (v2), in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CPU quota the kernel accepts per period (1 ms, so 10 millicores).
pub const CPU_MIN_QUOTA_US: u64 = 1_000;
/// The longest task group name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The step of every wait here: freezing, exiting processes, `rmdir` retries.
pub const POLL: Duration = Duration::from_millis(5);

/// The most bytes read from a control file other than `cgroup.procs`.
const MAX_SMALL_FILE: u64 = 64 << 10;
/// The most bytes read from `cgroup.procs` (about half a million pids).
const MAX_PROCS_FILE: u64 = 4 << 20;
/// The deepest nesting of groups a job may create inside its task group that is still handled.
const MAX_DEPTH: usize = 8;
/// The most groups handled inside one task group (itself included).
const MAX_GROUPS: usize = 1024;
/// Polls for killed processes to leave the group before the next round.
const EXIT_POLLS: u32 = 100;
/// `slot-<n>` names a v1 [`Cgroups::create`] tries when it finds them occupied.
const SLOT_TRIES: usize = 16;
/// [`TaskCgroup`]'s `oom_read` before the count was read.
const NOT_READ: u64 = u64::MAX;

/// Which cgroup interface the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

impl CgroupVersion {
    /// `"v1"` or `"v2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A controller the node uses. On v2 they all live in the one tree (the freezer is part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// CPU bandwidth and weight.
    Cpu,
    /// The memory limit and OOM kills.
    Memory,
    /// The process count limit.
    Pids,
    /// Freezing, so that a kill races no fork.
    Freezer,
}

impl Controller {
    /// Every controller, in the order of `as usize`.
    pub const ALL: [Controller; 4] = [
        Controller::Cpu,
        Controller::Memory,
        Controller::Pids,
        Controller::Freezer,
    ];

    /// The controller's name as the kernel spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }
}

/// The limits of one task group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CPU in thousandths of a core: a quota of `millis * 100` us per 100 ms period (at least
    /// [`CPU_MIN_QUOTA_US`]) and a weight in proportion (v1 `cpu.shares` 1024 for one core, v2
    /// `cpu.weight` 100). 0 is a job that only waits: no quota and the lowest weight.
    pub cpu_millis: u32,
    /// The memory limit in bytes (v1 also on memory plus swap where the kernel accounts swap; v2
    /// `memory.swap.max` 0), so that going over it is an OOM kill. 0 is no limit.
    pub memory_bytes: u64,
    /// The most processes and threads in the group (`pids.max`); `None` is no limit.
    pub pids: Option<u64>,
}

/// The node's parent group in each hierarchy it uses. Clones share its spare task groups and
/// the numbering of its v1 groups: open one handle per parent in a process and clone it (two
/// handles would number from `slot-0` each and could hand one group to two tasks).
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: CgroupVersion,
    parent: String,
    /// The parent group's directory in each hierarchy (v2: one).
    dirs: Vec<PathBuf>,
    /// For each [`Controller`], its hierarchy's index in `dirs`.
    index: [usize; Controller::ALL.len()],
    /// Emptied task groups kept for the next tasks (v1).
    spares: Arc<Spares>,
    /// Task groups made by [`Cgroups::create`] and not yet removed or kept as spares.
    live: Arc<AtomicUsize>,
    /// The `tasks` files of the node's own groups, held open (v1 on cgroupfs: see `held`).
    home: Option<Arc<Vec<File>>>,
}

/// Counts one task group in [`Cgroups`]' `live` while it exists as a task's group: from
/// [`Cgroups::create`] until it is removed, kept as a spare or dropped.
#[derive(Debug)]
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::AcqRel);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Cgroups {
    /// Detects v2 or v1 from `/proc/self/mountinfo` and `/proc/self/cgroup`, and creates (or
    /// reuses) the node's parent group `<the node's own cgroup>/<parent>` in each hierarchy (v1:
    /// cpu, memory, pids, freezer; v2: one tree, with cpu, memory and pids enabled in the
    /// `cgroup.subtree_control` of the node's group and of the parent).
    pub fn open(parent: &str) -> Result<Cgroups> {
        Cgroups::open_at(Path::new("/"), parent)
    }

    /// [`Cgroups::open`] against another filesystem root: `root/proc/self/...` is read and the
    /// mount points of `mountinfo` are taken under `root` (tests lay out a fake machine).
    pub fn open_at(root: &Path, parent: &str) -> Result<Cgroups> {
        check_name(parent)?;
        let layout = detect::detect(root).map_err(unavailable)?;
        if let Some(own) = layout.dirs.iter().find(|d| !d.is_dir()) {
            return Err(unavailable(format!(
                "the node's cgroup {} does not exist",
                own.display()
            )));
        }
        if layout.version == CgroupVersion::V2 && !layout.enable.is_empty() {
            enable_controllers(parent, &layout.dirs[0], &layout.enable)?;
        }
        let mut dirs = Vec::with_capacity(layout.dirs.len());
        let mut made = Vec::new();
        for own in &layout.dirs {
            let dir = own.join(parent);
            match std::fs::create_dir(&dir) {
                Ok(()) => made.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    undo_mkdir(parent, &made);
                    return Err(mkdir_error(parent, &dir, e));
                }
            }
            dirs.push(dir);
        }
        if layout.version == CgroupVersion::V2 {
            if let Err(e) = enable_controllers(parent, &dirs[0], &["cpu", "memory", "pids"]) {
                undo_mkdir(parent, &made);
                return Err(e);
            }
        }
        tracing::debug!(cgroup = %parent, version = %layout.version, dirs = ?dirs,
            "cgroups opened");
        let spares = Arc::new(Spares::default());
        Ok(Cgroups {
            version: layout.version,
            parent: parent.to_string(),
            dirs,
            index: layout.index,
            spares,
            live: Arc::new(AtomicUsize::new(0)),
            home: match layout.version {
                CgroupVersion::V1 => held::open_home(parent, &layout.dirs).map(Arc::new),
                CgroupVersion::V2 => None,
            },
        })
    }

    /// The interface in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The parent group's name, as given to [`Cgroups::open`].
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The parent group's directory in the hierarchy of `controller`.
    pub fn path(&self, controller: Controller) -> &Path {
        &self.dirs[self.index[controller as usize]]
    }

    /// Creates a task group for task `task` under the parent in each hierarchy and writes
    /// `limits`. On v1 the node names its groups (`slot-<n>`) and reuses them: the task takes a
    /// spare (only the limits that differ from those it holds are written, and the CPU quota
    /// before the task's process joins) or gets a new group; `task` is its label
    /// ([`TaskCgroup::label`]). On v2 the group is named `task`: an existing group of that name
    /// is reused when it holds no process (its limits rewritten); one that holds processes is
    /// refused with [`CpuError::CgroupNotEmpty`](crate::CpuError::CgroupNotEmpty). On failure
    /// the directories created here are removed again.
    pub fn create(&self, task: &str, limits: &CgroupLimits) -> Result<TaskCgroup> {
        check_name(task)?;
        match self.version {
            CgroupVersion::V1 => self.create_v1(task, limits),
            CgroupVersion::V2 => self.create_v2(task, limits),
        }
    }

    /// [`Cgroups::create`] on v1: a spare, or a new `slot-<n>` group (one that exists already,
    /// left by a killed node, is used when it could serve as a spare and passed over otherwise,
    /// up to [`SLOT_TRIES`] names).
    fn create_v1(&self, label: &str, limits: &CgroupLimits) -> Result<TaskCgroup> {
        if let Some(spare) = self.take_spare() {
            let task = TaskCgroup {
                label: label.to_string(),
                ..self.task(&spare.name)?
            };
            let written = spare.written;
            let same = written.memory_bytes == limits.memory_bytes && written.pids == limits.pids;
            if !same {
                if let Err(e) = task.apply_v1_memory_pids(limits) {
                    undo_mkdir(&task.name, &task.dirs);
                    return Err(e);
                }
            }
            metrics::counter!(m::CGROUP_REUSED).increment(1);
            // A spare that was below the ones holding their files opens them again: the task
            // uses them at its start and end.
            let held = spare.held.or_else(|| self.hold(&task));
            return Ok(TaskCgroup {
                limits: *limits,
                cpu_pending: AtomicBool::new(true),
                cpu_written: written.cpu_millis,
                held,
                spares: Some(Arc::clone(&self.spares)),
                _live: Some(Live::new(&self.live)),
                ..task
            });
        }
        for _ in 0..SLOT_TRIES {
            let name = self.spares.next_name();
            let task = TaskCgroup {
                label: label.to_string(),
                ..self.task(&name)?
            };
            let mut made = Vec::new();
            let mut found = false;
            for dir in &task.dirs {
                match std::fs::create_dir(dir) {
                    Ok(()) => made.push(dir.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
                        found = true
                    }
                    Err(e) => {
                        undo_mkdir(&name, &made);
                        return Err(mkdir_error(&name, dir, e));
                    }
                }
            }
            // A group of that name left by a killed node that no sweep removed: used only as a
            // spare would be (empty, no OOM kill counted, next to nothing charged, no group
            // inside; its limits rewritten), else passed over (logged where a read failed).
            if found && !(task.ensure_empty("create").is_ok() && task.reusable()) {
                undo_mkdir(&name, &made);
                continue;
            }
            if let Err(e) = task.apply_v1_memory_pids(limits) {
                undo_mkdir(&name, &made);
                return Err(e);
            }
            return Ok(TaskCgroup {
                limits: *limits,
                held: self.hold(&task),
                cpu_pending: AtomicBool::new(true),
                spares: Some(Arc::clone(&self.spares)),
                _live: Some(Live::new(&self.live)),
                ..task
            });
        }
        let e = io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{SLOT_TRIES} slot names in a row hold processes another node left"),
        );
        Err(fail("mkdir", label, self.path(Controller::Memory), e))
    }

    /// [`Cgroups::create`] on v2: the group named `name`, made or reused when empty.
    fn create_v2(&self, name: &str, limits: &CgroupLimits) -> Result<TaskCgroup> {
        let task = self.task(name)?;
        let mut made = Vec::new();
        let mut reused = false;
        for dir in &task.dirs {
            match std::fs::create_dir(dir) {
                Ok(()) => made.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => reused = true,
                Err(e) => {
                    undo_mkdir(name, &made);
                    return Err(mkdir_error(name, dir, e));
                }
            }
        }
        let applied = if reused {
            task.ensure_empty("create")
        } else {
            Ok(())
        }
        .and_then(|()| task.apply_v2(limits));
        if let Err(e) = applied {
            undo_mkdir(name, &made);
            return Err(e);
        }
        Ok(TaskCgroup {
            limits: *limits,
            _live: Some(Live::new(&self.live)),
            ..task
        })
    }

    /// Kills and removes every task group found under the parent: at start, those a previous
    /// node left when it was killed (call it before [`Cgroups::create`]); at shutdown, those
    /// still there. The spares kept by this handle are removed first and not counted. Returns
    /// the names of the groups swept, sorted. Every group is tried; the first failure is
    /// returned after the others were tried.
    pub async fn sweep(&self) -> Result<Vec<String>> {
        let spares = self.remove_spares().await;
        let mut names = BTreeSet::new();
        for dir in &self.dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| fail("read", &self.parent, dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| fail("read", &self.parent, dir, e))?;
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        let mut first_error = None;
        let mut swept = Vec::with_capacity(names.len());
        for name in names {
            let result = match self.task(&name) {
                Ok(task) => match task.kill_all().await {
                    Ok(_) => task.remove().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    metrics::counter!(m::CGROUP_SWEPT).increment(1);
                    swept.push(name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !swept.is_empty() {
            tracing::info!(cgroup = %self.parent, groups = swept.len(), names = ?swept,
                "removed task cgroups a previous node left");
        }
        match first_error.or(spares.err()) {
            Some(e) => Err(e),
            None => Ok(swept),
        }
    }

    /// How many task groups made by [`Cgroups::create`] still exist as a task's group: not yet
    /// removed or kept as a spare (a release runs off the caller's thread, after the task).
    pub fn live_count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for every task group to be released ([`Cgroups::live_count`] 0), at
    /// shutdown before [`Cgroups::sweep`], so that the sweep does not race the releases still
    /// under way: whether they all were.
    pub async fn wait_released(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.live_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// Removes the spare task groups, then the parent group in every hierarchy (at shutdown,
    /// after every task group was released); a parent that still has task groups fails with
    /// `EBUSY`.
    pub async fn remove(self) -> Result<()> {
        self.remove_spares().await?;
        for dir in &self.dirs {
            if rmdir(&self.parent, dir).await.is_err() {
                // A task group released meanwhile may have become a spare: once more.
                self.remove_spares().await?;
                rmdir(&self.parent, dir).await?;
            }
        }
        Ok(())
    }

    /// Opens `task`'s control files where the node's own groups are held (v1 on cgroupfs);
    /// `None` elsewhere, or where they cannot be opened (logged and counted by `Held::open`).
    fn hold(&self, task: &TaskCgroup) -> Option<Held> {
        self.home.as_ref()?;
        Held::open(&task.name, &task.dirs, |c| task.path(c).to_path_buf())
    }

    /// The handle of task group `name` (which may or may not exist), paths prepared.
    fn task(&self, name: &str) -> Result<TaskCgroup> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|d| d.join(name)).collect();
        let mut procs = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let path = dir.join("cgroup.procs");
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| invalid(name, format!("{} holds a NUL byte: {e}", path.display())))?;
            procs.push(c);
        }
        Ok(TaskCgroup {
            version: self.version,
            name: name.to_string(),
            label: name.to_string(),
            dirs,
            index: self.index,
            procs,
            limits: CgroupLimits::default(),
            // v2 writes every limit at creation; v1's CPU limits wait for the first process.
            cpu_pending: AtomicBool::new(false),
            cpu_written: None,
            held: None,
            home: self.home.clone(),
            stuck: AtomicBool::new(false),
            emptied: AtomicBool::new(false),
            oom_read: AtomicU64::new(NOT_READ),
            spares: None,
            _live: None,
        })
    }
}

/// One task's group in each hierarchy. Dropping it leaves the group in place (a later
/// [`Cgroups::sweep`] removes it); [`TaskCgroup::remove`] removes it.
#[derive(Debug)]
pub struct TaskCgroup {
    version: CgroupVersion,
    /// The group's directory name under the parent.
    name: String,
    /// The task it serves, as given to [`Cgroups::create`] (on v2 also its name).
    label: String,
    /// The group's directory in each hierarchy, in the order of [`Cgroups`]'.
    dirs: Vec<PathBuf>,
    index: [usize; Controller::ALL.len()],
    /// `cgroup.procs` of each hierarchy, ready for the child (which must not allocate).
    procs: Vec<CString>,
    /// The limits it was created with.
    limits: CgroupLimits,
    /// Whether the CPU limits are still to be written (v1: see
    /// [`TaskCgroup::write_cpu_limits`]).
    cpu_pending: AtomicBool,
    /// The `cpu_millis` whose CPU period and weight the group holds already (a spare's last
    /// task's): only the quota is written then.
    cpu_written: Option<u32>,
    /// Its control files kept open (v1 on cgroupfs; `None`: used by path).
    held: Option<Held>,
    /// The node's own groups' `tasks` files, where held.
    home: Option<Arc<Vec<File>>>,
    /// Whether a thread of the node could not leave it ([`TaskCgroup::run_inside`]): it is then
    /// never frozen (the thread might be the one freezing it) nor kept as a spare.
    stuck: AtomicBool,
    /// Whether [`TaskCgroup::kill_all`] found it empty: nothing can enter it afterwards (only
    /// a process inside, or the node placing a new task's process, puts one in), so a release
    /// need not look again.
    emptied: AtomicBool,
    /// The OOM kill count [`TaskCgroup::oom_kills`] read once the group was empty ([`NOT_READ`]
    /// before): it cannot change then.
    oom_read: AtomicU64,
    /// Where [`TaskCgroup::release`] keeps it for a later task (v1 groups made by `create`).
    spares: Option<Arc<Spares>>,
    /// Counted among the parent's live groups while it exists (groups made by `create`);
    /// held for its `Drop`.
    _live: Option<Live>,
}

impl TaskCgroup {
    /// The group's name under the parent (on v1 `slot-<n>`, kept from task to task).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task it serves, as named to [`Cgroups::create`].
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The group and its task, as failures name them: `slot-3 (task 12.0.5)`, or the name
    /// alone where the two are the same (v2, and groups a sweep found).
    fn who(&self) -> String {
        if self.label == self.name {
            self.name.clone()
        } else {
            format!("{} (task {})", self.name, self.label)
        }
    }

    /// The interface in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The group's directory in the hierarchy of `controller`.
    pub fn path(&self, controller: Controller) -> &Path {
        &self.dirs[self.index[controller as usize]]
    }

    /// Whether [`TaskCgroup::run_inside`] works here: on cgroup v1, where one thread can be
    /// placed apart from the rest of its process.
    pub fn can_place_thread(&self) -> bool {
        // The thread counts against `pids.max` while inside: a limit of one leaves no room
        // for the job.
        // The CPU group is joined by pid afterwards: where it shares a hierarchy with another
        // controller, the child must be in that one from its start, so it joins by itself.
        let cpu = self.index[Controller::Cpu as usize];
        let apart = [Controller::Memory, Controller::Pids, Controller::Freezer]
            .iter()
            .all(|c| self.index[*c as usize] != cpu);
        self.version == CgroupVersion::V1 && apart && self.limits.pids.is_none_or(|n| n >= 2)
    }

    /// Writes the CPU limits if they are still pending (v1 writes them just before the task's
    /// process joins the CPU group; v2 at creation). Once per group; a failed write leaves them
    /// pending.
    pub fn write_cpu_limits(&self) -> Result<()> {
        if self.cpu_pending.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.apply_v1_cpu(&self.limits) {
                // Not all written: a spare made of it must not claim them.
                self.cpu_pending.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer has killed a process of this group (v1: the
    /// `oom_kill` line of `memory.oom_control`; v2: that of `memory.events`).
    pub fn oom_kills(&self) -> Result<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let path = self.path(Controller::Memory).join(file);
        let text = match &self.held {
            Some(held) => read_held(&held.oom),
            None => read_small(&path, MAX_SMALL_FILE),
        }
        .map_err(|e| fail("read", &self.who(), &path, e))?;
        let count = keyed_value(&text, "oom_kill").ok_or_else(|| {
            let e = io::Error::new(io::ErrorKind::InvalidData, "no `oom_kill <n>` line");
            fail("read", &self.who(), &path, e)
        })?;
        // Final only once the group is empty: before, another OOM kill can still come.
        if self.emptied.load(Ordering::Acquire) {
            self.oom_read.store(count, Ordering::Release);
        }
        Ok(count)
    }

    /// The OOM kill count once the group is empty: the one read then, else read now.
    fn final_oom_kills(&self) -> Result<u64> {
        match self.oom_read.load(Ordering::Acquire) {
            n if n != NOT_READ && self.emptied.load(Ordering::Acquire) => Ok(n),
            _ => self.oom_kills(),
        }
    }

    /// Sends `SIGKILL` to every process in the group until it is empty, and returns how many
    /// distinct processes were signalled. v2 writes `cgroup.kill` where it exists; otherwise the
    /// group is frozen, every pid in `cgroup.procs` (of the group and the groups inside it) is
    /// killed and the group thawed, in rounds until it is empty. Fails with
    /// [`CpuError::CgroupNotEmpty`](crate::CpuError::CgroupNotEmpty) when processes remain after
    /// the last round (one stuck in uninterruptible sleep, say).
    pub async fn kill_all(&self) -> Result<usize> {
        let mut killed = BTreeSet::new();
        for _ in 0..KILL_ROUNDS {
            let pids = if self.counted_empty() {
                BTreeSet::new()
            } else {
                self.pids()?
            };
            if pids.is_empty() {
                self.emptied.store(true, Ordering::Release);
                return Ok(killed.len());
            }
            let kill_file = self.path(Controller::Cpu).join("cgroup.kill");
            if self.version == CgroupVersion::V2 && kill_file.exists() {
                write_ctl(&self.who(), &kill_file, "1")?;
                killed.extend(pids);
            } else {
                // A group a thread of the node could not leave is killed without a freeze.
                let frozen = !self.stuck.load(Ordering::Acquire) && self.freeze().await;
                let result = self.pids().and_then(|pids| self.signal(&pids, &mut killed));
                let thawed = if frozen { self.thaw() } else { Ok(()) };
                result?;
                thawed?;
            }
            for _ in 0..EXIT_POLLS {
                if self.pids()?.is_empty() {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        self.ensure_empty("kill")?;
        Ok(killed.len())
    }

    /// Removes the group in every hierarchy (and any group the job made inside it, deepest
    /// first), retrying `rmdir` briefly while the kernel still counts exiting tasks. Fails with
    /// [`CpuError::CgroupNotEmpty`](crate::CpuError::CgroupNotEmpty) while processes are in it:
    /// call [`TaskCgroup::kill_all`] first.
    pub async fn remove(mut self) -> Result<()> {
        self.ensure_empty("remove")?;
        self.held = None;
        for dir in &self.dirs {
            let groups = self.tree(dir)?;
            for group in groups.iter().rev() {
                rmdir(&self.who(), group).await?;
            }
        }
        Ok(())
    }
}
