"""The rules a setting's value must pass, each with what it accepts in words.

Shared by every settings class (the federated run config, the centralized trainer, the relay):
a rule such as :data:`BATCH_SIZE` or :data:`WS_URL` is written once, here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

__all__ = [
    "BATCH_SIZE",
    "FRACTION",
    "IMAGE_SIZE",
    "NON_NEGATIVE_INT",
    "ORIGIN",
    "PORT",
    "RELAY_URL",
    "POSITIVE_FRACTION",
    "POSITIVE_INT",
    "POSITIVE_NUMBER",
    "WS_URL",
    "OneLineErrorParser",
    "Rule",
    "SettingError",
    "argument_type",
    "at_least",
    "finite_at_least",
    "invalid",
    "one_of",
]


class SettingError(ValueError):
    """A setting was refused; the message names its key as the source spells it."""


def invalid(key: str, shown: str, expected: str) -> SettingError:
    """The error for a refused value, in the one shape every setting uses."""
    return SettingError(f"{key} = {shown} is invalid: expected {expected}")


@dataclass(frozen=True)
class Rule:
    """A check on a setting's value and, in words, what it accepts.

    ``choices`` lists the accepted values when they can be listed (the command line offers
    them as argparse choices). The type is checked before the rule, so ``test`` only sees
    values of the field's type. A rule on a tuple field applies to each item.
    """

    test: Callable[[Any], bool]
    expected: str
    choices: tuple[Any, ...] | None = None

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` passes the rule."""
        return bool(self.test(value))


def at_least(minimum: int, why: str = "") -> Rule:
    """An integer >= ``minimum``; ``why``, when given, follows in brackets."""
    reason = f" ({why})" if why else ""
    return Rule(lambda value: value >= minimum, f"an integer >= {minimum}{reason}")


def finite_at_least(minimum: float) -> Rule:
    """A finite number >= ``minimum``."""
    return Rule(
        lambda value: math.isfinite(value) and value >= minimum,
        f"a finite number >= {minimum:g}",
    )


def one_of(options: Iterable[Any]) -> Rule:
    """One of ``options``."""
    allowed = tuple(options)
    return Rule(lambda value: value in allowed, f"one of {', '.join(map(str, allowed))}", allowed)


def _is_ws_url(value: str) -> bool:
    if value == "":
        return True
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("ws", "wss") and bool(parts.netloc)


def _is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not (parts.path or parts.query or parts.fragment)
    )


POSITIVE_INT = at_least(1)
NON_NEGATIVE_INT = at_least(0)
BATCH_SIZE = at_least(2, "BatchNorm needs two examples")
IMAGE_SIZE = at_least(8)  # the data loaders refuse smaller images too
POSITIVE_NUMBER = Rule(lambda value: math.isfinite(value) and value > 0, "a number > 0")
FRACTION = Rule(lambda value: 0.0 <= value <= 1.0, "a fraction in [0, 1]")
POSITIVE_FRACTION = Rule(lambda value: 0.0 < value <= 1.0, "a fraction in (0, 1]")
PORT = Rule(lambda value: 0 <= value <= 65535, "a port number 0-65535")
RELAY_URL = Rule(lambda value: value != "" and _is_ws_url(value), "a ws:// or wss:// URL")
WS_URL = Rule(_is_ws_url, 'a ws:// or wss:// URL, or "" to stream to the log file only')
ORIGIN = Rule(_is_origin, "an origin such as http://host:8080 (no path, no trailing /)")


def argument_type(rule: Rule) -> Callable[[str], str]:
    """An argparse ``type=`` for an option outside a settings class, checked by ``rule``."""

    def checked(text: str) -> str:
        if not rule.accepts(text):
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected {rule.expected}")
        return text

    return checked


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
