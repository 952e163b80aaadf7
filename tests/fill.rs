//! The space budget, held to its floors: the fill table of `examples/fill.rs` (default
//! options, 4 MiB, 16-byte keys, three times the budget written), printed and checked.

#[path = "../examples/fill.rs"]
#[allow(dead_code)]
mod fill;

#[test]
fn the_budget_holds_live_bytes_for_every_size_mix() {
    let budget = 4u64 << 20;
    let rows = fill::table(budget, None).unwrap();
    fill::print(budget, &rows);
    for r in &rows {
        // The segment is the budget plus its fixed overhead, never more.
        assert!(
            r.segment <= budget + r.fixed_overhead,
            "{}: segment {} for a budget of {budget}",
            r.label,
            r.segment
        );
        // Headers, coordination table, memo statistics, namespace table and per-process
        // counters: a fixed 142 KiB with the defaults, whatever the budget.
        assert!(r.fixed_overhead < 160 << 10, "{}", r.fixed_overhead);
        let live = r.live as f64 / budget as f64;
        match r.label {
            "100 B" => {
                assert!(r.metadata_per_entry <= 48.0, "{}", r.metadata_per_entry);
                assert!(live >= 0.50, "100 B: {live}");
            }
            _ => assert!(live >= 0.85, "{}: {live}", r.label),
        }
    }
}
