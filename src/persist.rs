//! Persistent namespaces: a namespace that warm-starts from its last snapshot when it is
//! made (the first process to open it after a reboot), runs cacheman's hooks (loader,
//! builder, validator, pre-save, post-load), and saves itself by autosync's rule.
//!
//! Hooks run with no lock held and receive copies of the entries, so a hook that mutates
//! what it is given changes nothing in the cache. A validator or loader that panics counts
//! as "reject". Saves run on a thread of their own; across processes, one saves at a time
//! (the cache's own `once`, whose holder is taken over if it dies).

use crate::autosync::{AutoSync, BUCKETS};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::layout::{ns_word, NS_SLOTS};
use crate::snapshot::{read_items, write_items, SnapshotReport};
use crate::sync::OnceBusy;
use crate::sys::fork;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One entry as the persistence hooks see it: a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The key (without any namespace tag).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// What remains of its TTL; `None`: it does not expire.
    pub ttl: Option<Duration>,
}

type Loader = dyn Fn(&str) -> Option<Vec<Item>> + Send + Sync;
type Builder = dyn Fn(&str) -> Vec<Item> + Send + Sync;
type Validator = dyn Fn(&str, &[Item]) -> bool + Send + Sync;
type Transform = dyn Fn(&str, &mut Vec<Item>) + Send + Sync;

/// How a persistent namespace is kept on disk ([`Cache::persistent_namespace`]).
///
/// ```no_run
/// use shmemcache::{AutoSync, Cache, Item, Persistence};
/// use std::time::Duration;
///
/// let cache = Cache::open("app")?;
/// let prices = cache.persistent_namespace(
///     "prices",
///     Persistence::new("/var/lib/app/cache")
///         .builder(|_ns| vec![Item { key: b"base".to_vec(), value: b"100".to_vec(), ttl: None }])
///         .autosync(AutoSync::new().interval(Duration::from_secs(30))),
/// )?;
/// prices.set(b"apple", b"3")?; // counted; saved by the autosync rule or the timer
/// # Ok::<(), shmemcache::Error>(())
/// ```
#[derive(Clone)]
pub struct Persistence {
    dir: PathBuf,
    autosync: Option<AutoSync>,
    loader: Option<Arc<Loader>>,
    builder: Option<Arc<Builder>>,
    validator: Option<Arc<Validator>>,
    pre_save: Option<Arc<Transform>>,
    post_load: Option<Arc<Transform>>,
}

impl From<PathBuf> for Persistence {
    fn from(dir: PathBuf) -> Persistence {
        Persistence::new(dir)
    }
}

impl From<&Path> for Persistence {
    fn from(dir: &Path) -> Persistence {
        Persistence::new(dir)
    }
}

impl From<&str> for Persistence {
    fn from(dir: &str) -> Persistence {
        Persistence::new(dir)
    }
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence")
            .field("dir", &self.dir)
            .field("autosync", &self.autosync)
            .finish_non_exhaustive()
    }
}

impl Persistence {
    /// Snapshots in `dir` (one file per namespace, `NAME.snap`, the name escaped), with
    /// autosync's default thresholds and no hooks.
    pub fn new(dir: impl Into<PathBuf>) -> Persistence {
        Persistence {
            dir: dir.into(),
            autosync: Some(AutoSync::default()),
            loader: None,
            builder: None,
            validator: None,
            pre_save: None,
            post_load: None,
        }
    }

    /// When to save by itself (`None`: only on [`Cache::save_now`]).
    pub fn autosync(mut self, rule: impl Into<Option<AutoSync>>) -> Self {
        self.autosync = rule.into();
        self
    }

    /// Loads the entries instead of the snapshot file; `None`: nothing to load.
    pub fn loader(mut self, f: impl Fn(&str) -> Option<Vec<Item>> + Send + Sync + 'static) -> Self {
        self.loader = Some(Arc::new(f));
        self
    }

    /// Builds the entries when nothing was loaded or the validator rejected it.
    pub fn builder(mut self, f: impl Fn(&str) -> Vec<Item> + Send + Sync + 'static) -> Self {
        self.builder = Some(Arc::new(f));
        self
    }

    /// Accepts or rejects what was loaded (a panic rejects).
    pub fn validator(mut self, f: impl Fn(&str, &[Item]) -> bool + Send + Sync + 'static) -> Self {
        self.validator = Some(Arc::new(f));
        self
    }

    /// Changes what is about to be saved (a copy: the cache is not changed).
    pub fn pre_save(mut self, f: impl Fn(&str, &mut Vec<Item>) + Send + Sync + 'static) -> Self {
        self.pre_save = Some(Arc::new(f));
        self
    }

    /// Changes what was loaded before it is stored.
    pub fn post_load(mut self, f: impl Fn(&str, &mut Vec<Item>) + Send + Sync + 'static) -> Self {
        self.post_load = Some(Arc::new(f));
        self
    }

    /// The snapshot file of namespace `ns` (`@default.snap` for the default namespace,
    /// `""`).
    pub fn file_of(&self, ns: &str) -> PathBuf {
        if ns.is_empty() {
            return self.dir.join("@default.snap");
        }
        self.dir.join(format!("{}.snap", escape(ns)))
    }
}

/// `ns` as a file name: `[A-Za-z0-9._-]` kept, every other byte as `%XX`.
fn escape(ns: &str) -> String {
    let mut s = String::new();
    for b in ns.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.starts_with('.') {
        s.replace_range(..1, "%2E");
    }
    s
}

/// A persistent namespace's state in this process.
pub(crate) struct PersistState {
    cfg: Persistence,
    name: String,
    /// A save of this process is running (the next trigger waits for it).
    saving: AtomicBool,
    /// The fork generation the timer thread runs in (0: none).
    timer: AtomicU64,
}

fn wall() -> Duration {
    Duration::from_nanos(crate::clock::unix_ns())
}

impl Cache {
    /// A handle on namespace `name` kept on disk as `p` says. When this call makes the
    /// namespace (the first process to open it since the segment was created, typically
    /// after a reboot), it warm-starts: the loader hook, or else the last snapshot file,
    /// gives the entries; the validator may reject them; if there are none or they were
    /// rejected, the builder runs. The entries become visible at once (a staged
    /// generation). Then edits through this handle are counted in the segment, and the
    /// namespace saves itself when autosync's rule says so.
    pub fn persistent_namespace(&self, name: &str, p: Persistence) -> Result<Cache> {
        let (slot, made) = self.ns_open(name)?;
        let mut h = self.with_namespace(slot);
        h.auto_persist = self.auto_persist.clone();
        h.make_persistent(name, p, made)?;
        Ok(h)
    }

    /// Attaches persistence `p` to this handle's namespace (`name`, "" for the default
    /// one), warm-starting it if `made` (this process just made it).
    pub(crate) fn make_persistent(&mut self, name: &str, p: Persistence, made: bool) -> Result<()> {
        self.persist = Some(Arc::new(PersistState {
            cfg: p,
            name: name.to_string(),
            saving: AtomicBool::new(false),
            timer: AtomicU64::new(0),
        }));
        if made {
            self.warm_start()?;
        }
        self.start_timer();
        Ok(())
    }

    fn persist_state(&self) -> Result<&Arc<PersistState>> {
        self.persist.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "not a persistent namespace handle (see Cache::persistent_namespace)".into(),
            )
        })
    }

    /// Loads (or builds) the namespace's entries and makes them current at once.
    fn warm_start(&self) -> Result<()> {
        let p = self.persist_state()?;
        let (cfg, name) = (&p.cfg, p.name.as_str());
        let loaded = match &cfg.loader {
            Some(l) => catch_unwind(AssertUnwindSafe(|| l(name))).unwrap_or(None),
            None => match read_items(&cfg.file_of(name)) {
                Ok(items) => items,
                // A damaged snapshot is rejected like a validator would: build instead.
                Err(Error::BadSnapshot { .. }) => None,
                Err(e) => return Err(e),
            },
        };
        let accepted = loaded.filter(|items| match &cfg.validator {
            Some(v) => catch_unwind(AssertUnwindSafe(|| v(name, items))).unwrap_or(false),
            None => true,
        });
        let items = match accepted {
            Some(mut items) => {
                if let Some(f) = &cfg.post_load {
                    f(name, &mut items);
                }
                items
            }
            None => match &cfg.builder {
                Some(b) => catch_unwind(AssertUnwindSafe(|| b(name))).map_err(|_| {
                    Error::InvalidArgument(format!("the builder of namespace {name:?} panicked"))
                })?,
                None => Vec::new(),
            },
        };
        self.replace_with(&items)?;
        if let Some(rule) = &cfg.autosync {
            rule.reset(self.edit_ring());
        }
        Ok(())
    }

    /// Makes `items` the namespace's whole contents, in one step.
    fn replace_with(&self, items: &[Item]) -> Result<()> {
        let staged = self.staged()?;
        for it in items {
            let k = staged.route(&it.key)?;
            let deadline = it.ttl.map_or(0, |d| {
                crate::clock::monotonic_ns()
                    .saturating_add(d.as_nanos().min(u64::MAX as u128 / 4) as u64)
            });
            staged.store_routed(&k, &it.value, deadline, crate::table::StoreMode::Set)?;
        }
        staged.publish_staged()?;
        Ok(())
    }

    /// Saves this persistent namespace now: its entries are copied out (one bounded batch
    /// per lock hold), handed to the pre-save hook as a copy, and written to its snapshot
    /// file, which is replaced atomically.
    pub fn save_now(&self) -> Result<SnapshotReport> {
        let p = self.persist_state()?;
        if let Some(rule) = &p.cfg.autosync {
            // Edits from here on count towards the next save.
            rule.reset(self.edit_ring());
        }
        let mut items = self.export_items()?;
        if let Some(f) = &p.cfg.pre_save {
            f(&p.name, &mut items);
        }
        if let Some(dir) = p.cfg.file_of(&p.name).parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                op: "create directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        write_items(&p.cfg.file_of(&p.name), &items)
    }

    /// Invalidates this namespace and its dependents (see [`invalidate`](Self::invalidate)),
    /// then runs its builder. Returns how many namespaces were invalidated.
    pub fn rebuild(&self) -> Result<u32> {
        let p = self.persist_state()?;
        let n = self.invalidate()?;
        let items = match &p.cfg.builder {
            Some(b) => catch_unwind(AssertUnwindSafe(|| b(&p.name))).map_err(|_| {
                Error::InvalidArgument(format!("the builder of namespace {:?} panicked", p.name))
            })?,
            None => Vec::new(),
        };
        self.replace_with(&items)?;
        Ok(n)
    }

    /// Deletes this namespace's snapshot file and those of the namespaces that depend on
    /// it (in the same directory), recursively. The entries in memory stay.
    pub fn delete_saved(&self) -> Result<u32> {
        let p = self.persist_state()?;
        let mut done = [false; NS_SLOTS];
        let mut queue = vec![self.ns];
        done[self.ns] = true;
        let mut n = 0;
        while let Some(s) = queue.pop() {
            let name = if s == self.ns {
                p.name.clone()
            } else {
                self.ns_name(s)
            };
            remove_if_exists(&p.cfg.file_of(&name))?;
            n += 1;
            for info_slot in self.ns_dependents(s) {
                if !done[info_slot] {
                    done[info_slot] = true;
                    queue.push(info_slot);
                }
            }
        }
        Ok(n)
    }

    /// The autosync edit counters of this handle's namespace, in the segment.
    fn edit_ring(&self) -> &[AtomicU64] {
        self.seg.ns_words(self.ns, ns_word::EDITS, BUCKETS)
    }

    /// Counts an edit of a persistent namespace and starts a save if one is due.
    #[inline]
    pub(crate) fn edited(&self) {
        if let Some(p) = &self.persist {
            self.edited_slow(p);
        }
    }

    #[cold]
    fn edited_slow(&self, p: &Arc<PersistState>) {
        let Some(rule) = &p.cfg.autosync else {
            return;
        };
        let ring = self.edit_ring();
        let now = wall();
        rule.record(ring, now);
        if p.timer.load(Ordering::Relaxed) != fork::generation() {
            self.start_timer();
        }
        if rule.due(ring, now) {
            self.save_in_background();
        }
    }

    /// Saves on a thread of this process, unless one is saving already; across processes
    /// the cache's own `once` lets one save at a time.
    fn save_in_background(&self) {
        let Some(p) = &self.persist else {
            return;
        };
        if p.saving.swap(true, Ordering::AcqRel) {
            return;
        }
        let h = self.clone_handle();
        let spawned = std::thread::Builder::new()
            .name("shmemcache-autosync".into())
            .spawn(move || {
                h.save_once();
                if let Some(p) = &h.persist {
                    p.saving.store(false, Ordering::Release);
                }
            });
        if spawned.is_err() {
            p.saving.store(false, Ordering::Release);
        }
    }

    /// One save machine-wide at a time; a saver that dies is taken over by the next.
    fn save_once(&self) {
        let Some(p) = &self.persist else {
            return;
        };
        let lock = format!("autosync:{}", p.name);
        let _ = self.once(
            &lock,
            Some(Duration::from_secs(60)),
            OnceBusy::Return(()),
            || {
                let _ = self.save_now();
            },
        );
    }

    /// Starts this process's interval timer, if the rule has one and it is not running in
    /// this process (after a fork, the child starts its own on its first edit).
    fn start_timer(&self) {
        let Some(p) = &self.persist else {
            return;
        };
        let Some(every) = p.cfg.autosync.as_ref().and_then(AutoSync::timer) else {
            return;
        };
        let gen = fork::generation();
        if p.timer.swap(gen, Ordering::AcqRel) == gen {
            return;
        }
        let weak = Arc::downgrade(p);
        let mut h = self.clone_handle();
        h.persist = None; // the thread must not keep the state alive
        let _ = std::thread::Builder::new()
            .name("shmemcache-autosync-timer".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(state) = weak.upgrade() else {
                    return; // every handle of this namespace is gone
                };
                if fork::generation() != gen {
                    return;
                }
                let Some(rule) = &state.cfg.autosync else {
                    return;
                };
                let mut live = h.clone_handle();
                live.persist = Some(state.clone());
                if rule.pending(live.edit_ring()) {
                    live.save_in_background();
                }
            });
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}
