//! Sizes and durations as people write them, parsed and printed one way everywhere: the
//! `shmemcache` command line and `#[memoize(ttl = "...")]` both use this crate, so a TTL
//! that one accepts the other accepts too.
//!
//! ```
//! use shmemcache_units::{format_duration, parse_duration, parse_size, parse_ttl};
//! use std::time::Duration;
//!
//! assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
//! assert_eq!(parse_size("2TiB"), Ok(2 << 40));
//! assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
//! assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
//! assert_eq!(parse_ttl("never"), Ok(None));
//! assert_eq!(format_duration(Duration::from_millis(299_960)), "4m59.96s");
//! ```
//!
//! Numbers are exact decimals (no floating point): `0.1s` is 100 ms, not 99.999… ms.

use std::time::Duration;

/// A decimal number split into its integer part and its fraction `digits / 10^scale`.
struct Decimal {
    int: u128,
    frac: u128,
    scale: u32,
}

impl Decimal {
    /// `self * unit`, exact up to truncation of what falls below one `1/unit`.
    fn times(&self, unit: u128) -> Option<u128> {
        let whole = self.int.checked_mul(unit)?;
        let part = self.frac.checked_mul(unit)? / 10u128.checked_pow(self.scale)?;
        whole.checked_add(part)
    }
}

/// Splits `"1.5GiB"` into the number and the rest. At most 18 fraction digits.
fn split_number(s: &str) -> Option<(Decimal, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let parse = |d: &str| -> Option<u128> {
        if d.is_empty() {
            Some(0)
        } else {
            d.parse().ok()
        }
    };
    Some((
        Decimal {
            int: parse(int)?,
            frac: parse(frac)?,
            scale: frac.len() as u32,
        },
        rest,
    ))
}

/// Parses a size: `"64MiB"`, `"1.5GiB"`, `"512k"`, `"100"` (bytes), `"2TiB"`.
///
/// `KiB`, `MiB`, `GiB`, `TiB` and the one-letter `K`, `M`, `G`, `T` are powers of 1024;
/// `kB`, `MB`, `GB`, `TB` are powers of 1000; `B` or nothing is bytes. Units are
/// case-insensitive and may follow a space. A fraction of a byte is dropped.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (n, unit) = split_number(t).ok_or_else(|| format!("bad size {s:?} (try 64MiB)"))?;
    let mul: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "bad size unit in {s:?} (use B, KiB, MiB, GiB, TiB, or kB, MB, GB, TB)"
            ))
        }
    };
    n.times(mul)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Nanoseconds per unit, or `None` for an unknown unit.
fn unit_ns(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" | "sec" | "secs" => 1_000_000_000,
        "m" | "min" | "mins" => 60_000_000_000,
        "h" | "hr" | "hrs" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        _ => return None,
    })
}

/// Parses a positive duration: `"250ms"`, `"1.5s"`, `"5m"`, `"2h"`, `"1d"`, or several
/// parts such as `"1m30s"` and `"4m59.96s"` (what [`format_duration`] prints). A bare
/// number is seconds. Units: ns, us (µs), ms, s, m (min), h, d. Zero is refused: a
/// duration here is a TTL or an interval, and zero of either is a mistake (say `never`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?} (try 30s, 1.5s, 5m, 1m30s)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let (n, after) = split_number(rest).ok_or_else(bad)?;
        let after = after.trim_start();
        let end = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(end);
        let per = if unit.is_empty() {
            // A bare number is seconds, and only as the whole duration.
            if parts > 0 || !tail.trim().is_empty() {
                return Err(bad());
            }
            1_000_000_000
        } else {
            unit_ns(&unit.to_ascii_lowercase()).ok_or_else(|| {
                format!("bad duration unit {unit:?} in {s:?} (use ns, us, ms, s, m, h or d)")
            })?
        };
        total = n
            .times(per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        parts += 1;
        rest = tail.trim_start();
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("duration {s:?} is too large"))?;
    let d = Duration::new(secs, (total % 1_000_000_000) as u32);
    if d.is_zero() {
        return Err(format!(
            "a duration of zero is not allowed in {s:?} (use \"never\" for no expiry)"
        ));
    }
    Ok(d)
}

/// Parses a TTL: `"never"` (or `"none"`) is `None`, anything else is [`parse_duration`].
pub fn parse_ttl(s: &str) -> Result<Option<Duration>, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "never" | "none" => Ok(None),
        _ => parse_duration(s).map(Some),
    }
}

/// Prints a duration the way people read it: `"4m59.96s"`, `"5m"`, `"1h30m"`, `"2d3h"`,
/// `"250ms"`, `"1.5µs"`. Exact down to the millisecond above one second.
/// [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        return match ns {
            n if n < 1_000 => format!("{n}ns"),
            n if n < 1_000_000 => format!("{}µs", decimal(n, 1_000, 3)),
            n => format!("{}ms", decimal(n, 1_000_000, 3)),
        };
    }
    let mut out = String::new();
    let mut rest = ns;
    for (unit, per) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
    ] {
        if rest >= per {
            out.push_str(&format!("{}{unit}", rest / per));
            rest %= per;
        }
    }
    if rest > 0 {
        // Whole milliseconds: a TTL is printed to the millisecond.
        let ms = rest / 1_000_000;
        if ms > 0 {
            out.push_str(&format!("{}s", decimal(ms, 1000, 3)));
        } else if out.is_empty() {
            out.push_str(&format!("{rest}ns"));
        }
    }
    out
}

/// `n / per` with up to `digits` fraction digits, trailing zeros dropped: `1500/1000 → 1.5`.
fn decimal(n: u128, per: u128, digits: usize) -> String {
    let (int, frac) = (n / per, n % per);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:0width$}", width = per.ilog10() as usize);
    let f = f[..digits.min(f.len())].trim_end_matches('0');
    if f.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{f}")
    }
}

/// Prints a byte count with a binary unit: `1536 → "1.5KiB"`, `64 << 20 → "64MiB"`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    let mut per: u128 = 1;
    while u + 1 < UNITS.len() && n as u128 >= per * 1024 {
        per *= 1024;
        u += 1;
    }
    format!("{}{}", decimal(n as u128, per, 1), UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size(" 100 "), Ok(100));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1.5 gib"), Ok(3 << 29));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        for bad in [
            "",
            "MiB",
            "12XB",
            "1.2.3MiB",
            "-1MiB",
            "99999999999999999999999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("18446744073709551615GiB").is_err());
        assert!(parse_size("16777216TiB").is_err());
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)));
        assert_eq!(parse_duration("30"), Ok(ms(30_000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("5 min"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1d"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("4m59.96s"), Ok(ms(299_960)));
        assert_eq!(parse_duration("1h 30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("750us"), Ok(Duration::from_micros(750)));
        assert_eq!(parse_duration("2µs"), Ok(Duration::from_micros(2)));
        for bad in [
            "",
            "s",
            "0s",
            "0",
            "0.0ms",
            "5 weeks",
            "3 fortnights",
            "-1s",
            "1m30",
            "1.2.3s",
            "18446744073709551615d",
            "never",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("never"), Ok(None));
        assert_eq!(parse_ttl("NEVER"), Ok(None));
        assert_eq!(parse_ttl("30s"), Ok(Some(Duration::from_secs(30))));
        assert!(parse_ttl("0s").is_err());
    }

    #[test]
    fn printing_round_trips() {
        let cases = [
            (Duration::from_millis(299_960), "4m59.96s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(2 * 86_400 + 3 * 3600), "2d3h"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_nanos(12), "12ns"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(61_001), "1m1.001s"),
        ];
        for (d, s) in cases {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_bytes(1536), "1.5KiB");
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(100), "100B");
        assert_eq!(format_bytes(3 << 40), "3TiB");
    }
}
