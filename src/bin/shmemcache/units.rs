//! Human units on the command line: sizes like `64MiB`, durations like `5m`, and their
//! printed forms.

use std::time::Duration;

/// Splits `"64MiB"` into `(64, "MiB")`.
fn split_num<'a>(s: &'a str, what: &str, example: &str) -> Result<(u64, &'a str), String> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(at);
    let n = num
        .parse()
        .map_err(|_| format!("bad {what} {s:?} (try {example})"))?;
    Ok((n, unit.trim()))
}

/// `"64MiB"`, `"512k"`, `"100"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = split_num(s, "size", "64MiB")?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`; a bare number is seconds. Zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_num(s, "duration", "30s, 5m")?;
    let secs = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    };
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => secs(1)?,
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86400)?,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h, d)")),
    };
    if d.is_zero() {
        return Err("a duration of zero is not allowed".into());
    }
    Ok(d)
}

/// Octal file mode, at most `777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("bad mode {s:?} (octal, e.g. 600)"))
}

/// `1536` → `"1.5KiB"`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// The largest unit that divides `d` exactly: `"5m"`, `"250ms"`, `"90s"`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}µs", d.as_micros());
    }
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
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
    fn sizes_and_durations_round_trip() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size(" 100 "), Ok(100));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("18446744073709551615d").is_err());
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_bytes(64 << 20), "64.0MiB");
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert!(parse_mode("999").is_err());
        assert_eq!(fmt_rate(8_280_000.0), "8.28M");
        assert_eq!(fmt_ns(1540), "1.54µs");
    }
}
