//! Model-based property tests: the shard table against a `Vec`-in-LRU-order model, with
//! expiry on a fake clock (`shmemcache::model` holds the driver shared with the fuzz target).

use proptest::prelude::*;
use shmemcache::model::{run, run_with, Op};

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Expired entries reclaimed eagerly: every result, eviction count, length and the
    /// final LRU order equal the model's.
    #[test]
    fn table_matches_model_exactly(data in proptest::collection::vec(any::<u8>(), 0..2400)) {
        let ops = Op::decode(&data);
        if let Err(e) = run(&ops, true) {
            prop_assert!(false, "{}", e);
        }
    }

    /// The same with strict LRU order (every get moves its entry to the head).
    #[test]
    fn strict_lru_table_matches_model_exactly(data in proptest::collection::vec(any::<u8>(), 0..2400)) {
        let ops = Op::decode(&data);
        if let Err(e) = run_with(&ops, true, true) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Lazy expiry: the table never returns a value that is not the key's last live write.
    #[test]
    fn table_never_returns_stale_values(data in proptest::collection::vec(any::<u8>(), 0..2400)) {
        let ops = Op::decode(&data);
        if let Err(e) = run(&ops, false) {
            prop_assert!(false, "{}", e);
        }
    }
}
