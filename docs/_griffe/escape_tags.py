"""A Griffe extension for the docs build: escape `<name>` placeholders in docstrings.

eqvid's docstrings double as `--help` text, where placeholders such as `<root>` or
`data_<i>.npz` are written bare. Markdown would read them as HTML tags (`<i>` even
italicises the rest of the paragraph), so outside code spans and fenced blocks they
are escaped before rendering. The docstrings themselves are left unchanged.
"""

import re
from typing import Any

import griffe

_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)
_TAG = re.compile(r"<(/?[A-Za-z_][\w.-]*)>")


def escape_tags(text: str) -> str:
    """`text` with `<name>` outside code spans and fences written as `&lt;name&gt;`."""
    parts = _CODE.split(text)
    # Odd indices are the code spans / fences the pattern captured: kept verbatim.
    return "".join(part if i % 2 else _TAG.sub(r"&lt;\1&gt;", part) for i, part in enumerate(parts))


class EscapeTags(griffe.Extension):
    """Escape bare `<name>` placeholders in every docstring of the loaded package."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        # On creation (every Griffe version); `on_object` once the tree is complete
        # (docstrings attached later, in newer versions). Escaping twice is harmless.
        if obj.docstring is not None:
            obj.docstring.value = escape_tags(obj.docstring.value)

    on_object = on_instance
