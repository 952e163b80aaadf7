//! Replacing a file atomically: the new contents go to an unnamed file in the target's
//! directory (`O_TMPFILE`), which gets a name only once it is complete and synced, and then
//! takes the target's name by `rename`. A process killed while writing leaves no file at
//! all; the previous target is untouched until the rename.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file being written that replaces `target` on [`commit`](Self::commit), or vanishes.
pub struct AtomicFile {
    file: File,
    dir: PathBuf,
    target: PathBuf,
    /// Where the contents are written when `O_TMPFILE` is not supported (removed on drop
    /// unless committed).
    named: Option<PathBuf>,
}

fn dir_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `dir/.NAME.tmp.PID.NANOS`: unique to this process and moment.
fn temp_name(dir: &Path, target: &Path) -> PathBuf {
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dir.join(format!(
        ".{base}.tmp.{}.{}",
        std::process::id(),
        crate::clock::unix_ns()
    ))
}

impl AtomicFile {
    /// Starts replacing `target` (created with mode 0600). Removes what earlier writers
    /// that died left behind (their named temporary files).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = dir_of(target);
        remove_orphans(&dir, target);
        let unnamed = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir);
        let (file, named) = match unnamed {
            Ok(f) => (f, None),
            // No O_TMPFILE on this file system: a named file, removed unless committed.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                let p = temp_name(&dir, target);
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)?;
                (f, Some(p))
            }
            Err(e) => return Err(e),
        };
        Ok(AtomicFile {
            file,
            dir,
            target: target.to_path_buf(),
            named,
        })
    }

    /// The file to write to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the contents, names them, renames them over the target and syncs the
    /// directory: after a crash the target is the old file or the new one.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let from = match self.named.take() {
            Some(p) => p,
            None => {
                let p = temp_name(&self.dir, &self.target);
                link_unnamed(&self.file, &p)?;
                p
            }
        };
        if let Err(e) = std::fs::rename(&from, &self.target) {
            let _ = std::fs::remove_file(&from);
            return Err(e);
        }
        File::open(&self.dir)?.sync_all()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(p) = self.named.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes `dir/.NAME.tmp.PID.*` files of `target` whose writer is no longer alive.
fn remove_orphans(dir: &Path, target: &Path) {
    let Some(base) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{base}.tmp.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('.').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let dead = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if dead {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Gives the unnamed (`O_TMPFILE`) `file` the name `to`.
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let to = CString::new(to.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call; `linkat` only
    // reads them. Following the /proc magic link is how an unnamed file gets a name
    // without CAP_DAC_READ_SEARCH.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
