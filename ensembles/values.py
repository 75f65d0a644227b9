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
        elif self.n > 1:
            x = self.a + (self.b - self.a) * index / (self.n - 1)
        else:
            x = float(self.a)
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


_CALL = re.compile(r"(range|linspace|logspace)\s*\(")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
MAX_DIGITS = 300  # longer numbers stay text (Python refuses to parse > 4300 digits)


def infer_type(text: str) -> Any:
    """Type inference for one bare item: int, finite float, bool, else the text itself
    (so "nan" and "inf" are text: they cannot be stored as JSON numbers)."""
    if len(text) <= MAX_DIGITS and _INT.fullmatch(text):
        return int(text)
    if len(text) <= MAX_DIGITS and _FLOAT.fullmatch(text) and math.isfinite(float(text)):
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
    value = infer_type(literal)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise ValueSyntaxError(f"{func}(): argument {position} must be a number, got {literal[:40]!r}")


def _too_many(func: str, count) -> ValueSyntaxError:
    return ValueSyntaxError(f"{func}() gives {count:,.0f} values; at most {MAX_RANGE_LENGTH:,} are allowed")


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
        count = (stop - start) / step
        if not math.isfinite(count):
            raise ValueSyntaxError("range(): the number of values is not finite")
        if count > MAX_RANGE_LENGTH:
            raise _too_many(func, count)
        if all(isinstance(n, int) for n in numbers):
            values = range(start, stop, step)
        else:
            values = ArithmeticRange(start, stop, step, min(15, max(_decimals(a.strip()) for a in args)))
    else:
        if len(args) != 3:
            raise ValueSyntaxError(f"{func}() takes (start, stop, count)")
        a, b = _number(func, args[0], 1), _number(func, args[1], 2)
        n = _number(func, args[2], 3)
        if not isinstance(n, int) or n < 1:
            raise ValueSyntaxError(f"{func}(): count must be a whole number of at least 1, got {args[2].strip()[:40]!r}")
        if n > MAX_RANGE_LENGTH:
            raise _too_many(func, n)
        if func == "logspace" and max(abs(a), abs(b)) > 300:
            raise ValueSyntaxError("logspace(): exponents must lie between -300 and 300")
        if not math.isfinite(b - a):
            raise ValueSyntaxError(f"{func}(): the interval is too wide")
        values = Linspace(a, b, n, log=func == "logspace")
    return values


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The string opened by the quote at ``start`` (backslash escapes) and the position after it."""
    quote, position, out = text[start], start + 1, []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            out.append(text[position + 1])
            position += 2
        elif char == quote:
            return "".join(out), position + 1
        else:
            out.append(char)
            position += 1
    raise ValueSyntaxError(f"a string opened with {quote} is never closed")


def parse_values(text: str) -> Sequence:
    """Parse a value list; raise ValueSyntaxError with a message fit for the user.
    A hand-written scanner: linear in the length of the text whatever it holds."""
    if text is None or not text.strip():
        raise ValueSyntaxError("enter at least one value")
    parts: list[Sequence] = []
    loose: list[Any] = []
    position, length, item = 0, len(text), 0
    while True:
        item += 1
        while position < length and text[position].isspace():
            position += 1
        if position == length or text[position] == ",":
            raise ValueSyntaxError(f"item {item} is empty (two commas in a row, or a trailing comma?)")
        call = _CALL.match(text, position)
        if text[position] in "\"'":
            value, position = _quoted(text, position)
            loose.append(value)
        elif call:
            close = text.find(")", call.end())
            if close == -1 or "(" in text[call.end() : close]:
                raise ValueSyntaxError(f"item {item}: {call.group(1)}( is not closed with )")
            if loose:
                parts.append(loose)
                loose = []
            parts.append(_call(call.group(1), text[call.end() : close]))
            position = close + 1
        else:
            end = text.find(",", position)
            end = length if end == -1 else end
            bare = text[position:end].strip()
            if any(c in bare for c in "()\"'"):
                raise ValueSyntaxError(
                    f"item {item}: {bare[:40]!r} is not understood; "
                    "use range(a, b[, step]), linspace(a, b, n) or logspace(a, b, n), or quote the text"
                )
            loose.append(infer_type(bare))
            position = end
        while position < length and text[position].isspace():
            position += 1
        if position == length:
            break
        if text[position] != ",":
            raise ValueSyntaxError(f"item {item}: expected a comma before {text[position:position + 20]!r}")
        position += 1
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
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
