//! What a user sees when `#[memoize]` is used wrongly: the messages are checked against
//! the files in `tests/ui/` (regenerate them with `TRYBUILD=overwrite` after a compiler
//! upgrade changes their wording).

#[test]
fn memoize_misuse_gives_clear_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
