"""Private helpers on the per-video path skip the runtime type check.

eqvid's import hook (`eqvid/__init__.py`) wraps every function of every eqvid module
in a jaxtyping + beartype check, about 5-7 µs per call on a CPU. The input pipeline
calls its private helpers a dozen or more times per video, always with arguments that
a checked public method (`make_dataset`, a source's `read_window`, `num_frames`,
`read_frames`, `read_actions`, `__getitem__`) has already received or produced, so
those helpers are marked `@hot_path`: the hook's wrapper then calls them directly.
Public functions and methods keep their checks.
"""

import typing
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["hot_path"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def hot_path(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Mark a private per-video helper to skip eqvid's runtime type check.

    At run time this is `typing.no_type_check` applied to the hook's wrapper, which
    jaxtyping honours at each call (the wrapper calls the function straight away).
    Unlike a `@typing.no_type_check` decorator written in the source, it leaves the
    annotations to static type checkers, which keep checking the helper and its
    callers. Without the hook (`EQVID_TYPECHECK=0`) it only sets an attribute.
    """
    return typing.no_type_check(fn)
