"""The value-list syntax of the parameter editor. Pure Python, no Django.

A parameter's values are written as a comma list with type inference and
quoted strings, and lazy ranges::

    1, 2.5, "a,b", true, plain words
    range(0, 10)            range(0, 1, 0.25)
    linspace(0, 1, 5)       logspace(-3, 0, 4)

Items may be mixed (``0, range(5, 8), 100``). Values are typed (int, float,
bool, str) for sorting, filtering and plots, and keep the text they were typed
as (``true``, ``1e-3``, ``0.10``) for command lines and configured files:
``text_at(i)`` of a parsed list, or, for generated values (ranges), ``str`` of the
value, a float's shortest round-trip form. Ranges stay lazy, so
``range(0, 10**9)`` costs nothing until a member is looked up: a range's length
and its i-th value are computed by exact arithmetic on the numbers as typed,
never by a loop, so parsing costs the same for any magnitudes. A float range or
linspace whose step is finer than the float resolution at its magnitude (its
values would repeat) is refused with a message giving the smallest usable step.
"""

from __future__ import annotations

import bisect
import math
import operator
import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .expansion import format_count, value_text

__all__ = ["ValueSyntaxError", "infer_type", "is_numeric", "parse_values"]

MAX_RANGE_LENGTH = 10**12  # per range; the product of several can be far larger


class ValueSyntaxError(ValueError):
    """The text is not a valid value list; the message says where and why."""


class ArithmeticRange(Sequence):
    """``start, start+step, ...`` before ``stop``, computed exactly from the typed numbers.

    The numbers are exact fractions of the text the user typed (``0.1`` is 1/10,
    not the float nearest it), so the length is ``ceil((stop - start) / step)``
    in exact arithmetic, with no loop whatever the magnitudes, and value ``i``
    is the float nearest ``start + i*step`` (one integer division, correctly
    rounded: ``range(0, 1, 0.1)[3]`` is ``0.3``, not ``0.30000000000000004``).
    """

    kind = "range"

    def __init__(self, start: Fraction, step: Fraction, length: int):
        self.start, self.step, self._length = start, step, length
        # start + i*step == (numerator + i*increment) / denominator, all integers.
        denominator = math.lcm(start.denominator, step.denominator)
        self._numerator = start.numerator * (denominator // start.denominator)
        self._increment = step.numerator * (denominator // step.denominator)
        self._denominator = denominator

    def exact(self, index: int) -> Fraction:
        """Value ``index`` as an exact fraction (before rounding to a float)."""
        return self.start + index * self.step

    def _value(self, index: int) -> float:
        return (self._numerator + index * self._increment) / self._denominator

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(self._length)[index]]
        index = operator.index(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"{self.kind} index out of range")
        return self._value(index)


class Linspace(ArithmeticRange):
    """``n`` evenly spaced floats from ``a`` to ``b`` inclusive; ``10**x`` of them when ``log``.

    Value ``i`` (or the exponent, for ``log``) is the float nearest
    ``a + (b - a) * i / (n - 1)`` computed exactly, so both endpoints are exactly
    the typed numbers (as numpy gives them) and ``linspace(0.1, 0.3, 3)[1]`` is 0.2.
    """

    kind = "linspace"

    def __init__(self, a, b, n: int, log: bool = False):
        a, b = Fraction(a), Fraction(b)
        self.a, self.b, self.n, self.log = a, b, n, log
        super().__init__(a, (b - a) / (n - 1) if n > 1 else Fraction(0), n)

    def _value(self, index: int) -> float:
        x = super()._value(index)
        return 10.0**x if self.log else x


class Items(list):
    """Values listed one by one: the typed values, and ``texts``, each as typed."""

    def __init__(self, values=(), texts=()):
        super().__init__(values)
        self.texts = list(texts)

    def text_at(self, index: int) -> str:
        return self.texts[index]


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

    def _locate(self, index: int) -> tuple[Sequence, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("value index out of range")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self.parts[part], index - start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        part, offset = self._locate(index)
        return part[offset]

    def text_at(self, index: int) -> str:
        part, offset = self._locate(index)
        return value_text(part, offset)


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


def _number(func: str, literal: str, position: int) -> int | float:
    literal = literal.strip()
    value = infer_type(literal)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise ValueSyntaxError(f"{func}(): argument {position} must be a number, got {literal[:40]!r}")


def _exact(literal: str, value: int | float) -> Fraction:
    """The number ``value`` (parsed from ``literal``) exactly as typed: ``0.1`` is 1/10.
    A literal whose float is 0 (``1e-400``) is 0, like the float it stands for, so the
    fractions stay small: a nonzero finite float and <= 300 digits bound the exponent."""
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(Decimal(literal.strip())) if value else Fraction(0)


def _too_many(func: str, count: int) -> ValueSyntaxError:
    return ValueSyntaxError(
        f"{func}() gives {format_count(count)} values; at most {format_count(MAX_RANGE_LENGTH)} are allowed"
    )


def _require_distinct(func: str, values: ArithmeticRange, what: str) -> None:
    """Refuse a float sequence whose consecutive values would be equal floats.

    Floats near ``M`` are ``math.ulp(M)`` apart (16384 near 2**66, ~1.4e14 near
    1e30), so ``range(2**66, 2**66 + 49152000, 0.001)`` would be 49 billion values
    of which only 3,001 differ: a user means something else, so this is an error
    naming the smallest usable step rather than a space of duplicates. Exact values
    ``|step| >= ulp(M)`` apart round to distinct floats except, when the step is
    exactly one ulp, at ties; the first and last three values are compared to
    catch those. ``linspace(a, a, n)`` (all equal on purpose) is allowed.
    """
    n = len(values)
    if n < 2 or values.step == 0:
        return
    first, last = values.exact(0), values.exact(n - 1)
    magnitude = max(abs(float(first)), abs(float(last)))
    resolution = math.ulp(magnitude)
    ends = sorted({i for i in (0, 1, 2, n - 3, n - 2, n - 1) if 0 <= i < n})
    floats = {i: float(values.exact(i)) for i in ends}
    tie = any(i + 1 in floats and floats[i] == floats[i + 1] for i in ends)
    if abs(values.step) < Fraction(resolution):
        raise ValueSyntaxError(
            f"{func}(): {what} {float(abs(values.step)):.3g} is finer than floating-point numbers "
            f"near {magnitude:.6g}, which are {resolution:.6g} apart, so consecutive values would be equal; "
            f"use {what} at least {resolution:.6g}, or numbers closer to 0"
        )
    if tie:
        raise ValueSyntaxError(
            f"{func}(): the values fall halfway between floating-point numbers near {magnitude:.6g} "
            f"(which are {resolution:.6g} apart), so some consecutive values would round to the same one; "
            f"use {what} at least {2 * resolution:.6g}, or numbers closer to 0"
        )


def _call(func: str, args_text: str) -> Sequence:
    """range/linspace/logspace: length and values by arithmetic on the typed numbers, never a loop."""
    args = [a for a in args_text.split(",")]
    if args == [""]:
        args = []
    if func == "range":
        if len(args) not in (2, 3):
            raise ValueSyntaxError("range() takes (start, stop) or (start, stop, step)")
        numbers = [_number(func, a, i + 1) for i, a in enumerate(args)]
        exact = [_exact(a, n) for a, n in zip(args, numbers)]
        start, stop = exact[0], exact[1]
        step = exact[2] if len(exact) == 3 else Fraction(1)
        if step == 0:
            raise ValueSyntaxError("range(): step must not be zero")
        count = max(0, -((start - stop) // step))  # ceil((stop - start) / step), exactly
        if count > MAX_RANGE_LENGTH:
            raise _too_many(func, count)
        if all(isinstance(n, int) for n in numbers):
            return range(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1)
        values = ArithmeticRange(start, step, count)
        _require_distinct(func, values, "a step of")
        return values
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
    values = Linspace(_exact(args[0], a), _exact(args[1], b), n, log=func == "logspace")
    if func == "linspace":
        _require_distinct(func, values, "a spacing of")
    else:
        _require_distinct(func, values, "an exponent spacing of")
        # 10**x: neighbours differ by a factor 10**dx, about 1 + dx*ln(10); pow() may be off
        # by an ulp, so ask for four ulps (2**-50) between neighbours.
        if n > 1 and values.step != 0 and abs(float(values.step)) * math.log(10) < 2**-50:
            raise ValueSyntaxError(
                "logspace(): the exponents are so close that consecutive values would be equal floats; "
                "use fewer values or a wider interval"
            )
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
    loose_texts: list[str] = []
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
            loose_texts.append(value)
        elif call:
            close = text.find(")", call.end())
            if close == -1 or "(" in text[call.end() : close]:
                raise ValueSyntaxError(f"item {item}: {call.group(1)}( is not closed with )")
            if loose:
                parts.append(Items(loose, loose_texts))
                loose, loose_texts = [], []
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
            loose_texts.append(bare)
            position = end
        while position < length and text[position].isspace():
            position += 1
        if position == length:
            break
        if text[position] != ",":
            raise ValueSyntaxError(f"item {item}: expected a comma before {text[position:position + 20]!r}")
        position += 1
    if loose:
        parts.append(Items(loose, loose_texts))
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
