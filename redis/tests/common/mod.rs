//! Helpers of the tier's tests: a redis-server of the test's own, segments unlinked at
//! the end, waiting for a condition, and child processes (the test binary run again).
#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmemcache::Cache;

/// A redis-server of this test's own, on a Unix socket in a temporary directory.
pub struct Redis {
    dir: tempfile::TempDir,
    proc: Option<Child>,
}

impl Redis {
    /// Starts one, or `None` (with a message) where redis-server is not installed and
    /// this is not CI; in CI its absence fails the test.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and redis-server is not installed"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let mut r = Redis {
            dir: tempfile::tempdir().expect("tempdir"),
            proc: None,
        };
        r.restart();
        Some(r)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(self.socket())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.proc = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` of the server.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A segment unlinked when the test ends.
pub struct Segment(pub String);

impl Segment {
    pub fn new(tag: &str) -> Segment {
        Segment(format!("shmc-tier-{}-{tag}", std::process::id()))
    }
    pub fn open(&self) -> Cache {
        Cache::open(&self.0).expect("open segment")
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = Cache::unlink(&self.0);
    }
}

/// Waits until `cond` holds, up to `limit`; how long it took.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Some(t.elapsed())
}

/// Runs the ignored test `entry` of this test binary as a child process with `env`.
pub fn spawn_child(entry: &str, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        entry,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("spawn child")
}
