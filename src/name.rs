//! Segment names: what `shm_open` accepts and nothing that could reach outside `/dev/shm`.

use crate::error::{Error, Result};

/// Longest accepted name (the `/dev/shm` file name limit is 255; leave room for prefixes).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a segment name: 1 to [`MAX_NAME_LEN`] characters from `[A-Za-z0-9._-]`, not
/// starting with `.` (no hidden files, no `.`/`..`).
///
/// ```
/// assert!(shmemcache::validate_name("sessions-v2").is_ok());
/// assert!(shmemcache::validate_name("../etc/passwd").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("the name is longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("the name may not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for n in ["a", "cache-1", "my_cache.v2", &"x".repeat(200)] {
            validate_name(n).unwrap();
        }
    }

    #[test]
    fn refuses_traversal_slashes_and_odd_bytes() {
        for n in [
            "",
            "/",
            "../x",
            "a/b",
            ".hidden",
            "..",
            "sp ace",
            "nul\0",
            "é",
            &"x".repeat(201),
        ] {
            assert!(validate_name(n).is_err(), "{n:?}");
        }
    }
}
