// A method must say whether `self` is part of the key.
use shmemcache::{memoize, Cache};
use std::sync::LazyLock;

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::open("ui-memoize-method").unwrap());

struct Catalog;

impl Catalog {
    #[memoize(cache = CACHE)]
    fn price(&self, sku: &str) -> u64 {
        sku.len() as u64
    }
}

fn main() {
    let _ = Catalog.price("a");
}
