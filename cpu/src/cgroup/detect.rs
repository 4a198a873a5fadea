//! Which cgroup hierarchies this process can use, read from `/proc/self/mountinfo` and
//! `/proc/self/cgroup` under a filesystem root.
//!
//! Invariants: nothing here writes; every file is size-checked before it is parsed; a path taken
//! from `/proc/self/cgroup` is used only when it is absolute, has no `..` component and lies under
//! the root of the mount it is resolved against (a cgroup namespace shows `/..` for groups outside
//! it). The answer is either a [`Layout`] or the reason, in words, why there is none.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use super::fs::read_small;
use super::{CgroupVersion, Controller, MAX_SMALL_FILE};

/// The most bytes read from `/proc/self/mountinfo` (a host with thousands of mounts stays well
/// below it).
const MAX_MOUNTINFO: u64 = 4 << 20;
/// The most bytes read from `/proc/self/cgroup`.
const MAX_PROC_CGROUP: u64 = 64 << 10;
/// The controllers a v2 tree must offer.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The hierarchies to use: the node's own cgroup directory in each, and which one serves each
/// controller.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) version: CgroupVersion,
    /// The node's own cgroup in each hierarchy, without duplicates (v2: exactly one).
    pub(super) dirs: Vec<PathBuf>,
    /// For each [`Controller`] (by `as usize`), its hierarchy's index in `dirs`.
    pub(super) index: [usize; Controller::ALL.len()],
    /// The controllers v2 must enable in `dirs[0]`'s `cgroup.subtree_control` (v1: none).
    pub(super) enable: Vec<&'static str>,
}

/// One line of `mountinfo` that mounts a cgroup filesystem.
#[derive(Debug)]
struct Mount {
    /// The directory of the hierarchy that is mounted (`/` unless a subtree is bind-mounted).
    root: String,
    /// Where it is mounted, under the filesystem root given to [`detect`].
    point: PathBuf,
    /// `cgroup` or `cgroup2`.
    fstype: String,
    /// The super options: v1 names its controllers here.
    options: Vec<String>,
    read_only: bool,
}

/// One line of `/proc/self/cgroup`: hierarchy id, controllers (empty for v2) and our path there.
#[derive(Debug)]
struct Membership {
    id: String,
    controllers: Vec<String>,
    path: String,
}

/// Finds the hierarchies under `root` (`/` for this machine), or says why none can be used.
pub(super) fn detect(root: &Path) -> Result<Layout, String> {
    let mountinfo_path = root.join("proc/self/mountinfo");
    let mountinfo = read_small(&mountinfo_path, MAX_MOUNTINFO)
        .map_err(|e| format!("reading {}: {e}", mountinfo_path.display()))?;
    let cgroup_path = root.join("proc/self/cgroup");
    let cgroup = read_small(&cgroup_path, MAX_PROC_CGROUP)
        .map_err(|e| format!("reading {}: {e}", cgroup_path.display()))?;
    let mounts = parse_mountinfo(root, &mountinfo);
    let members = parse_proc_cgroup(&cgroup);
    if mounts.is_empty() {
        return Err(format!(
            "no cgroup filesystem is mounted ({} lists neither cgroup nor cgroup2)",
            mountinfo_path.display()
        ));
    }

    let mut why_not_v2 = String::new();
    if let Some(v2) = mounts.iter().find(|m| m.fstype == "cgroup2") {
        match v2_layout(&mounts, &members) {
            Ok(layout) if v2.read_only => {
                return Err(format!(
                    "cgroup2 at {} offers cpu, memory and pids to {} but is mounted read-only",
                    v2.point.display(),
                    layout
                        .dirs
                        .first()
                        .map_or_else(|| "its group".to_owned(), |d| d.display().to_string())
                ))
            }
            Ok(layout) => return Ok(layout),
            Err(reason) => why_not_v2 = format!("; not v2: {reason}"),
        }
    }
    v1_layout(&mounts, &members).map_err(|reason| format!("{reason}{why_not_v2}"))
}

/// The v2 layout, when our v2 group offers every controller needed.
fn v2_layout(mounts: &[Mount], members: &[Membership]) -> Result<Layout, String> {
    let member = members
        .iter()
        .find(|m| m.id == "0" && m.controllers.is_empty())
        .ok_or_else(|| "/proc/self/cgroup has no `0::` line".to_string())?;
    let (mount, dir) = resolve(mounts, "cgroup2", None, &member.path)?;
    let file = dir.join("cgroup.controllers");
    let offered = read_small(&file, MAX_SMALL_FILE)
        .map_err(|e| format!("reading {}: {e}", file.display()))?;
    let offered: BTreeSet<&str> = offered.split_whitespace().collect();
    let missing: Vec<&str> = V2_CONTROLLERS
        .into_iter()
        .filter(|c| !offered.contains(c))
        .collect();
    if !missing.is_empty() {
        let offered: Vec<&str> = offered.into_iter().collect();
        return Err(format!(
            "cgroup2 at {} offers [{}] to {}, not {}",
            mount.point.display(),
            offered.join(" "),
            member.path,
            missing.join(", ")
        ));
    }
    let enabled_file = dir.join("cgroup.subtree_control");
    let enabled = read_small(&enabled_file, MAX_SMALL_FILE)
        .map_err(|e| format!("reading {}: {e}", enabled_file.display()))?;
    let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
    let enable = V2_CONTROLLERS
        .into_iter()
        .filter(|c| !enabled.contains(c))
        .collect();
    Ok(Layout {
        version: CgroupVersion::V2,
        dirs: vec![dir],
        index: [0; Controller::ALL.len()],
        enable,
    })
}

/// The v1 layout, when every controller is mounted (co-mounted controllers share a hierarchy).
fn v1_layout(mounts: &[Mount], members: &[Membership]) -> Result<Layout, String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut index = [0; Controller::ALL.len()];
    let mut missing = Vec::new();
    let mut read_only = BTreeSet::new();
    for controller in Controller::ALL {
        let name = controller.as_str();
        let Some(member) = members
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == name))
        else {
            missing.push(name.to_string());
            continue;
        };
        match resolve(mounts, "cgroup", Some(name), &member.path) {
            Ok((mount, dir)) => {
                if mount.read_only {
                    read_only.insert(mount.point.display().to_string());
                }
                index[controller as usize] = match dirs.iter().position(|d| *d == dir) {
                    Some(i) => i,
                    None => {
                        dirs.push(dir);
                        dirs.len() - 1
                    }
                };
            }
            Err(reason) => missing.push(format!("{name} ({reason})")),
        }
    }
    if !missing.is_empty() {
        let all = missing.len() == Controller::ALL.len();
        return Err(if all && !mounts.iter().any(|m| m.fstype == "cgroup") {
            "no cgroup v1 hierarchy is mounted".to_string()
        } else {
            format!("cgroup v1 controller not mounted: {}", missing.join(", "))
        });
    }
    if !read_only.is_empty() {
        let read_only: Vec<String> = read_only.into_iter().collect();
        return Err(format!(
            "cgroup v1 mounted read-only at {}",
            read_only.join(", ")
        ));
    }
    Ok(Layout {
        version: CgroupVersion::V1,
        dirs,
        index,
        enable: Vec::new(),
    })
}

/// The mount of type `fstype` (holding `controller` for v1) under which `path` is visible, and
/// the directory `path` is there.
fn resolve<'m>(
    mounts: &'m [Mount],
    fstype: &str,
    controller: Option<&str>,
    path: &str,
) -> Result<(&'m Mount, PathBuf), String> {
    let clean = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.starts_with('/') || !clean {
        return Err(format!(
            "our cgroup path {path:?} is outside this cgroup namespace"
        ));
    }
    let mut candidates = mounts.iter().filter(|m| {
        m.fstype == fstype && controller.is_none_or(|c| m.options.iter().any(|o| o == c))
    });
    let first = candidates
        .next()
        .ok_or_else(|| format!("no {fstype} mount"))?;
    for mount in std::iter::once(first).chain(candidates) {
        let rel = if mount.root == "/" {
            Some(path)
        } else {
            path.strip_prefix(mount.root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if let Some(rel) = rel {
            return Ok((mount, mount.point.join(rel.trim_start_matches('/'))));
        }
    }
    Err(format!(
        "our cgroup {path} is not visible under {} (it mounts {})",
        first.point.display(),
        first.root
    ))
}

/// The cgroup mounts in `mountinfo`, their mount points placed under `root`. Lines that are not
/// cgroup mounts, or are malformed, are left out.
fn parse_mountinfo(root: &Path, mountinfo: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root point options [optional...] - fstype source super-options
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 6 || fields.len() < sep + 4 {
            continue;
        }
        let fstype = fields[sep + 1];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let point = unescape(fields[4]);
        let Ok(point) = point.strip_prefix("/") else {
            continue;
        };
        let options: Vec<String> = fields[sep + 3].split(',').map(str::to_string).collect();
        let read_only =
            fields[5].split(',').any(|o| o == "ro") || options.iter().any(|o| o == "ro");
        mounts.push(Mount {
            root: unescape(fields[3]).to_string_lossy().into_owned(),
            point: root.join(point),
            fstype: fstype.to_string(),
            options,
            read_only,
        });
    }
    mounts
}

/// The lines of `/proc/self/cgroup`; malformed ones are left out.
fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                id: id.to_string(),
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}
