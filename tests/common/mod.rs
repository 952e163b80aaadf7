//! Helpers shared by the multi-process test files: unique segment names, fork with a
//! child exit code, pipes, kill -9.
#![allow(dead_code)] // each test file uses a different subset

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use shmemcache::Cache;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;

/// A unique segment name, unlinked when the test ends (even on failure).
pub struct Name(pub String);

impl Name {
    pub fn new(tag: &str) -> Name {
        Name(format!("shmc-test-{}-{tag}", std::process::id()))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = Cache::unlink(&self.0);
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Forks; the child runs `f` and exits with its code (101 if it panicked).
pub fn spawn(f: impl FnOnce() -> i32) -> Pid {
    // SAFETY: tests run one per process (nextest), so the child is the only thread's copy;
    // it runs `f` and leaves with `_exit`, never returning into the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: `_exit` skips atexit handlers and destructors of the parent's state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

pub fn exit_code(pid: Pid) -> i32 {
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child ended with {other:?}"),
    }
}

pub fn assert_exits_ok(pid: Pid) {
    assert_eq!(exit_code(pid), 0, "child {pid} failed");
}

/// Waits until `pid` has stopped itself (SIGSTOP from an armed fault).
pub fn wait_stopped(pid: Pid) {
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).expect("waitpid") {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
        other => panic!("expected the child to stop, got {other:?}"),
    }
}

pub fn kill9(pid: Pid) {
    kill(pid, Signal::SIGKILL).expect("kill -9");
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
        other => panic!("expected SIGKILL death, got {other:?}"),
    }
}

pub fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let f = |fd: OwnedFd| std::fs::File::from(fd);
    (f(r), f(w))
}
