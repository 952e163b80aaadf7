//! Units on the command line: sizes, durations and TTLs come from `shmemcache-units` (the
//! parser `#[memoize]` uses too); rates, latencies and file modes are the CLI's own.

pub use shmemcache_units::{
    format_bytes as fmt_bytes, format_duration as fmt_duration, parse_duration, parse_size,
    parse_ttl,
};

/// Octal file mode, at most `777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("bad mode {s:?} (octal, e.g. 600)"))
}

/// Operations per second with a unit: `"8.28M"`, `"86.1k"`.
pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Nanoseconds as `"220ns"`, `"1.54µs"`, `"25.0ms"`.
pub fn fmt_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.2}µs", ns as f64 / 1e3)
    } else {
        format!("{:.1}ms", ns as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_rates_and_latencies() {
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert!(parse_mode("999").is_err());
        assert_eq!(fmt_rate(8_280_000.0), "8.28M");
        assert_eq!(fmt_rate(86_100.0), "86.1k");
        assert_eq!(fmt_ns(1540), "1.54µs");
        assert_eq!(fmt_ns(220), "220ns");
    }
}
