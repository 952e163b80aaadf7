"""The exceptions shmemcache raises.

Every error from the cache is a :class:`shmemcache.Error`. Most also derive from the
built-in exception a Python programmer would reach for (``ValueError`` for bad
arguments, ``TimeoutError`` for a lock that could not be taken in time, ...), so
existing ``except`` clauses keep working. The messages are the Rust library's own.
"""

__all__ = [
    "Error",
    "InvalidArgument",
    "InvalidName",
    "ZeroTtl",
    "TooLarge",
    "KeyTooLarge",
    "ValueTooLarge",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Incompatible",
    "Corrupted",
    "LockTimeout",
    "NoSpace",
    "OSFailure",
    "BadSnapshot",
    "NotAnInteger",
    "Overflow",
    "CodecError",
    "Busy",
    "NotOwner",
    "CoordinationFull",
    "ComputedElsewhereFailed",
    "Closed",
]


class Error(Exception):
    """Base class of every shmemcache error."""


class InvalidArgument(Error, ValueError):
    """An option or argument is out of range."""


class InvalidName(InvalidArgument):
    """A segment name is empty, too long, or has characters outside ``[A-Za-z0-9._-]``."""


class ZeroTtl(InvalidArgument):
    """A TTL of zero was given; use ``None`` for "never expires"."""


class TooLarge(Error, ValueError):
    """A key or value is larger than the segment's limit."""


class KeyTooLarge(TooLarge):
    """The key is longer than the segment's key limit."""


class ValueTooLarge(TooLarge):
    """The (encoded) value is longer than the segment's value limit."""


class NotFound(Error, FileNotFoundError):
    """No segment by that name."""


class AlreadyExists(Error, FileExistsError):
    """The segment exists and creation was exclusive."""


class PermissionDenied(Error, PermissionError):
    """The segment belongs to another user or its mode forbids access."""


class Incompatible(Error):
    """The segment was made by an incompatible build, or is not a shmemcache segment."""


class Corrupted(Error):
    """The segment's structure is damaged beyond what a handle can use."""


class LockTimeout(Error, TimeoutError):
    """A shard lock could not be taken in time: its holder is stopped or hung."""


class NoSpace(Error, OSError):
    """``/dev/shm`` has no room for the segment."""


class OSFailure(Error, OSError):
    """Another operating-system error."""


class BadSnapshot(Error):
    """A snapshot file cannot be loaded; nothing was changed."""


class NotAnInteger(Error, ValueError):
    """``incr`` found a value that is not a decimal integer."""


class Overflow(Error, OverflowError):
    """``incr`` would overflow a 64-bit integer."""


class CodecError(Error, ValueError):
    """A value could not be encoded or decoded (its cause is chained)."""


class Busy(Error):
    """A lock is held, a pool is full, or a ``once`` body is running elsewhere."""


class NotOwner(Error):
    """A release was refused: the hold lapsed and may be another owner's now."""


class CoordinationFull(Error):
    """Every coordination slot (locks, pools, in-flight markers) is in use."""


class ComputedElsewhereFailed(Error):
    """Another process's computation of this key failed, and errors propagate."""


class Closed(Error, ValueError):
    """The cache handle was closed."""
