"""One command line generated from frozen config dataclasses.

Every field of every config becomes a `--kebab-case` option whose help is the
field's docstring (the string literal under it) and whose default is shown, so
`--help` is always complete. Names must be unique across the configs of one
command, which keeps options short (`--lr`, `--steps`, `--resume`).
"""

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any


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


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


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
    defaults = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        value = getattr(defaults, f.name)
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        help_text = f"{docs.get(f.name, '')} (default: {shown})".strip()
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


def config_from_args(args: argparse.Namespace, title: str, base: Any) -> Any:
    """`base` with the fields given on the command line (under `title`) replaced."""
    given: Mapping[str, Any] = vars(args)
    prefix = title + "."
    changes = {k[len(prefix) :]: v for k, v in given.items() if k.startswith(prefix)}
    for name, value in changes.items():
        if isinstance(getattr(base, name), tuple):
            changes[name] = tuple(value)
    return dataclasses.replace(base, **changes)
