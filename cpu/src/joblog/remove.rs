//! Removing streams from disk: one stream ([`remove_stream`]) or many at once
//! ([`remove_streams`], what the janitor of pruned jobs calls), each head removed after its
//! segments. A batch lists each log directory at most once, whatever the number of its streams
//! long enough to have tail segments: listing a directory of 100,000 logs once per pruned job
//! that printed more than 16 KiB cost a node a fifth of its CPU.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{list, segment_piece, split_segment, LogPiece, MIN_SEGMENT_START};
use crate::error::{CpuError, Result};

/// Deletes the stream whose log path is `path`: its head and every tail segment. Returns the
/// bytes freed; a stream (or a piece) that is already gone is not an error. Blocking. A
/// failure is returned with the piece's path, not logged: the caller (the janitor of pruned
/// jobs) logs and counts it once, with the job it belonged to.
pub fn remove_stream(path: impl AsRef<Path>) -> Result<u64> {
    remove_pieces(path.as_ref(), true)
}

/// Deletes the streams whose log paths are `paths` and returns one outcome per path, in order:
/// the bytes freed, as [`remove_stream`] gives them. Each directory holding one of them is
/// listed at most once, and only where one of its streams has a head long enough to be followed
/// by segments: the others cost one `stat` and one `unlink` each. Unlike one
/// [`remove_stream`] per path, a listing that fails fails every such stream of its directory
/// (each keeps its head, so a later removal finds its segments), with the directory named. A
/// path given twice is removed once (the second finds nothing: 0 bytes). Holds a few hundred
/// bytes per path: a caller with very many splits them. Blocking.
pub fn remove_streams(paths: &[PathBuf]) -> Vec<Result<u64>> {
    let mut out: Vec<Option<Result<u64>>> = Vec::with_capacity(paths.len());
    let mut pieces: Vec<Vec<LogPiece>> = Vec::with_capacity(paths.len());
    // Per directory to list: the long heads' file names, and the streams each is (a path given
    // twice is there twice; its segments go to the first).
    let mut to_list: HashMap<&Path, HashMap<&[u8], Vec<usize>>> = HashMap::new();
    for (i, path) in paths.iter().enumerate() {
        pieces.push(Vec::new());
        match fs::metadata(path) {
            Ok(meta) => {
                pieces[i].push(LogPiece {
                    path: path.clone(),
                    start: 0,
                    len: meta.len(),
                    head: true,
                });
                out.push(None);
                if meta.len() >= MIN_SEGMENT_START {
                    match (path.parent(), path.file_name()) {
                        (Some(dir), Some(name)) => {
                            let dir = if dir.as_os_str().is_empty() {
                                Path::new(".")
                            } else {
                                dir
                            };
                            to_list
                                .entry(dir)
                                .or_default()
                                .entry(name.as_bytes())
                                .or_default()
                                .push(i);
                        }
                        _ => {
                            // A path without a directory part or file name: list it alone,
                            // which reports why.
                            out[i] = Some(remove_pieces(path, true));
                        }
                    }
                }
            }
            // No head: no segment either (a head is removed after its segments).
            Err(e) if e.kind() == io::ErrorKind::NotFound => out.push(Some(Ok(0))),
            Err(e) => out.push(Some(Err(CpuError::io("stat", path, e)))),
        }
    }
    for (dir, heads) in to_list {
        if let Err(error) = find_segments(dir, &heads, &mut pieces) {
            for &i in heads.values().flatten() {
                out[i] = Some(Err(CpuError::io("list", dir, clone_error(&error))));
            }
        }
    }
    out.into_iter()
        .zip(pieces)
        .map(|(done, pieces)| match done {
            Some(outcome) => outcome,
            None => remove_listed(pieces),
        })
        .collect()
}

/// Adds to `pieces[i]` the segments found in `dir` of the head `heads` names with `i` first.
fn find_segments(
    dir: &Path,
    heads: &HashMap<&[u8], Vec<usize>>,
    pieces: &mut [Vec<LogPiece>],
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some((head, start)) = split_segment(name.as_bytes()) else {
            continue;
        };
        let Some(&i) = heads.get(head).and_then(|streams| streams.first()) else {
            continue;
        };
        pieces[i].extend(segment_piece(&entry, start)?);
    }
    Ok(())
}

/// The same error again (an `io::Error` is not `Clone`): its kind and its text.
fn clone_error(error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), error.to_string())
}

/// Removes the pieces of the stream at `path`, the head too when `with_head`: the bytes freed.
/// The head goes last, so a removal cut short never leaves segments without their head, and
/// a stream with no head (or a head too short for any segment to follow) is dealt with
/// without listing the directory: spawning a job and pruning one cost the same with ten log
/// files in the directory as with a million.
pub(crate) fn remove_pieces(path: &Path, with_head: bool) -> Result<u64> {
    let pieces = list(path, true).map_err(|e| CpuError::io("list", path, e))?;
    remove_listed(
        pieces
            .into_iter()
            .filter(|p| with_head || !p.head)
            .collect(),
    )
}

/// Removes `pieces`, oldest segment first and the head last: the bytes freed.
fn remove_listed(mut pieces: Vec<LogPiece>) -> Result<u64> {
    pieces.sort_by_key(|p| (p.head, p.start));
    let mut freed = 0;
    for piece in pieces {
        match fs::remove_file(&piece.path) {
            Ok(()) => freed += piece.len,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CpuError::io("remove", &piece.path, e)),
        }
    }
    Ok(freed)
}
