//! Finding every shmemcache segment on the machine: a scan of `/dev/shm` that reads only the
//! first 256 bytes of each file and skips anything that is not a readable shmemcache header.

use crate::error::{Error, Result};
use crate::layout::{Header, LAYOUT_VERSION, MAGIC, READY};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One segment found by [`list_segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentListing {
    /// The name to open it by.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Owner's uid.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// Layout version in its header.
    pub layout_version: u32,
    /// Whether this build can open it (same layout version, ready).
    pub compatible: bool,
    /// Shards, as its header says.
    pub shards: u32,
    /// Creator's pid, as its header says.
    pub creator_pid: u32,
    /// Creation time, ns since the Unix epoch.
    pub created_unix_ns: u64,
}

/// Every shmemcache segment in `/dev/shm`, sorted by name. Files that are not segments, or
/// that this user cannot read, are skipped.
pub fn list_segments() -> Result<Vec<SegmentListing>> {
    list_in(Path::new("/dev/shm"))
}

/// [`list_segments`] over any directory (tests use a temporary one).
pub(crate) fn list_in(dir: &Path) -> Result<Vec<SegmentListing>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Os {
        op: "read_dir",
        name: dir.display().to_string(),
        source: e,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if let Some(l) = probe(&entry.path()) {
            out.push(l);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn probe(path: &Path) -> Option<SegmentListing> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() < std::mem::size_of::<Header>() as u64 {
        return None;
    }
    let mut raw = [0u8; std::mem::size_of::<Header>()];
    std::fs::File::open(path).ok()?.read_exact(&mut raw).ok()?;
    let h: Header = bytemuck::pod_read_unaligned(&raw);
    if h.magic != MAGIC {
        return None;
    }
    Some(SegmentListing {
        name: path.file_name()?.to_string_lossy().into_owned(),
        size: meta.len(),
        uid: meta.uid(),
        mode: meta.mode() & 0o777,
        layout_version: h.layout_version,
        compatible: h.layout_version == LAYOUT_VERSION && h.ready == READY,
        shards: h.shard_count,
        creator_pid: h.creator_pid,
        created_unix_ns: h.created_unix_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn skips_foreign_files_and_finds_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short"), b"SHMCACHE").unwrap();
        std::fs::write(dir.path().join("other"), vec![7u8; 4096]).unwrap();
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();
        let g = crate::layout::Geometry::new(2, 8, 64, 64, 32, 512, 0, 1).unwrap();
        let mut h = g.to_header(5, 42, 0);
        h.ready = READY;
        let mut bytes = bytemuck::bytes_of(&h).to_vec();
        bytes.resize(1024, 0);
        std::fs::write(dir.path().join("seg"), &bytes).unwrap();
        let l = list_in(dir.path()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "seg");
        assert_eq!((l[0].shards, l[0].creator_pid, l[0].size), (2, 42, 1024));
        assert!(l[0].compatible);
    }
}
