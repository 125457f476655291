"""One command line generated from frozen config dataclasses.

Every field of every config becomes a `--kebab-case` option whose help is the
field's docstring (the string literal under it) and whose default is shown, so
`--help` is always complete. Names must be unique across the configs of one
command, which keeps options short (`--lr`, `--steps`, `--resume`). A `--config FILE`
(YAML or JSON: `read_config_file`, `config_from_mapping`) sets the same fields, by
their names; the flags override it.
"""

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import pathlib
import textwrap
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

DESCRIPTION_WIDTH = 76
"""Group descriptions are wrapped to this width (the raw-description formatters of
eqvid's commands print them as they are)."""


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A command's parser from its module docstring: the first paragraph is the
    description, the rest the epilog (examples), both printed as written."""
    description, _, epilog = (doc or "").partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: `{field: "the string under it"}`."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def description(cls: type) -> str:
    """The first paragraph of `cls`'s docstring, its lines joined and wrapped: a
    group's description in `--help` (never cut mid-sentence)."""
    paragraph = inspect.cleandoc(cls.__doc__ or "").partition("\n\n")[0]
    return textwrap.fill(" ".join(paragraph.split()), DESCRIPTION_WIDTH)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _one_or_many(tp: Any) -> Any:
    """`X` for a field type `X | tuple[X, ...]` (one value or several), else `None`."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(tp)
    scalars = [a for a in args if typing.get_origin(a) is not tuple]
    tuples = [a for a in args if typing.get_origin(a) is tuple]
    if len(scalars) == 1 and len(tuples) == 1 and typing.get_args(tuples[0])[0] is scalars[0]:
        return scalars[0]
    return None


def _argument_kwargs(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        kw = _argument_kwargs(inner)
        base = kw.get("type", str)

        def optional(text: str, base=base):
            return None if text.lower() in ("none", "null", "") else base(text)

        optional.__name__ = getattr(base, "__name__", "value")
        kw["type"] = optional
        kw["metavar"] = "VALUE|none"
        return kw
    one_or_many = _one_or_many(tp)
    if one_or_many is not None:  # `int | tuple[int, ...]`: one value, or several
        return {"type": one_or_many, "nargs": "+"}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"type": args[0], "nargs": "+"}
    if typing.get_origin(tp) is typing.Literal:
        return {"type": type(args[0]), "choices": list(args)}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"config field type {tp!r} has no command-line form")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    title: str,
    cls: type,
    defaults: Any = None,
    *,
    exclude: Collection[str] = (),
    prefix: str = "",
) -> None:
    """Add one argument group with an option per field of dataclass `cls`
    (`--<prefix><field-name>`).

    Options default to `argparse.SUPPRESS`, so `config_from_args` can tell which
    were given; the help shows the default from `defaults` (an instance of `cls`).
    Fields in `exclude` get no option (the caller sets them).
    """
    plain = cls()
    defaults = plain if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(title, description(cls))
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        value = getattr(defaults, f.name)
        doc = docs.get(f.name, "")
        if "(default:" in doc and value == getattr(plain, f.name):
            help_text = doc  # the docstring says what the default means
        else:
            help_text = f"{doc} (default: {shown_default(value)})".strip()
        kwargs = _argument_kwargs(hints[f.name])
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs.setdefault("metavar", f.name.upper())
        group.add_argument(
            _option(prefix + f.name),
            dest=f"{title}.{f.name}",
            default=argparse.SUPPRESS,
            help=help_text.replace("%", "%%"),
            **kwargs,
        )


def shown_default(value: Any) -> str:
    """How `--help` shows a default value (`(default: ...)`)."""
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def config_from_args(args: argparse.Namespace, title: str, base: Any) -> Any:
    """`base` with the fields given on the command line (under `title`) replaced."""
    given: Mapping[str, Any] = vars(args)
    prefix = title + "."
    changes = {k[len(prefix) :]: v for k, v in given.items() if k.startswith(prefix)}
    hints = typing.get_type_hints(type(base))
    for name, value in changes.items():
        if _one_or_many(hints.get(name)) is not None and isinstance(value, list):
            changes[name] = value[0] if len(value) == 1 else tuple(value)
        elif isinstance(getattr(base, name), tuple):
            changes[name] = tuple(value)
    return dataclasses.replace(base, **changes)


class ConfigFileError(ValueError):
    """A `--config` file that cannot be read, or holds a key or value no option takes."""


def read_config_file(path: str | pathlib.Path) -> dict[str, Any]:
    """The mapping in a `--config` file: JSON (`.json`) or YAML (any other name)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigFileError(
            f"cannot read the config file {path}: {error.strerror or error}"
        ) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigFileError(f"{path} is not valid JSON: {error}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigFileError(f"{path} is not valid YAML: {error}") from None
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(
            f"{path}: expected a mapping of option names to values, got {type(data).__name__}"
        )
    return data


def _value_from_file(value: Any, tp: Any, where: str) -> Any:
    """`value` read from a config file, as a value of field type `tp` (YAML reads
    `5e-4` as a string: numbers may be written as strings)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    one_or_many = _one_or_many(tp)
    if one_or_many is not None:
        if isinstance(value, list | tuple):
            items = tuple(_value_from_file(v, one_or_many, where) for v in value)
            return items[0] if len(items) == 1 else items
        return _value_from_file(value, one_or_many, where)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value_from_file(value, inner, where)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_value_from_file(v, args[0], where) for v in items)
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigFileError(
            f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}"
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _parse_bool(value)
            except argparse.ArgumentTypeError:
                pass
    elif tp in (int, float) and not isinstance(value, bool):
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigFileError(f"{where}: expected {name}, got {value!r}")


def config_from_mapping(
    base: Any,
    values: Any,
    source: str,
    section: str = "",
    *,
    ignore: Collection[str] = (),
) -> Any:
    """`base` (a config dataclass) with the fields in `values` (a `--config` file's
    mapping, or one section of it) replaced. `source` names the file and `section`
    the key the mapping is under, in errors. Keys in `ignore` are accepted and
    skipped; any other key that is not a field is an error naming it."""
    cls = type(base)
    where = f"{source}: {section}" if section else f"{source}:"
    if values is None:  # a YAML section with every key commented out
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigFileError(
            f"{where} expected a mapping of {cls.__name__} fields, got {type(values).__name__}"
        )
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [str(k) for k in values if k not in names and k not in ignore]
    if unknown:
        keys = ", ".join(f"{section}.{k}" if section else k for k in unknown)
        raise ConfigFileError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {keys} "
            f"({cls.__name__} has the fields {', '.join(names)})"
        )
    hints = typing.get_type_hints(cls)
    changes = {
        k: _value_from_file(v, hints[k], f"{source}: {f'{section}.{k}' if section else k}")
        for k, v in values.items()
        if k not in ignore
    }
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as error:  # the config's own checks
        raise ConfigFileError(f"{source}: {error}") from None
