//! Tidy checks over the whole workspace: every Rust file opens with a `//!` comment saying what
//! it is for, and no library file leaves an error on the floor in the ways reviewers grep for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn workspace_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(
        files.len() > 10,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    files
}

#[test]
fn every_rust_file_starts_with_a_module_comment() {
    let missing: Vec<_> = workspace_files()
        .into_iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! comment: {missing:?}"
    );
}

#[test]
fn library_code_drops_no_errors_silently() {
    let patterns = [
        "let _ = ",
        ".ok();",
        "unwrap_or_default()",
        "todo!",
        "unimplemented!",
    ];
    let mut hits = Vec::new();
    for file in workspace_files() {
        let text = file.to_string_lossy().replace('\\', "/");
        let is_test =
            text.contains("/tests/") || text.contains("/examples/") || text.ends_with("/tidy.rs");
        if is_test {
            continue;
        }
        for (n, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if let Some(p) = patterns.iter().find(|p| line.contains(*p)) {
                hits.push(format!("{}:{}: {p}", file.display(), n + 1));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "possible dropped errors:\n{}",
        hits.join("\n")
    );
}
