// A result type without Serialize/Deserialize: the error names the type and the derives.
use shmemcache::{memoize, Cache};
use std::sync::LazyLock;

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::open("ui-memoize").unwrap());

struct Plain(u64);

#[memoize(cache = CACHE)]
fn plain() -> Plain {
    Plain(1)
}

fn main() {
    let _ = plain();
}
