"""Small helpers shared by the modules of the package."""

import datetime
import inspect
import math


def seconds(what, value, *, allow_none=True):
    """``value`` (seconds as int/float, or a ``timedelta``) as a float, or None."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{what} must be a number of seconds, not None")
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{what} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    if math.isnan(value) or value < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds, not {value}")
    return float(value)


class Template:
    """A name with ``{param}`` fields filled from a call's arguments (defaults applied),
    as py-cachify's key templates: ``"user-{user_id}"``."""

    __slots__ = ("text", "_sig", "_fields")

    def __init__(self, text, func=None):
        if not isinstance(text, str):
            raise TypeError(f"a name or key template must be a str, not {type(text).__name__}")
        self.text = text
        self._fields = "{" in text
        self._sig = inspect.signature(func) if (func is not None and self._fields) else None

    def render(self, args=(), kwargs=None):
        if not self._fields:
            return self.text
        if self._sig is None:
            return self.text.format(*args, **(kwargs or {}))
        bound = self._sig.bind(*args, **(kwargs or {}))
        bound.apply_defaults()
        return self.text.format(*bound.args, **bound.arguments)
