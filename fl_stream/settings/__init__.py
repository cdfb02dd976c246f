"""Settings declared once: each dataclass field carries its default, its check and its help.

A settings class is a frozen dataclass whose fields are made by :func:`setting`::

    @dataclass(frozen=True)
    class TrainConfig:
        epochs: int = setting(3, check=POSITIVE_INT, help="epochs to train", group="training")

        def __post_init__(self) -> None:
            validate(self)

From that one declaration come:

- :func:`validate`: the type and the rule of every field of an instance (keys ``epochs``);
- :func:`from_mapping`: an instance from raw values such as Flower's run config (keys
  ``num-epochs``, unknown keys refused with the list of known ones);
- :func:`add_arguments` and :func:`from_namespace`: one argparse option per field (name,
  default, help, choices, group) and the instance back from the parsed options (keys
  ``--epochs``); :func:`parse_args` does both.

Every refused value raises :class:`SettingError` in one shape,
``<key> = <value> is invalid: expected <what the rule accepts>``, with the key spelled as its
source spells it. Standard library only: the relay uses this module, and importing the relay
must never import torch or flwr.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar

from fl_stream.settings.rules import (
    BATCH_SIZE,
    FRACTION,
    IMAGE_SIZE,
    NON_NEGATIVE_INT,
    ORIGIN,
    PORT,
    POSITIVE_FRACTION,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    RELAY_URL,
    WS_URL,
    OneLineErrorParser,
    Rule,
    SettingError,
    argument_type,
    at_least,
    finite_at_least,
    one_of,
)
from fl_stream.settings.rules import invalid as _invalid

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
    "add_arguments",
    "argument_type",
    "at_least",
    "finite_at_least",
    "from_mapping",
    "from_namespace",
    "one_of",
    "option_name",
    "parse_args",
    "setting",
    "shareable",
    "validate",
]

T = TypeVar("T")

_METADATA_KEY = "fl_stream.setting"
_TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path",
}


# --------------------------------------------------------------------------- declaring


@dataclass(frozen=True)
class _Setting:
    check: Rule | None
    help: str
    group: str | None
    flag: str | None
    cli: bool
    cli_default: Any
    default_help: str | None
    parse: Callable[[str], Any] | None
    metavar: str | None


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    check: Rule | None = None,
    help: str = "",
    group: str | None = None,
    flag: str | None = None,
    cli: bool = True,
    cli_default: Any = MISSING,
    default_help: str | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    repr: bool = True,
) -> Any:
    """Declare a dataclass field as a setting.

    Args:
        default, default_factory: as for :func:`dataclasses.field`.
        check: the :class:`Rule` its value must pass (its type is always checked).
        help: what it means, for ``--help``.
        group: the ``--help`` section its option appears under.
        flag: the option's name when it is not ``--<field-name-with-dashes>``.
        cli: False keeps it off the command line.
        cli_default: the command line's default, when it differs from the field's.
        default_help: what ``--help`` shows as the default instead of the value (for a
            default that is computed, or secret).
        parse: turns the option's text into a value (default: the field's type).
        metavar: the option's placeholder in ``--help``.
        repr: False keeps the value out of ``repr`` and error messages (tokens).
    """
    meta = _Setting(check, help, group, flag, cli, cli_default, default_help, parse, metavar)
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        repr=repr,
        metadata={_METADATA_KEY: meta},
    )


_PLAIN = _Setting(None, "", None, None, True, MISSING, None, None, None)


def _meta(field: dataclasses.Field[Any]) -> _Setting:
    return field.metadata.get(_METADATA_KEY, _PLAIN)


# --------------------------------------------------------------------------- checking


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)  # resolves `from __future__` annotations
    return _HINTS[cls]


@dataclass(frozen=True)
class _Shape:
    base: Any  # bool, int, float, str, Path, tuple, or a type this module does not check
    optional: bool = False  # None is allowed
    item: Any = None  # a tuple's item type


def _shape(hint: Any) -> _Shape:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return dataclasses.replace(_shape(rest[0]), optional=True)
        return _Shape(Any)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _Shape(tuple, item=args[0])
    return _Shape(hint)


def _conform_scalar(value: Any, base: Any) -> tuple[bool, Any]:
    if base not in _TYPE_WORDS:
        return True, value  # a type this module leaves alone
    if isinstance(value, bool) and base is not bool:
        return False, value
    if base is float and isinstance(value, int):
        return True, float(value)  # `--run-config 'learning-rate=1'` arrives as an int
    if base is Path and isinstance(value, str):
        return True, Path(value)
    return isinstance(value, base), value


def _type_words(shape: _Shape) -> str:
    if shape.base is tuple:
        words = f"a list, each {_TYPE_WORDS.get(shape.item, 'a value')}"
    else:
        words = _TYPE_WORDS[shape.base]
    return f"{words}, or nothing" if shape.optional else words


def _checked(field: dataclasses.Field[Any], hint: Any, value: Any, key: str) -> Any:
    """Return ``value`` as the field's type once it passed the field's rule."""
    shape, rule = _shape(hint), _meta(field).check
    shown = repr(value) if field.repr else "<hidden>"
    if value is None and shape.optional:
        return None
    if shape.base is tuple:
        if not isinstance(value, tuple | list):
            raise _invalid(key, shown, _type_words(shape))
        items = [_conform_scalar(item, shape.item) for item in value]
        if not all(ok for ok, _ in items):
            raise _invalid(key, shown, _type_words(shape))
        conformed = tuple(item for _, item in items)
        if rule is not None:
            for item in conformed:
                if not rule.accepts(item):
                    raise _invalid(key, repr(item) if field.repr else shown, rule.expected)
        return conformed
    ok, conformed = _conform_scalar(value, shape.base)
    if not ok:
        raise _invalid(key, shown, _type_words(shape))
    if rule is not None and not rule.accepts(conformed):
        raise _invalid(key, shown, rule.expected)
    return conformed


def validate(obj: Any) -> None:
    """Check the type and the rule of every field of dataclass instance ``obj``.

    Call it from ``__post_init__``. An ``int`` passes for a ``float`` field and a ``str`` for
    a ``Path`` field; ``bool`` never passes for a number.

    Raises:
        SettingError: the first refused field, named as spelled in Python (``batch_size``).
    """
    hints = _hints(type(obj))
    for field in dataclasses.fields(obj):
        _checked(field, hints[field.name], getattr(obj, field.name), field.name)


def _build(cls: type[T], values: Mapping[str, Any], key: Callable[[str], str]) -> T:
    """``cls(**values)``, each value checked first and refused under ``key(field name)``."""
    fields = {field.name: field for field in _fields(cls)}
    hints = _hints(cls)
    checked = {
        name: _checked(fields[name], hints[name], value, key(name))
        for name, value in values.items()
    }
    return cls(**checked)


def from_mapping(cls: type[T], raw: Mapping[str, Any], *, source: str = "") -> T:
    """Build settings class ``cls`` from ``raw``, keyed by field names with dashes.

    Absent keys keep their defaults; values must already have the field's type (as TOML
    gives them): an integer passes for a number, nothing else is converted.

    Raises:
        SettingError: an unknown key (the message lists the known ones), or a value of the
            wrong type or refused by its rule, named ``<source> <key>``.
    """
    names = {_dashed(field.name): field.name for field in _fields(cls)}
    where = f"{source} " if source else ""
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise SettingError(f"unknown {where}keys {unknown}; known keys: {sorted(names)}")
    values = {names[key]: value for key, value in raw.items()}
    return _build(cls, values, lambda name: f"{where}{_dashed(name)}")


def shareable(obj: Any) -> dict[str, Any]:
    """The settings of ``obj`` by dashed key (``batch-size``), hidden ones (tokens) left out.

    What a run reports about itself, e.g. as ``training_mode``'s ``config``.
    """
    return {_dashed(f.name): getattr(obj, f.name) for f in dataclasses.fields(obj) if f.repr}


def _dashed(name: str) -> str:
    return name.replace("_", "-")


# --------------------------------------------------------------------------- command line


def option_name(field: dataclasses.Field[Any]) -> str:
    """The command-line option of ``field``: ``--batch-size`` for ``batch_size``."""
    return _meta(field).flag or f"--{_dashed(field.name)}"


def _fields(cls: Any) -> tuple[dataclasses.Field[Any], ...]:
    # A settings class passed as type[T]: mypy cannot tell it is a dataclass.
    return dataclasses.fields(cls)


def _cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [field for field in dataclasses.fields(cls) if _meta(field).cli]


def _cli_default(field: dataclasses.Field[Any]) -> Any:
    meta = _meta(field)
    if meta.cli_default is not MISSING:
        return meta.cli_default
    if field.default_factory is not MISSING:
        return typing.cast(Callable[[], Any], field.default_factory)()
    return None if field.default is MISSING else field.default


def _argument(field: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    meta, shape, default = _meta(field), _shape(hint), _cli_default(field)
    text = meta.help.replace("%", "%%")
    if shape.base is bool:  # a switch: its presence flips the default
        return {
            "dest": field.name,
            "action": "store_false" if default else "store_true",
            "default": default,
            "help": text,
        }
    kwargs: dict[str, Any] = {"dest": field.name, "default": default, "metavar": meta.metavar}
    kind = shape.base
    if kind is tuple:
        kwargs.update(action="append", default=list(default or ()))
        kind = shape.item
    if meta.parse is not None:
        kwargs["type"] = meta.parse
    elif kind in (int, float, Path):
        kwargs["type"] = kind
    rule = meta.check
    if rule is not None and rule.choices is not None:
        kwargs["choices"] = rule.choices
        if meta.metavar:  # the placeholder hides the choices: list them in the help
            text += f", {rule.expected}"
    if meta.default_help is not None:
        shown = meta.default_help.replace("%", "%%")
    elif default in (None, [], ()):
        shown = "none"
    elif default == "":
        shown = '""'
    else:
        shown = "%(default)s"
    kwargs["help"] = f"{text} (default: {shown})" if text else f"default: {shown}"
    return kwargs


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per command-line setting of dataclass ``cls`` to ``parser``.

    Each gets its name (:func:`option_name`), default, help (with the default), choices (from
    a :func:`one_of` rule) and type; options with a ``group`` go under that ``--help``
    section, sections in the order their first field appears. A ``bool`` setting becomes a
    switch that flips its default (name it with ``flag``, e.g. ``--no-progress``).
    """
    hints = _hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in _cli_fields(cls):
        group = _meta(field).group
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if group is not None:
            if group not in groups:
                groups[group] = parser.add_argument_group(group)
            target = groups[group]
        target.add_argument(option_name(field), **_argument(field, hints[field.name]))


def from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build settings class ``cls`` from options that :func:`add_arguments` added and parsed.

    Raises:
        SettingError: a value its rule refuses, named by its option (``--batch-size``).
    """
    options = {field.name: option_name(field) for field in _cli_fields(cls)}
    values = {name: getattr(namespace, name) for name in options if hasattr(namespace, name)}
    return _build(cls, values, options.__getitem__)


def parse_args(
    parser: argparse.ArgumentParser, cls: type[T], argv: Sequence[str] | None = None
) -> T:
    """Parse ``argv`` with ``parser`` into ``cls``; a refused value is a ``parser.error``."""
    namespace = parser.parse_args(argv)
    try:
        return from_namespace(cls, namespace)
    except SettingError as exc:
        parser.error(str(exc))
