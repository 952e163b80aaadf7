"""How values become bytes in the segment.

``bytes`` are stored as they are, so Rust programs and the ``shmemcache`` CLI read
what Python wrote. Every other value is stored behind a five-byte tag: four bytes of
magic (``00 c5 73 63``) and one byte naming the encoding:

======  =============================================================
``S``   a ``str``, as UTF-8
``P``   pickled (protocol 5): the default codec
``J``   JSON (UTF-8 text)
``C``   a custom codec's bytes
``B``   ``bytes`` that happen to start with the magic (escaped)
======  =============================================================

A codec is ``"pickle"`` (the default), ``"json"``, or any object with ``dumps(obj) ->
bytes`` and ``loads(bytes) -> obj`` (the ``pickle`` and ``json`` modules' shape).
"""

import json as _json
import pickle as _pickle

from .errors import CodecError

MAGIC = b"\x00\xc5sc"
_TAG_BYTES = MAGIC + b"B"
_TAG_STR = MAGIC + b"S"
_TAG_PICKLE = MAGIC + b"P"
_TAG_JSON = MAGIC + b"J"
_TAG_CUSTOM = MAGIC + b"C"

__all__ = ["Codec", "MAGIC"]


class Codec:
    """Encodes values for one cache handle. ``codec`` is ``"pickle"``, ``"json"`` or an
    object with ``dumps`` and ``loads``."""

    __slots__ = ("spec", "_dumps", "_loads", "_tag")

    def __init__(self, codec="pickle"):
        self.spec = codec
        if codec == "pickle" or codec is _pickle:
            self._tag = _TAG_PICKLE
            self._dumps = lambda v: _pickle.dumps(v, protocol=5)
            self._loads = _pickle.loads
        elif codec == "json" or codec is _json:
            self._tag = _TAG_JSON
            self._dumps = lambda v: _json.dumps(v, separators=(",", ":")).encode()
            self._loads = lambda b: _json.loads(b.decode())
        elif callable(getattr(codec, "dumps", None)) and callable(getattr(codec, "loads", None)):
            self._tag = _TAG_CUSTOM
            self._dumps = codec.dumps
            self._loads = codec.loads
        else:
            raise TypeError(
                "codec must be 'pickle', 'json' or an object with dumps() and loads(), "
                f"not {codec!r}"
            )

    def encode(self, value):
        """The stored form of ``value``."""
        if type(value) is bytes:
            return _TAG_BYTES + value if value[:4] == MAGIC else value
        if type(value) is str:
            return _TAG_STR + value.encode()
        if isinstance(value, (bytearray, memoryview)):
            return self.encode(bytes(value))
        try:
            data = self._dumps(value)
        except Exception as e:  # pickle raises many types: one error for the user
            raise CodecError(
                f"cannot encode a value of type {type(value).__name__}: {e}"
            ) from e
        if not isinstance(data, (bytes, bytearray)):
            raise CodecError(f"the codec's dumps() returned {type(data).__name__}, not bytes")
        return self._tag + data

    def decode(self, raw):
        """The value stored as ``raw``."""
        if raw[:4] != MAGIC:
            return raw
        tag = raw[:5]
        body = raw[5:]
        try:
            if tag == _TAG_PICKLE:
                return _pickle.loads(body)
            if tag == _TAG_STR:
                return body.decode()
            if tag == _TAG_BYTES:
                return body
            if tag == _TAG_JSON:
                return _json.loads(body.decode())
            if tag == _TAG_CUSTOM:
                if self._tag != _TAG_CUSTOM:
                    raise CodecError(
                        "the value was stored with a custom codec; open the cache with it"
                    )
                return self._loads(body)
        except CodecError:
            raise
        except Exception as e:
            raise CodecError(f"cannot decode the stored value: {e}") from e
        raise CodecError(f"unknown value tag {tag[4:]!r}")
