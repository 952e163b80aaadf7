//! Who a process is, in a form that survives pid reuse: its pid plus its start time (clock
//! ticks after boot, field 22 of `/proc/<pid>/stat`), and whether such a process is alive.

use crate::sys::fork;
use std::sync::Mutex;

/// A process as recorded in coordination slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Its start time; 0 when `/proc` could not tell.
    pub start: u64,
}

static SELF: Mutex<Option<(u64, ProcessId)>> = Mutex::new(None);

/// This process, recomputed after a fork.
pub fn current() -> ProcessId {
    let generation = fork::generation();
    let mut cached = SELF.lock().unwrap_or_else(|e| e.into_inner());
    match *cached {
        // getpid is a real syscall: the fork generation says when to ask again.
        Some((g, id)) if g == generation => id,
        _ => {
            let pid = std::process::id();
            let id = ProcessId {
                pid,
                start: stat(pid).map_or(0, |s| s.start),
            };
            *cached = Some((generation, id));
            id
        }
    }
}

struct Stat {
    state: u8,
    start: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let mut fields = text.get(close + 2..)?.split(|&b| b == b' ');
    let state = *fields.next()?.first()?;
    // After the state come fields 4..; the start time is field 22, i.e. 19 further on.
    let start = fields.nth(18)?;
    let start = std::str::from_utf8(start).ok()?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether `p` is still running: its pid exists, is not a zombie, and started when
/// recorded (so a reused pid is not mistaken for it).
pub fn is_alive(p: ProcessId) -> bool {
    if p.pid == 0 || p.pid > i32::MAX as u32 {
        return false;
    }
    match stat(p.pid) {
        Some(s) => !matches!(s.state, b'Z' | b'X') && (p.start == 0 || s.start == p.start),
        // No /proc entry: dead, unless /proc is unavailable, in which case ask the kernel.
        None if std::path::Path::new("/proc/self/stat").exists() => false,
        None => match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), None) {
            Ok(()) => true,
            Err(nix::errno::Errno::ESRCH) => false,
            Err(_) => true,
        },
    }
}

/// `p` in one word: the pid in the high 32 bits, the low 32 bits of its start time in the
/// low 32 (so an owner is claimed and checked with one compare-and-swap).
pub fn owner_word(p: ProcessId) -> u64 {
    (u64::from(p.pid) << 32) | (p.start & 0xffff_ffff)
}

/// Whether the process an [`owner_word`] names is still running (a start time of 0 is
/// not checked).
pub fn owner_alive(word: u64) -> bool {
    let pid = (word >> 32) as u32;
    let start = word & 0xffff_ffff;
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match stat(pid) {
        Some(s) => {
            !matches!(s.state, b'Z' | b'X') && (start == 0 || s.start & 0xffff_ffff == start)
        }
        None => is_alive(ProcessId { pid, start: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn self_is_alive_and_a_changed_start_is_not() {
        let me = current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start > 0);
        assert!(is_alive(me));
        assert!(!is_alive(ProcessId {
            pid: me.pid,
            start: me.start + 1
        }));
        assert!(!is_alive(ProcessId { pid: 0, start: 0 }));
        assert!(owner_alive(owner_word(me)));
        assert!(!owner_alive(owner_word(ProcessId {
            pid: me.pid,
            start: me.start + 1
        })));
        assert!(!owner_alive(0));
    }
}
