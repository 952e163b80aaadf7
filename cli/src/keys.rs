//! Keys on the command line: binary keys (memo keys hold NUL bytes) are printed escaped and
//! read back from the same form, or as hex with `--hex`.
//!
//! Escaped form: valid UTF-8 prints as itself except `\` (printed `\\`) and control
//! characters (`\n`, `\t`, `\r`, `\0`, or `\xNN`); bytes that are not UTF-8 print as
//! `\xNN`. Reading accepts those escapes and nothing else after a backslash.

use std::fmt::Write;

/// How keys are written on the command line and printed.
#[derive(Clone, Copy, Debug)]
pub struct KeyArg {
    /// Hex instead of escaped text.
    pub hex: bool,
}

impl KeyArg {
    /// The bytes a key argument names.
    pub fn parse(self, s: &str) -> Result<Vec<u8>, String> {
        if self.hex {
            unhex(s)
        } else {
            unescape(s)
        }
    }

    /// A key as this format prints it.
    pub fn show(self, key: &[u8]) -> String {
        if self.hex {
            key.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
        } else {
            escape(key)
        }
    }
}

/// Escapes `bytes` so the result is one line of printable text that [`unescape`] reverses.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\0' => out.push_str("\\0"),
                c if c.is_control() && (c as u32) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Reverses [`escape`]: `\\`, `\n`, `\t`, `\r`, `\0` and `\xNN`.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let (&e, tail) = rest
            .split_first()
            .ok_or_else(|| format!("key {s:?} ends in a lone backslash (write \\\\)"))?;
        rest = tail;
        out.push(match e {
            b'\\' => b'\\',
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'0' => 0,
            b'x' => {
                let hex = rest
                    .get(..2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad \\x escape in key {s:?} (two hex digits)"))?;
                rest = &rest[2..];
                hex
            }
            other => {
                return Err(format!(
                    "unknown escape \\{} in key {s:?} (use \\\\, \\n, \\t, \\r, \\0 or \\xNN)",
                    other as char
                ))
            }
        });
    }
    Ok(out)
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return Err(format!("hex key {s:?} has an odd number of digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("hex key {s:?} is not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_keys_round_trip() {
        let samples: [&[u8]; 6] = [
            b"memo\0app::price\0\x05sku-1",
            b"plain:key",
            b"back\\slash",
            "caf\u{e9}\n".as_bytes(),
            b"\xff\xfe bytes",
            b"\x7f\x1b",
        ];
        for k in samples {
            let e = escape(k);
            assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
            assert_eq!(unescape(&e).unwrap(), k, "{e}");
            let h = KeyArg { hex: true };
            assert_eq!(h.parse(&h.show(k)).unwrap(), k);
        }
        assert_eq!(escape(b"memo\0f"), "memo\\0f");
        assert_eq!(escape(b"\x01"), "\\x01");
        assert_eq!(unescape("a\\x00b").unwrap(), b"a\0b");
        for bad in ["\\", "\\q", "\\x1", "\\xzz"] {
            assert!(unescape(bad).is_err(), "{bad:?}");
        }
        assert!(unhex("abc").is_err() && unhex("zz").is_err());
        assert_eq!(unhex("00ff41").unwrap(), b"\0\xffA");
    }
}
