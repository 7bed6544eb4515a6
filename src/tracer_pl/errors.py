"""Exception types, one per failure family.

Every message names where the problem is (file, row, field or config key) and what was expected, so a user
can fix the input without reading the code.
"""

from __future__ import annotations


class TracerError(Exception):
    """Base class of every error raised on purpose by tracer_pl."""


class DataError(TracerError, ValueError):
    """A data source or one of its rows is unusable (missing field, bad gold answer, unreadable file)."""


class ConfigError(TracerError, ValueError):
    """A configuration value is impossible; the message names the CLI flag (e.g. ``--model.gspo.group_size``)."""


class ModelOutputError(TracerError, ValueError):
    """A model produced something the library cannot use at all (not raised for ordinary bad answers)."""


class CheckpointError(TracerError, ValueError):
    """A checkpoint file is missing, unreadable, damaged, or cannot be used by this run."""


class PreemptedError(TracerError):
    """The run was stopped by a signal (SIGTERM, SIGINT) after saving its checkpoint; the command exits with 143."""


def require(ok: bool, flag: str, expected: str, got: object) -> None:
    """Raise :class:`ConfigError` ``"<flag> must be <expected>, got <got>"`` unless ``ok``.

    The settings' dataclasses call it from ``__post_init__``, so a bad value is refused where it is declared,
    from the command line and from Python alike.
    """
    if not ok:
        raise ConfigError(f"{flag} must be {expected}, got {got!r}")


def require_between(value: object, flag: str, low: float, high: float) -> None:
    """:func:`require` that ``value`` is a number (not a bool) in ``[low, high]``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    require(number and low <= value <= high, flag, f"between {low} and {high}", value)  # type: ignore[operator]


def require_whole_between(value: object, flag: str, low: int, high: int) -> None:
    """:func:`require` that ``value`` is a whole number (not a bool) in ``[low, high]``."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    require(whole and low <= value <= high, flag, f"a whole number between {low} and {high}", value)  # type: ignore[operator]
