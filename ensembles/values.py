"""The value-list syntax of the parameter editor. Pure Python, no Django.

A parameter's values are written as a comma list with type inference and
quoted strings, and lazy ranges::

    1, 2.5, "a,b", true, plain words
    range(0, 10)            range(0, 1, 0.25)
    linspace(0, 1, 5)       logspace(-3, 0, 4)

Items may be mixed (``0, range(5, 8), 100``). Ranges stay lazy, so
``range(0, 10**9)`` costs nothing until a member is looked up.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

__all__ = ["ValueSyntaxError", "infer_type", "is_numeric", "parse_values"]

MAX_RANGE_LENGTH = 10**12  # per range; the product of several can be far larger


class ValueSyntaxError(ValueError):
    """The text is not a valid value list; the message says where and why."""


def _before(value, stop, step) -> bool:
    return value < stop if step > 0 else value > stop


class ArithmeticRange(Sequence):
    """``start, start+step, ...`` below ``stop``, rounded to the literals' decimals."""

    def __init__(self, start, stop, step, decimals: int):
        self.start, self.stop, self.step, self.decimals = start, stop, step, decimals
        length = max(0, math.ceil((stop - start) / step))
        # Float error can add one value too many: drop a last value that rounds onto stop.
        while length and not _before(self._value(length - 1), stop, step):
            length -= 1
        self._length = length

    def _value(self, index):
        value = self.start + index * self.step
        return value if self.decimals is None else round(value, self.decimals)

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(self._length)[index]]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("range index out of range")
        return self._value(index)


class Linspace(Sequence):
    """``n`` evenly spaced floats from ``a`` to ``b`` inclusive; ``10**x`` of them when ``log``."""

    def __init__(self, a: float, b: float, n: int, log: bool = False):
        self.a, self.b, self.n, self.log = a, b, n, log

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(self.n)[index]]
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError("linspace index out of range")
        if index == self.n - 1 and self.n > 1:
            x = float(self.b)  # exact endpoint, as numpy does
        else:
            x = self.a + (self.b - self.a) * index / (self.n - 1) if self.n > 1 else float(self.a)
        return 10.0**x if self.log else float(x)


class Chain(Sequence):
    """Several sequences one after another, still lazy."""

    def __init__(self, parts: list[Sequence]):
        self.parts = parts
        self._ends = []
        total = 0
        for part in parts:
            total += len(part)
            self._ends.append(total)

    def __len__(self):
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("value index out of range")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self.parts[part][index - start]


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<call>(?P<func>range|linspace|logspace)\s*\((?P<args>[^()]*)\))
      | (?P<bare>[^,"']*?)
    )\s*(?:,|$)""",
    re.VERBOSE,
)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)", re.IGNORECASE)


def infer_type(text: str) -> Any:
    """Type inference for one bare item: int, float, bool, else the text itself."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _decimals(literal: str) -> int:
    exponent = Decimal(literal).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _number(func: str, literal: str, position: int) -> int | float:
    literal = literal.strip()
    if _INT.fullmatch(literal):
        return int(literal)
    if _FLOAT.fullmatch(literal) and math.isfinite(float(literal)):
        return float(literal)
    raise ValueSyntaxError(f"{func}(): argument {position} must be a number, got {literal!r}")


def _call(func: str, args_text: str) -> Sequence:
    args = [a for a in args_text.split(",")]
    if args == [""]:
        args = []
    if func == "range":
        if len(args) not in (2, 3):
            raise ValueSyntaxError("range() takes (start, stop) or (start, stop, step)")
        numbers = [_number(func, a, i + 1) for i, a in enumerate(args)]
        start, stop = numbers[0], numbers[1]
        step = numbers[2] if len(numbers) == 3 else 1
        if step == 0:
            raise ValueSyntaxError("range(): step must not be zero")
        if all(isinstance(n, int) for n in numbers):
            values = range(start, stop, step)
        else:
            values = ArithmeticRange(start, stop, step, max(_decimals(a.strip()) for a in args))
    else:
        if len(args) != 3:
            raise ValueSyntaxError(f"{func}() takes (start, stop, count)")
        a, b = _number(func, args[0], 1), _number(func, args[1], 2)
        n = _number(func, args[2], 3)
        if not isinstance(n, int) or n < 1:
            raise ValueSyntaxError(f"{func}(): count must be a whole number of at least 1, got {args[2].strip()!r}")
        values = Linspace(a, b, n, log=func == "logspace")
    if len(values) > MAX_RANGE_LENGTH:
        raise ValueSyntaxError(f"{func}() gives {len(values):,} values; at most {MAX_RANGE_LENGTH:,} are allowed")
    return values


def parse_values(text: str) -> Sequence:
    """Parse a value list; raise ValueSyntaxError with a message fit for the user."""
    if text is None or not text.strip():
        raise ValueSyntaxError("enter at least one value")
    parts: list[Sequence] = []
    loose: list[Any] = []
    position = 0
    item_number = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        item_number += 1
        if not match or match.end() == position:
            raise ValueSyntaxError(f"item {item_number}: cannot read {text[position:].strip()!r}")
        if match.group("string") is not None:
            quoted = match.group("string")
            loose.append(re.sub(r"\\(.)", r"\1", quoted[1:-1]))
        elif match.group("call") is not None:
            if loose:
                parts.append(loose)
                loose = []
            parts.append(_call(match.group("func"), match.group("args")))
        else:
            bare = match.group("bare").strip()
            if not bare:
                raise ValueSyntaxError(f"item {item_number} is empty (two commas in a row, or a trailing comma?)")
            if "(" in bare or ")" in bare:
                raise ValueSyntaxError(
                    f"item {item_number}: {bare!r} is not understood; "
                    "use range(a, b[, step]), linspace(a, b, n) or logspace(a, b, n), or quote the text"
                )
            loose.append(infer_type(bare))
        position = match.end()
        if text[match.end() - 1 : match.end()] == "," and not text[position:].strip():
            raise ValueSyntaxError(f"item {item_number + 1} is empty (trailing comma?)")
    if loose:
        parts.append(loose)
    if len(parts) == 1:
        return parts[0]
    return Chain(parts)


def is_numeric(values: Sequence) -> bool:
    """True when every value is an int or float (bools are not numbers here)."""
    if isinstance(values, (range, ArithmeticRange, Linspace)):
        return True
    if isinstance(values, Chain):
        return all(is_numeric(part) for part in values.parts)
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
