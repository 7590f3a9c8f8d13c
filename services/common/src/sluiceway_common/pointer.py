"""JSON pointers (RFC 6901), as the settings and flags that take one write them.

A *pointer* is its reference tokens, unescaped: ``/data/a~1b/0`` is ``("data", "a/b", "0")``
and ``""`` (the whole document) is ``()``. ``enqueue --http`` finds a listing's items and keys
with them, the writer a sink column's value in a record.
"""

from __future__ import annotations

import re

Pointer = tuple[str, ...]
ESCAPE = re.compile(r"~(?![01])")


def parse(text: str) -> Pointer:
    """A JSON pointer as its tokens; ``""`` is the whole document. ValueError when ``text``
    is not one."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError("a JSON pointer starts with /, e.g. /data")
    if ESCAPE.search(text):
        raise ValueError("~ is written ~0 in a JSON pointer (and / as ~1)")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/"))


def spelled(tokens: Pointer) -> str:
    """The pointer ``tokens`` as text, escaped: the inverse of :func:`parse`."""
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in tokens)
