//! The invalidation messages published on a tier's channel.
//!
//! ```text
//! byte 0        kind: b'K' one key, b'A' every key of the tier
//! byte 1        n, the length of the origin
//! bytes 2..2+n  origin: the L1 that made the change (its own subscriber skips it)
//! the rest      the key (kind K)
//! ```

/// One invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalidation<'a> {
    /// Drop this key.
    Key(&'a [u8]),
    /// Drop every key.
    All,
}

/// Encodes `inv` from `origin` (at most 255 bytes; longer origins are cut).
pub(crate) fn encode(origin: &[u8], inv: &Invalidation<'_>) -> Vec<u8> {
    let origin = &origin[..origin.len().min(255)];
    let key: &[u8] = match inv {
        Invalidation::Key(k) => k,
        Invalidation::All => &[],
    };
    let mut m = Vec::with_capacity(2 + origin.len() + key.len());
    m.push(match inv {
        Invalidation::Key(_) => b'K',
        Invalidation::All => b'A',
    });
    m.push(origin.len() as u8);
    m.extend_from_slice(origin);
    m.extend_from_slice(key);
    m
}

/// Decodes a message: its origin and what it invalidates, or `None` if it is malformed
/// (anyone who can publish on the channel can send bytes; a bad message is ignored).
pub(crate) fn decode(m: &[u8]) -> Option<(&[u8], Invalidation<'_>)> {
    let kind = *m.first()?;
    let n = *m.get(1)? as usize;
    let origin = m.get(2..2 + n)?;
    let rest = &m[2 + n..];
    match kind {
        b'K' => Some((origin, Invalidation::Key(rest))),
        b'A' if rest.is_empty() => Some((origin, Invalidation::All)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        for inv in [
            Invalidation::Key(b"k\n\0x"),
            Invalidation::Key(b""),
            Invalidation::All,
        ] {
            let m = encode(b"boot/seg/1", &inv);
            assert_eq!(decode(&m), Some((&b"boot/seg/1"[..], inv)));
        }
        for bad in [&b""[..], b"K", b"K\x05ab", b"Z\x00", b"A\x00junk"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        let long = vec![b'o'; 300];
        let m = encode(&long, &Invalidation::All);
        assert_eq!(decode(&m).unwrap().0.len(), 255);
    }
}
