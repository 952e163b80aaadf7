//! Typed keys and values through a [`Codec`] (postcard by default). Encoding and decoding
//! run in the caller, never under a shard lock.

use crate::cache::{Cache, SetOutcome};
use crate::error::{Error, Result};
use crate::memo::{ComputeError, ComputeOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Duration;

/// Turns keys and values into bytes and back.
pub trait Codec {
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;
    /// Decodes a `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
    /// Appends the encoding of `value` to `out` (a codec that can write in place saves
    /// the allocation of [`encode`](Codec::encode)). After an error, what `out` holds is
    /// unspecified.
    fn encode_into<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&self.encode(value)?);
        Ok(())
    }
}

/// The default codec: `postcard` (compact, stable, no_std-friendly wire format).
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| Error::Codec(e.to_string()))
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| Error::Codec(e.to_string()))
    }
    fn encode_into<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let v = std::mem::take(out);
        *out = postcard::to_extend(value, v).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(())
    }
}

/// A typed view of a [`Cache`]: keys `K`, values `V`, encoded with `C`.
///
/// ```no_run
/// use shmemcache::Cache;
/// let cache = Cache::open("typed-demo")?;
/// let users = cache.typed::<u64, String>();
/// users.set(&42, &"alice".to_string())?;
/// assert_eq!(users.get(&42)?, Some("alice".to_string()));
/// # Ok::<(), shmemcache::Error>(())
/// ```
pub struct Typed<'c, K: ?Sized, V, C = Postcard> {
    cache: &'c Cache,
    codec: C,
    _types: PhantomData<fn(&K, V)>,
}

impl Cache {
    /// A typed view with the default codec.
    pub fn typed<K: Serialize + ?Sized, V: Serialize + DeserializeOwned>(
        &self,
    ) -> Typed<'_, K, V, Postcard> {
        self.typed_with(Postcard)
    }

    /// A typed view with a codec of your choice.
    pub fn typed_with<K: Serialize + ?Sized, V: Serialize + DeserializeOwned, C: Codec>(
        &self,
        codec: C,
    ) -> Typed<'_, K, V, C> {
        Typed {
            cache: self,
            codec,
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + ?Sized, V: Serialize + DeserializeOwned, C: Codec> Typed<'_, K, V, C> {
    /// The decoded value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.codec.encode(key)?;
        match self.cache.get(&k)? {
            Some(bytes) => self.codec.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }
    /// Stores with the default TTL.
    pub fn set(&self, key: &K, value: &V) -> Result<SetOutcome> {
        let (k, v) = (self.codec.encode(key)?, self.codec.encode(value)?);
        self.cache.set(&k, &v)
    }
    /// Stores with an explicit TTL (`None`: never expires).
    pub fn set_ttl(&self, key: &K, value: &V, ttl: Option<Duration>) -> Result<SetOutcome> {
        let (k, v) = (self.codec.encode(key)?, self.codec.encode(value)?);
        self.cache.set_ttl(&k, &v, ttl)
    }
    /// Stores only if absent; true if stored.
    pub fn add(&self, key: &K, value: &V) -> Result<bool> {
        let (k, v) = (self.codec.encode(key)?, self.codec.encode(value)?);
        self.cache.add(&k, &v)
    }
    /// Removes and returns the decoded value.
    pub fn take(&self, key: &K) -> Result<Option<V>> {
        let k = self.codec.encode(key)?;
        match self.cache.take(&k)? {
            Some(bytes) => self.codec.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }
    /// Removes `key`; true if present.
    pub fn delete(&self, key: &K) -> Result<bool> {
        self.cache.delete(&self.codec.encode(key)?)
    }
    /// True if `key` is present.
    pub fn contains(&self, key: &K) -> Result<bool> {
        self.cache.contains(&self.codec.encode(key)?)
    }
    /// The decoded value of `key`, computed by `f` on a miss with the same single-flight
    /// semantics as [`Cache::get_or_compute`]. Encoding and decoding happen outside locks.
    pub fn get_or_compute<E>(
        &self,
        key: &K,
        opts: &ComputeOptions,
        f: impl FnOnce() -> std::result::Result<V, E>,
    ) -> std::result::Result<V, ComputeError<E>> {
        let k = self.codec.encode(key)?;
        let codec = &self.codec;
        self.cache
            .compute_core(
                &k,
                crate::memo::Scope::NONE,
                opts,
                || {
                    let v = f()?;
                    let bytes = codec.encode(&v).ok();
                    Ok((v, bytes))
                },
                |p| codec.decode(&p).ok(),
            )
            .map(|(v, _)| v)
    }
}
