//! Typed keys and values over a tier, encoded with shmemcache's codecs (postcard by
//! default), as `Cache::typed` does for one machine.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shmemcache::{Codec, Postcard};

use crate::{Result, Tiered};

/// Keys are taken, values made: the view owns neither.
type Types<K, V> = (fn(&K), fn() -> V);

/// A typed view of a [`Tiered`] cache: keys `K`, values `V`, encoded with `C`.
pub struct TieredTyped<'t, K: ?Sized, V, C = Postcard> {
    tier: &'t Tiered,
    codec: C,
    _types: PhantomData<Types<K, V>>,
}

impl Tiered {
    /// A typed view with the postcard codec.
    pub fn typed<K: Serialize + ?Sized, V: Serialize + DeserializeOwned>(
        &self,
    ) -> TieredTyped<'_, K, V> {
        self.typed_with(Postcard)
    }

    /// A typed view with another codec.
    pub fn typed_with<K: Serialize + ?Sized, V: Serialize + DeserializeOwned, C: Codec>(
        &self,
        codec: C,
    ) -> TieredTyped<'_, K, V, C> {
        TieredTyped {
            tier: self,
            codec,
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + ?Sized, V: Serialize + DeserializeOwned, C: Codec> TieredTyped<'_, K, V, C> {
    /// See [`Tiered::get`]; a value that does not decode is an error.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.codec.encode(key)?;
        match self.tier.get(&k)? {
            Some(b) => Ok(Some(self.codec.decode(&b)?)),
            None => Ok(None),
        }
    }

    /// See [`Tiered::set`].
    pub fn set(&self, key: &K, value: &V, ttl: Option<Duration>) -> Result<()> {
        let k = self.codec.encode(key)?;
        self.tier.set(&k, &self.codec.encode(value)?, ttl)
    }

    /// See [`Tiered::delete`].
    pub fn delete(&self, key: &K) -> Result<bool> {
        let k = self.codec.encode(key)?;
        self.tier.delete(&k)
    }
}
