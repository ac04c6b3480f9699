"""Values from an upstream, made safe to put in a frame.

A provider's stream is as hostile as a client's message: its text may split
a surrogate pair across two chunks (each half alone cannot be encoded as
UTF-8, so the frame's encoder fails), its counts may be floats, negative, or
past what MessagePack (64 bits) or JavaScript (53 bits) can hold. Everything
an upstream says passes through here on its way to a frame.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from .messages import CompletionTokensDetails, PromptTokensDetails, Usage

MAX_COUNT: Final = 2**53 - 1
"""The largest count a frame carries (JavaScript's largest exact integer)."""
MAX_TOOL_CALL_INDEX: Final = 2**31 - 1

_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def count(value: Any) -> int | None:
    """A token count as an int in ``0..MAX_COUNT`` (floats such as ``7.0``
    taken, negatives as 0); None for anything that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    number: int = value
    return min(max(number, 0), MAX_COUNT)


def usage(
    prompt: Any,
    completion: Any,
    total: Any,
    *,
    cached: Any = None,
    reasoning: Any = None,
    estimated: bool = False,
) -> Usage:
    """A ``Usage`` from a provider's raw counts, each sanitized by ``count``.

    The provider's total is kept as it sent it (never recomputed), except
    where it is missing or less than prompt + completion.
    """
    prompt_tokens = count(prompt) or 0
    completion_tokens = count(completion) or 0
    total_tokens = count(total) or 0
    total_tokens = max(total_tokens, min(prompt_tokens + completion_tokens, MAX_COUNT))
    cached_tokens = count(cached)
    reasoning_tokens = count(reasoning)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=total_tokens,
        estimated=estimated,
        prompt_tokens_details=None
        if cached_tokens is None
        else PromptTokensDetails(cached_tokens=cached_tokens),
        completion_tokens_details=None
        if reasoning_tokens is None
        else CompletionTokensDetails(reasoning_tokens=reasoning_tokens),
    )


def replace_surrogates(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class TextJoiner:
    """Joins one stream's text pieces into encodable text.

    A piece that ends in the first half of a surrogate pair keeps that half
    back until the next piece, which may start with the second half; what
    cannot be paired becomes U+FFFD. A half still kept at the end of the
    stream is dropped (it was never a character).
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = ""

    def __call__(self, piece: str) -> str:
        if self._pending:
            piece = self._pending + piece
            self._pending = ""
        elif _SURROGATE.search(piece) is None:
            return piece
        if piece and "\ud800" <= piece[-1] <= "\udbff":
            self._pending = piece[-1]
            piece = piece[:-1]
        return replace_surrogates(piece)
