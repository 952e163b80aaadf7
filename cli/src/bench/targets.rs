//! What `bench` can measure: shmemcache itself and the references it is compared with.
//!
//! A target is prepared once in the parent (filled with every key), then each forked worker
//! makes its own client after the fork (a connection, an LMDB environment, a segment
//! handle), as separately started processes would.

use super::Workload;
use shmemcache::{Cache, Options};
use shmemcache_cli::floor::Floor;
use shmemcache_cli::optimistic_floor::OptimisticFloor;
use std::sync::{Arc, Mutex};

/// Copies a fetched value into the worker's buffer (as much as fits); true = a hit.
fn copy_out(v: &[u8], buf: &mut [u8]) -> bool {
    let n = v.len().min(buf.len());
    buf[..n].copy_from_slice(&v[..n]);
    true
}

/// One worker's client.
pub trait Worker {
    /// Copies the value of `key` into `buf`; false on a miss.
    fn get(&mut self, key: &[u8], buf: &mut [u8]) -> bool;
    /// Stores `value` under `key`.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Operations that failed with an error (a `LockTimeout`, say) so far.
    fn errors(&self) -> u64 {
        0
    }
}

/// A system under test.
pub trait Target {
    /// Short name used in reports and `--compare`.
    fn name(&self) -> &'static str;
    /// In the parent, before any fork: create the store and fill it with every key.
    fn prepare(&mut self, w: &Workload) -> Result<(), String>;
    /// In a forked worker: a client of its own.
    fn worker(&self, w: &Workload) -> Result<Box<dyn Worker>, String>;
    /// Evictions so far, where the target counts them.
    fn evictions(&self) -> Option<u64> {
        None
    }
    /// Releases what `prepare` made (segment names, servers, directories).
    fn finish(&mut self) {}
}

/// The names `--compare` accepts, with whether this build includes them.
pub fn known() -> [(&'static str, bool); 5] {
    [
        ("floor", true),
        ("optimistic-floor", true),
        ("lru", true),
        ("lmdb", cfg!(feature = "lmdb")),
        ("redis", cfg!(feature = "redis")),
    ]
}

/// Makes the target called `name`.
pub fn make(name: &str, opts: &super::BenchArgs) -> Result<Box<dyn Target>, String> {
    match name {
        "floor" => Ok(Box::new(FloorTarget::<Floor> {
            floor: None,
            shards: opts.shards as usize,
        })),
        "optimistic-floor" => Ok(Box::new(FloorTarget::<OptimisticFloor> {
            floor: None,
            shards: opts.shards as usize,
        })),
        "lru" => Ok(Box::new(LruTarget)),
        #[cfg(feature = "lmdb")]
        "lmdb" => Ok(Box::new(lmdb::LmdbTarget::default())),
        #[cfg(feature = "redis")]
        "redis" => Ok(Box::new(redis_target::RedisTarget::new(opts))),
        other => {
            let list: Vec<String> = known()
                .iter()
                .map(|(n, built)| {
                    if *built {
                        n.to_string()
                    } else {
                        format!("{n} (needs the `{n}` feature of shmemcache-cli)")
                    }
                })
                .collect();
            Err(format!(
                "cannot compare with {other:?} in this build; choose from: {}",
                list.join(", ")
            ))
        }
    }
}

// ----- shmemcache -------------------------------------------------------------------------

/// shmemcache on a fresh segment, opened by name in every worker.
pub struct ShmemTarget {
    pub segment: String,
    pub shards: u32,
    /// Create the segment with entry checksums.
    pub checksums: bool,
    pub cache: Option<Cache>,
}

impl Target for ShmemTarget {
    fn name(&self) -> &'static str {
        "shmemcache"
    }

    fn prepare(&mut self, w: &Workload) -> Result<(), String> {
        let _ = Cache::unlink(&self.segment);
        let per_entry = (w.key_size + w.value.len()) as u64 + 64;
        let cache = Options::new()
            .capacity_bytes((w.keys.len() as u64 * per_entry * 2).max(64 << 20))
            .max_entries(w.keys.len() as u64 * 2)
            .shards(self.shards)
            .checksums(self.checksums)
            .create(&self.segment)
            .map_err(|e| e.to_string())?;
        for k in &w.keys {
            cache.set(k, &w.value).map_err(|e| e.to_string())?;
        }
        self.cache = Some(cache);
        Ok(())
    }

    fn worker(&self, _: &Workload) -> Result<Box<dyn Worker>, String> {
        let cache = Options::new()
            .open_existing(&self.segment)
            .map_err(|e| e.to_string())?;
        Ok(Box::new(ShmemWorker(cache, 0)))
    }

    fn evictions(&self) -> Option<u64> {
        let c = self.cache.as_ref()?;
        c.stats().ok().map(|s| s.total.evictions)
    }

    fn finish(&mut self) {
        self.cache = None;
        let _ = Cache::unlink(&self.segment);
    }
}

struct ShmemWorker(Cache, u64);

impl Worker for ShmemWorker {
    fn get(&mut self, key: &[u8], buf: &mut [u8]) -> bool {
        match self.0.get_into(key, buf) {
            Ok(found) => found.is_some(),
            Err(_) => {
                self.1 += 1;
                false
            }
        }
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.1 += u64::from(self.0.set(key, value).is_err());
    }
    fn errors(&self) -> u64 {
        self.1
    }
}

// ----- the floors -------------------------------------------------------------------------

/// A physical reference: a fixed table of the workload's keys in shared memory (a memfd,
/// inherited by every forked worker), with no cache logic.
trait Reference: Send + Sync + Sized + 'static {
    const NAME: &'static str;
    fn build(shards: usize, keys: &[Vec<u8>], value_len: usize) -> std::io::Result<Self>;
    fn get(&self, key: &[u8], out: &mut [u8]) -> bool;
    fn set(&self, key: &[u8], value: &[u8]) -> bool;
}

/// Robust mutexes around a lookup and a memcpy: the locked floor.
impl Reference for Floor {
    const NAME: &'static str = "floor";
    fn build(shards: usize, keys: &[Vec<u8>], value_len: usize) -> std::io::Result<Self> {
        Floor::new(shards, keys, value_len)
    }
    fn get(&self, key: &[u8], out: &mut [u8]) -> bool {
        Floor::get(self, key, out)
    }
    fn set(&self, key: &[u8], value: &[u8]) -> bool {
        Floor::set(self, key, value)
    }
}

/// Seqlock-guarded fixed slots, gets without a lock: the limit of a lock-free read path.
impl Reference for OptimisticFloor {
    const NAME: &'static str = "optimistic-floor";
    fn build(shards: usize, keys: &[Vec<u8>], value_len: usize) -> std::io::Result<Self> {
        OptimisticFloor::new(shards, keys, value_len)
    }
    fn get(&self, key: &[u8], out: &mut [u8]) -> bool {
        OptimisticFloor::get(self, key, out)
    }
    fn set(&self, key: &[u8], value: &[u8]) -> bool {
        OptimisticFloor::set(self, key, value)
    }
}

struct FloorTarget<F> {
    floor: Option<Arc<F>>,
    shards: usize,
}

impl<F: Reference> Target for FloorTarget<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn prepare(&mut self, w: &Workload) -> Result<(), String> {
        let f = F::build(self.shards, &w.keys, w.value.len()).map_err(|e| e.to_string())?;
        self.floor = Some(Arc::new(f));
        Ok(())
    }

    fn worker(&self, _: &Workload) -> Result<Box<dyn Worker>, String> {
        // The memfd mapping is inherited across fork: every worker shares it.
        let f = self.floor.clone().ok_or("floor not prepared")?;
        Ok(Box::new(FloorWorker(f)))
    }
}

struct FloorWorker<F>(Arc<F>);

impl<F: Reference> Worker for FloorWorker<F> {
    fn get(&mut self, key: &[u8], buf: &mut [u8]) -> bool {
        self.0.get(key, buf)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.0.set(key, value);
    }
}

// ----- in-process LRU ---------------------------------------------------------------------

/// A `Mutex<lru::LruCache>` in each process: no sharing at all, the reference for what
/// sharing costs.
struct LruTarget;

impl Target for LruTarget {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn prepare(&mut self, _: &Workload) -> Result<(), String> {
        Ok(())
    }

    fn worker(&self, w: &Workload) -> Result<Box<dyn Worker>, String> {
        let cap = std::num::NonZeroUsize::new(w.keys.len().max(1) * 2).ok_or("no keys")?;
        let mut c = lru::LruCache::new(cap);
        for k in &w.keys {
            c.put(k.clone(), w.value.clone());
        }
        Ok(Box::new(LruWorker(Mutex::new(c))))
    }
}

struct LruWorker(Mutex<lru::LruCache<Vec<u8>, Vec<u8>>>);

impl Worker for LruWorker {
    fn get(&mut self, key: &[u8], buf: &mut [u8]) -> bool {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.get(key).is_some_and(|v| copy_out(v, buf))
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.put(key.to_vec(), value.to_vec());
    }
}

// ----- LMDB -------------------------------------------------------------------------------

#[cfg(feature = "lmdb")]
mod lmdb {
    use super::{Target, Worker, Workload};
    use heed::types::Bytes;
    use heed::{Database, Env, EnvFlags, EnvOpenOptions};

    /// LMDB through heed, in a temporary directory, without fsync (no eviction, no TTL).
    #[derive(Default)]
    pub struct LmdbTarget {
        dir: Option<tempfile::TempDir>,
        map_size: usize,
    }

    fn open(path: &std::path::Path, map_size: usize) -> Result<Env, String> {
        let mut o = EnvOpenOptions::new();
        o.map_size(map_size).max_dbs(1);
        // SAFETY: heed requires that no other `Env` for this path is open in this process
        // and that the environment is not carried across fork: the parent drops its `Env`
        // before forking and each worker opens its own after the fork. NO_SYNC and
        // NO_META_SYNC only give up durability, which a cache benchmark does not need.
        unsafe {
            o.flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC);
            o.open(path)
        }
        .map_err(|e| format!("lmdb: {e}"))
    }

    impl Target for LmdbTarget {
        fn name(&self) -> &'static str {
            "lmdb"
        }

        fn prepare(&mut self, w: &Workload) -> Result<(), String> {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let bytes = w.keys.len() * (w.key_size + w.value.len() + 64) * 4;
            self.map_size = (bytes.max(64 << 20)).div_ceil(4096) * 4096;
            let env = open(dir.path(), self.map_size)?;
            let mut tx = env.write_txn().map_err(|e| e.to_string())?;
            let db: Database<Bytes, Bytes> = env
                .create_database(&mut tx, None)
                .map_err(|e| e.to_string())?;
            for k in &w.keys {
                db.put(&mut tx, k, &w.value).map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())?;
            drop(env);
            self.dir = Some(dir);
            Ok(())
        }

        fn worker(&self, _: &Workload) -> Result<Box<dyn Worker>, String> {
            let dir = self.dir.as_ref().ok_or("lmdb not prepared")?;
            let env = open(dir.path(), self.map_size)?;
            let tx = env.read_txn().map_err(|e| e.to_string())?;
            let db: Database<Bytes, Bytes> = env
                .open_database(&tx, None)
                .map_err(|e| e.to_string())?
                .ok_or("lmdb: no database")?;
            drop(tx);
            Ok(Box::new(LmdbWorker { env, db }))
        }

        fn finish(&mut self) {
            self.dir = None;
        }
    }

    struct LmdbWorker {
        env: Env,
        db: Database<Bytes, Bytes>,
    }

    impl Worker for LmdbWorker {
        fn get(&mut self, key: &[u8], buf: &mut [u8]) -> bool {
            let Ok(tx) = self.env.read_txn() else {
                return false;
            };
            matches!(self.db.get(&tx, key), Ok(Some(v)) if super::copy_out(v, buf))
        }
        fn set(&mut self, key: &[u8], value: &[u8]) {
            if let Ok(mut tx) = self.env.write_txn() {
                if self.db.put(&mut tx, key, value).is_ok() {
                    let _ = tx.commit();
                }
            }
        }
    }
}

// ----- Redis ------------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis_target {
    use super::{Target, Worker, Workload};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A real redis-server over a Unix socket: one given by path, or one started here (and
    /// stopped afterwards). One request at a time per worker, as a prefork worker does.
    pub struct RedisTarget {
        socket: Option<PathBuf>,
        server_bin: String,
        server: Option<Child>,
        dir: Option<tempfile::TempDir>,
    }

    impl RedisTarget {
        pub fn new(a: &super::super::BenchArgs) -> RedisTarget {
            RedisTarget {
                socket: a.redis_socket.clone(),
                server_bin: a.redis_server.clone(),
                server: None,
                dir: None,
            }
        }

        fn connect(&self) -> Result<redis::Connection, String> {
            let path = self.socket.as_ref().ok_or("redis: no socket")?;
            let client = redis::Client::open(redis::ConnectionInfo {
                addr: redis::ConnectionAddr::Unix(path.clone()),
                redis: Default::default(),
            })
            .map_err(|e| format!("redis: {e}"))?;
            client
                .get_connection()
                .map_err(|e| format!("redis at {}: {e}", path.display()))
        }

        fn start(&mut self) -> Result<(), String> {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let sock = dir.path().join("redis.sock");
            let child = Command::new(&self.server_bin)
                .args(["--port", "0", "--unixsocket"])
                .arg(&sock)
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "cannot start {:?} ({e}); install redis-server or pass --redis-socket",
                        self.server_bin
                    )
                })?;
            self.server = Some(child);
            self.socket = Some(sock);
            self.dir = Some(dir);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match self.connect() {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    impl Target for RedisTarget {
        fn name(&self) -> &'static str {
            "redis"
        }

        fn prepare(&mut self, w: &Workload) -> Result<(), String> {
            if self.socket.is_none() {
                self.start()?;
            }
            let mut con = self.connect()?;
            for chunk in w.keys.chunks(1000) {
                let mut p = redis::pipe();
                for k in chunk {
                    p.cmd("SET")
                        .arg(k.as_slice())
                        .arg(w.value.as_slice())
                        .ignore();
                }
                p.query::<()>(&mut con).map_err(|e| format!("redis: {e}"))?;
            }
            Ok(())
        }

        fn worker(&self, _: &Workload) -> Result<Box<dyn Worker>, String> {
            Ok(Box::new(RedisWorker(self.connect()?)))
        }

        fn finish(&mut self) {
            if let Some(mut c) = self.server.take() {
                let _ = c.kill();
                let _ = c.wait();
                // Its socket went with it; the next repetition starts a new server.
                self.socket = None;
            }
            self.dir = None;
        }
    }

    struct RedisWorker(redis::Connection);

    impl Worker for RedisWorker {
        fn get(&mut self, key: &[u8], buf: &mut [u8]) -> bool {
            match redis::cmd("GET")
                .arg(key)
                .query::<Option<Vec<u8>>>(&mut self.0)
            {
                Ok(Some(v)) => super::copy_out(&v, buf),
                _ => false,
            }
        }
        fn set(&mut self, key: &[u8], value: &[u8]) {
            let _ = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query::<()>(&mut self.0);
        }
    }
}
