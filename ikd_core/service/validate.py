"""Raw values from the API made safe: numbers checked by range, text made inert for Markdown, messages without
server paths."""

from __future__ import annotations

import math
import numbers
import os
import re
import string
import unicodedata
from collections.abc import Sequence

from ..errors import IKDError

#: Characters HTML-escaped by :func:`escape_markdown`; every other ASCII punctuation character is backslash-escaped.
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_MARKDOWN = frozenset(string.punctuation) - frozenset(_HTML)
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
#: An absolute POSIX path: ``/`` not preceded by a word character, ``.``, ``~``, ``:`` or ``/`` (URLs are left
#: alone), then characters up to whitespace, a quote, a bracket or ``:``/``,``/``;``.
_ABS_PATH = re.compile(r"(?<![\w.~:/\\-])/[^\s'\"`<>()\[\]{},;:]+")


def number(value: object, name: str, lo: float, hi: float, integer: bool = False) -> float | int:
    """``value`` (an int, float or a string of a number) as a float, or an int with ``integer``, if it lies within
    ``lo`` .. ``hi``. Booleans, NaN, infinities, fractions where a whole number is wanted and anything out of range
    raise :class:`IKDError` naming the field and the range."""
    kind = "a whole number" if integer else "a number"
    problem = f"{name} must be {kind} from {_fmt(lo)} to {_fmt(hi)}"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, bool) or value is None:
        raise IKDError(f"{problem}, got {shown}")
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise IKDError(f"{problem}, got {shown}")
        try:
            parsed: float = int(text) if integer and re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise IKDError(f"{problem}, got {shown}") from None
    elif isinstance(value, numbers.Real):
        parsed = value  # type: ignore[assignment]
    else:
        raise IKDError(f"{problem}, got {shown}")
    try:
        as_float = float(parsed)
    except (OverflowError, ValueError):
        raise IKDError(f"{problem}, got {shown}") from None
    if not math.isfinite(as_float) or not lo <= parsed <= hi:
        raise IKDError(f"{problem}, got {shown}")
    if integer:
        if isinstance(parsed, numbers.Integral):
            return int(parsed)
        if not as_float.is_integer():
            raise IKDError(f"{problem}, got {shown}")
        return int(as_float)
    return as_float


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def escape_markdown(text: object, max_len: int = 200) -> str:
    """``text`` as inert Markdown: HTML special characters as entities, every other ASCII punctuation character
    backslash-escaped (no emphasis, code, links, headings, tables, LaTeX or raw HTML can start), line breaks as
    spaces, other control and format characters (e.g. bidi overrides) dropped, a zero-width space inside ``$$``
    (Gradio's LaTeX delimiter), at most ``max_len`` characters (then ending with an ellipsis)."""
    raw = "" if text is None else str(text)
    chars = []
    for c in raw:
        if c in _LINE_BREAKS or c == "\t":
            chars.append(" ")
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            chars.append(c)
    if len(chars) > max_len:
        chars = chars[: max(max_len - 1, 0)] + ["\u2026"]
    out = []
    for i, c in enumerate(chars):
        if c == "$" and i and chars[i - 1] == "$":  # no "$$": a LaTeX delimiter in Gradio's Markdown
            out.append("\u200b")
        if c in _HTML:
            out.append(_HTML[c])
        elif c in _MARKDOWN:
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def _last_component(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped.rsplit("/", 1)[-1] if stripped else path


def public_message(
    exc_or_text: BaseException | str, roots: Sequence[str | os.PathLike[str]] = (), max_len: int = 1000
) -> str:
    """A message safe to show a stranger: every absolute POSIX path, and every path under one of ``roots``
    (relative ones too), reduced to its last component (``/srv/work/uploads/x/cat.png`` -> ``cat.png``); at most
    ``max_len`` characters. Exceptions give their message (their type's name when it is empty)."""
    if isinstance(exc_or_text, BaseException):
        text = str(exc_or_text) or type(exc_or_text).__name__
    else:
        text = str(exc_or_text)
    prefixes: set[str] = set()
    for root in roots:
        r = os.fspath(root).rstrip("/")
        if r:
            prefixes.add(r)
            prefixes.add(os.path.abspath(r))
            prefixes.add(os.path.realpath(r))
    for prefix in sorted(prefixes, key=len, reverse=True):
        pattern = re.compile(r"(?<![\w.~/-])" + re.escape(prefix) + r"(?:/[^\s'\"`<>()\[\]{},;:]*)?")
        text = pattern.sub(lambda m: _last_component(m.group(0)), text)
    text = _ABS_PATH.sub(lambda m: _last_component(m.group(0)), text)
    if len(text) > max_len:
        text = text[: max_len - 1] + "\u2026"
    return text
