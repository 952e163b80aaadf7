"""shmemcache: one LRU cache in shared memory for every process on the machine.

>>> import shmemcache
>>> cache = shmemcache.Cache("doctest-init")   # opened (or created) by name
>>> cache["k"] = {"any": "picklable object"}   # seen at once by every process
>>> @cache.memoize(ttl=300)                      # computed once machine-wide
... def report(day): ...
>>> shmemcache.Cache.unlink("doctest-init")

See ``help(shmemcache.Cache)``, ``shmemcache.memoize``, ``shmemcache.Lock``,
``shmemcache.Once``, ``shmemcache.Pool``, ``shmemcache.fork_safe`` and
``shmemcache.compat`` (drop-in replacements for duck's ProcessSafeLRUCache, cachier
and py-cachify).
"""

from ._cache import Cache
from ._coord import RAISE, Lock, Once, Pool
from ._memo import Memoized, memoize
from .codecs import Codec
from .errors import (
    AlreadyExists,
    BadSnapshot,
    Busy,
    Closed,
    CodecError,
    ComputedElsewhereFailed,
    CoordinationFull,
    Corrupted,
    Error,
    Incompatible,
    InvalidArgument,
    InvalidName,
    KeyTooLarge,
    LockTimeout,
    NoSpace,
    NotAnInteger,
    NotFound,
    NotOwner,
    OSFailure,
    Overflow,
    PermissionDenied,
    TooLarge,
    ValueTooLarge,
    ZeroTtl,
)
from .fork import fork_safe

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "Codec",
    "Lock",
    "Memoized",
    "Once",
    "Pool",
    "RAISE",
    "fork_safe",
    "memoize",
    "AlreadyExists",
    "BadSnapshot",
    "Busy",
    "Closed",
    "CodecError",
    "ComputedElsewhereFailed",
    "CoordinationFull",
    "Corrupted",
    "Error",
    "Incompatible",
    "InvalidArgument",
    "InvalidName",
    "KeyTooLarge",
    "LockTimeout",
    "NoSpace",
    "NotAnInteger",
    "NotFound",
    "NotOwner",
    "OSFailure",
    "Overflow",
    "PermissionDenied",
    "TooLarge",
    "ValueTooLarge",
    "ZeroTtl",
]
