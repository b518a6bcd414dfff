//! Private copies of the function binaries, so instances never execute a file a build may be
//! rewriting.
//!
//! `cargo build` writes `target/debug/<bin>` again on every rebuild. An instance that executes
//! that path directly could start from a half-written file (or make the linker fail with
//! "text file busy"). So the runtime links (or, across file systems, copies) each binary, once
//! it is complete, to `<dir>/<pid>/<bin>-<n>` and executes that. A copy is shared by every function and
//! generation that runs the same build of the same binary ([`Fingerprint`]), and is removed
//! when the last generation using it is gone (running processes keep their image: Linux lets an
//! executing file be unlinked). The per-process directory is removed with the runtime; those
//! of runner processes that no longer exist are removed when the next runner starts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// Identifies one build of a file: its length and modification time. Two equal fingerprints
/// of the same path mean the file was not rewritten in between (a build that relinks it gives
/// it a new modification time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u64,
    pub modified: SystemTime,
}

impl Fingerprint {
    /// The fingerprint of the file at `path` as it is now.
    ///
    /// # Errors
    /// The file cannot be stat'ed (missing, unreadable).
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let meta = std::fs::metadata(path)?;
        Ok(Fingerprint {
            len: meta.len(),
            modified: meta.modified()?,
        })
    }
}

/// The file an instance executes: a private copy of a build, or the build itself when the
/// runtime makes no copies.
#[derive(Debug)]
pub(crate) struct Executable {
    /// What the process is started from.
    pub path: PathBuf,
    /// The binary this was copied from (the function's [`super::FunctionSpec::binary`]).
    pub source: PathBuf,
    /// The source's fingerprint when the copy was taken (or when the spec was installed).
    pub fingerprint: Option<Fingerprint>,
    /// Whether `path` is a copy of ours, removed on drop.
    owned: bool,
}

impl Executable {
    /// The binary itself, executed in place (no copy).
    pub fn in_place(binary: &Path) -> Executable {
        Executable {
            path: binary.to_path_buf(),
            source: binary.to_path_buf(),
            fingerprint: Fingerprint::of(binary).ok(),
            owned: false,
        }
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The copies of one runner process, in `<base>/<pid>/`.
pub(crate) struct Snapshots {
    dir: PathBuf,
    next: AtomicU64,
    /// Copies still used by some generation, to share one per build.
    live: Mutex<Vec<Weak<Executable>>>,
}

impl Snapshots {
    /// Creates `<base>/<pid>/` and removes the directories other runner processes left in
    /// `base` that no longer run.
    pub fn new(base: &Path) -> std::io::Result<Snapshots> {
        let own = std::process::id().to_string();
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let gone = name != own
                    && name.parse::<u32>().is_ok()
                    && !Path::new("/proc").join(&name).exists();
                if gone {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(own);
        std::fs::create_dir_all(&dir)?;
        Ok(Snapshots {
            dir,
            next: AtomicU64::new(1),
            live: Mutex::new(Vec::new()),
        })
    }

    /// A copy of `binary` as it is now: the live copy of the same build if there is one, else
    /// a new one. Blocking file I/O (run it off the async workers).
    ///
    /// # Errors
    /// `binary` cannot be read, or keeps changing while it is copied (a build is writing it).
    pub fn take(&self, binary: &Path) -> std::io::Result<Arc<Executable>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        let now = Fingerprint::of(binary)?;
        let existing = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|e| e.source == binary && e.fingerprint == Some(now) && e.path.is_file());
        if let Some(existing) = existing {
            return Ok(existing);
        }
        let name = binary
            .file_name()
            .map_or_else(|| "binary".into(), |n| n.to_string_lossy().into_owned());
        for _ in 0..5 {
            let before = Fingerprint::of(binary)?;
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{name}-{n}"));
            let copy = Executable {
                path,
                source: binary.to_path_buf(),
                fingerprint: Some(before),
                owned: true,
            };
            // A hard link costs nothing and holds the build's inode: a rebuild replaces the
            // file (the linker and cargo unlink and write anew), it never writes into it.
            // Across file systems, a copy (`fs::copy` keeps the permission bits).
            if std::fs::hard_link(binary, &copy.path).is_err() {
                std::fs::copy(binary, &copy.path)?;
            }
            if Fingerprint::of(binary)? == before {
                let copy = Arc::new(copy);
                live.push(Arc::downgrade(&copy));
                return Ok(copy);
            }
            // Rewritten while copied: the copy may be torn; it is removed as it drops.
        }
        Err(std::io::Error::other(format!(
            "{} keeps changing while it is copied",
            binary.display()
        )))
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
