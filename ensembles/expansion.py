"""Lazy parameter spaces: SmartSim's ensemble expansion without materialising it.

Pure Python, no Django. A ParameterSpace answers ``len`` and ``space[i]`` by
arithmetic on indexes, so a 10^15-member all_perm space costs no more than a
4-member one. Member ``i`` is SmartSim's ``<ensemble>_<i>``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "STRATEGIES",
    "ExpansionError",
    "ParameterSpace",
    "Params",
    "count_parts",
    "exact_count",
    "expand",
    "format_arg",
    "format_count",
    "format_value",
    "text_overrides",
    "texts_of",
    "value_text",
]

STRATEGIES = ("all_perm", "step", "random")


class ExpansionError(ValueError):
    """The parameters or options cannot be expanded into members."""


EXACT_BELOW = 10**21  # counts below this are written out in full
_MAX_EXACT_DIGITS = 4000  # str(int) refuses more than 4300 digits by default


def count_parts(n: int) -> tuple[str, str, int | None]:
    """``n`` (a count >= 0, of any size) as (prefix, mantissa, exponent) for display.

    Below ``EXACT_BELOW``: ("", "1,234", None), the exact number with separators.
    Above: three significant digits and a power of ten, by integer arithmetic
    (never float, which overflows beyond ~1.8e308, nor ``str``, which refuses
    more than 4300 digits): ("", "1", 2400) for exactly 10^2400, ("≈ ", "1.23", 2400)
    when digits were dropped (truncated, so 999.9 never shows as 10.0 × ...).
    """
    n = int(n)
    if n < EXACT_BELOW:
        return "", f"{n:,}", None
    exponent = int(math.log10(n))  # math.log10 takes ints of any size; correct its rounding
    if 10**exponent > n:
        exponent -= 1
    elif 10 ** (exponent + 1) <= n:
        exponent += 1
    lead = n // 10 ** (exponent - 2)  # three digits, 100..999
    exact = lead * 10 ** (exponent - 2) == n
    mantissa = f"{lead // 100}.{lead % 100:02d}".rstrip("0").rstrip(".")
    return ("" if exact else "≈ "), mantissa, exponent


def format_count(n: int) -> str:
    """A count as plain text: ``1,234`` exactly, or ``10^2400`` / ``≈ 1.23 × 10^2400`` when huge."""
    prefix, mantissa, exponent = count_parts(n)
    if exponent is None:
        return mantissa
    return f"{prefix}10^{exponent}" if mantissa == "1" else f"{prefix}{mantissa} × 10^{exponent}"


def exact_count(n: int) -> str:
    """All the digits of ``n`` (for machine-readable attributes); the short form beyond 4000 digits."""
    n = int(n)
    return str(n) if n.bit_length() <= _MAX_EXACT_DIGITS * 3.32 else format_count(n)


def format_value(value: Any) -> str:
    """The text of a value whose typed text is not known: SmartSim's ``str(value)``
    (a float in its shortest round-trip form, so ``0.3`` is ``0.3``)."""
    return value if isinstance(value, str) else str(value)


def value_text(values: Sequence, index: int) -> str:
    """The text of ``values[index]`` as it was typed, when the sequence knows it
    (``text_at``, see ensembles.values), else ``format_value`` of the value."""
    text_at = getattr(values, "text_at", None)
    return text_at(index) if text_at is not None else format_value(values[index])


class Params(dict):
    """One member's parameters: the typed values (int/float/bool/str, for JSON, the
    database, sorting and plots) and ``text``, the text each value was typed as
    (``true``, ``1e-3``, ``0.10``), which is what command lines and configured files
    are given. ``text`` is computed on first use from the columns the values came from."""

    def __init__(self, values=(), text: Mapping[str, str] | None = None, *, sources=None):
        super().__init__(values)
        self._text = dict(text) if text is not None else None
        self._sources = sources  # [(name, column, index)], for a lazy ``text``

    @property
    def text(self) -> dict[str, str]:
        if self._text is None:
            self._text = {name: value_text(column, i) for name, column, i in self._sources or ()}
        return self._text

    @property
    def written(self) -> dict[str, str]:
        """Every parameter as it is written to command lines and files, in order (for display)."""
        return texts_of(self)


def texts_of(params: Mapping[str, Any], texts: Mapping[str, str] | None = None) -> dict[str, str]:
    """The text to write for each parameter: from ``texts``, else as typed (``params.text``
    of a Params), else ``format_value`` of the typed value."""
    known = dict(getattr(params, "text", None) or {})
    known.update(texts or {})
    return {name: known[name] if name in known else format_value(value) for name, value in params.items()}


def text_overrides(params: Mapping[str, Any]) -> dict[str, str]:
    """The typed texts that differ from ``format_value`` of their value (``true`` for True,
    ``1e-3`` for 0.001): all that must be stored beside the typed values to write them as typed."""
    known = getattr(params, "text", None) or {}
    return {
        name: known[name] for name, value in params.items() if name in known and known[name] != format_value(value)
    }


class ParameterSpace(Sequence):
    """A read-only, lazy sequence of member parameters (``Params``: typed values, and their text).

    Supports ``len``, integer indexes (negative too), slices (which return
    another lazy ParameterSpace) and iteration. ``warnings`` lists, in plain
    words, what the user may not expect (truncation, ignored options...).
    """

    def __init__(
        self,
        names: tuple[str, ...],
        length: int,
        member: Callable[[int], dict[str, Any]],
        warnings: list[str] | None = None,
        seed: int | None = None,
    ):
        self.names = names
        self.size = length  # like len(), but any size (len() stops at sys.maxsize)
        self._length = length
        self._member = member
        self.warnings = list(warnings or [])
        self.seed = seed

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            positions = range(self._length)[index]
            parent = self._member
            return ParameterSpace(
                self.names, _range_size(positions), lambda i: parent(positions[i]), self.warnings, self.seed
            )
        try:
            index = index.__index__()
        except AttributeError:
            raise TypeError(f"member indexes must be integers or slices, not {type(index).__name__}") from None
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"member index out of range (the space has {format_count(self._length)} members)")
        return self._member(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._length):
            yield self._member(i)

    def __repr__(self) -> str:
        return f"<ParameterSpace {format_count(self.size)} members over {list(self.names)}>"


def _range_size(positions: range) -> int:
    """len() of a range of any size."""
    step = positions.step
    span = positions.stop - positions.start
    return max(0, (span + step - (1 if step > 0 else -1)) // step)


class _Shuffle:
    """A seeded pseudo-random bijection of range(n), computed per index in O(1):
    a Feistel network on the smallest even number of bits covering n, walking
    the cycle past values >= n. Sampling k members is then k lookups, whatever n.

    The round function is BLAKE2b keyed by the seed over a fixed-width encoding of
    the round and the half-block, never Python's ``hash()`` (whose algorithm for
    tuples changed in 3.8 and may change again): a saved seed picks the same members
    on every Python version and platform."""

    ROUNDS = 4
    _BLOCK_BITS = 512  # blake2b's largest digest; wider halves take several blocks

    def __init__(self, n: int, seed: int):
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        self.width = (self.half + 7) // 8  # bytes of a half-block
        self.blocks = -(-self.half // self._BLOCK_BITS)
        self.n = n
        # The seed (any int) as a 64-byte key: its decimal text, hashed, is canonical for every size.
        self.key = hashlib.blake2b(b"flotilla-shuffle-seed:%d" % seed, digest_size=64).digest()

    def _round(self, number: int, right: int) -> int:
        data = right.to_bytes(self.width, "big")
        out = 0
        for block in range(self.blocks):
            digest = hashlib.blake2b(
                data, key=self.key, digest_size=64, salt=b"%d.%d" % (number, block)
            ).digest()
            out = (out << self._BLOCK_BITS) | int.from_bytes(digest, "big")
        return out & self.mask

    def __call__(self, index: int) -> int:
        value = index
        while True:
            left, right = value >> self.half, value & self.mask
            for number in range(self.ROUNDS):
                left, right = right, left ^ self._round(number, right)
            value = (left << self.half) | right
            if value < self.n:
                return value


def _as_values(name: str, value: Any) -> Sequence:
    """A parameter's values as a sequence: scalars are one value; str is a scalar."""
    if isinstance(value, (str, bytes, bool, int, float)):
        return [value]
    if isinstance(value, Sequence):
        return value
    raise ExpansionError(
        f"parameter {name!r}: values must be a list or a scalar (str, int, float, bool), "
        f"not {type(value).__name__}"
    )


def expand(
    params: Mapping[str, Any] | None,
    strategy: str = "all_perm",
    *,
    n_models: int | None = None,
    seed: int | None = None,
    replicas: int = 1,
) -> ParameterSpace:
    """Expand ``params`` into a lazy space of members.

    - ``all_perm``: cartesian product, last parameter varies fastest (SmartSim order).
    - ``step``: zip; unequal lengths truncate to the shortest, with a warning.
    - ``random``: ``n_models`` distinct combinations sampled without replacement,
      reproducible from ``seed``; 0/None or >= the total gives every combination
      in all_perm order.
    - ``replicas``: every combination is repeated that many times.
    """
    if strategy not in STRATEGIES:
        raise ExpansionError(
            f"unknown permutation strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ExpansionError(f"replicas must be a whole number of at least 1, not {replicas!r}")
    if n_models is not None and (isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 0):
        raise ExpansionError(f"n_models must be a whole number of at least 0, not {n_models!r}")

    params = dict(params or {})
    names = tuple(params)
    columns = tuple(_as_values(name, params[name]) for name in names)
    lengths = [len(column) for column in columns]
    warnings: list[str] = []

    for name, length in zip(names, lengths):
        if length == 0:
            warnings.append(f"Parameter '{name}' has no values, so the ensemble has no members.")
    if n_models and strategy != "random":
        warnings.append(f"n_models={n_models} is only used by the random strategy; it is ignored for {strategy}.")

    if strategy == "step":
        count = min(lengths) if lengths else 1
        if len(set(lengths)) > 1:
            detail = ", ".join(f"{name}: {length}" for name, length in zip(names, lengths))
            warnings.append(
                f"step pairs values by position, but the parameters have different lengths ({detail}); "
                f"truncated to the shortest: {count} member(s) per replica, later values are unused."
            )

        def combination(k: int) -> Params:
            return Params(
                {name: column[k] for name, column in zip(names, columns)},
                sources=[(name, column, k) for name, column in zip(names, columns)],
            )

    else:
        # Mixed-radix place values, last parameter fastest (itertools.product order);
        # suffix products in one pass (quadratic big-int work for 200 huge columns otherwise).
        strides = [1] * len(lengths)
        for i in range(len(lengths) - 2, -1, -1):
            strides[i] = strides[i + 1] * lengths[i + 1]
        count = strides[0] * lengths[0] if lengths else 1

        def combination(k: int) -> Params:
            sources = [
                (name, column, (k // stride) % length)
                for name, column, stride, length in zip(names, columns, strides, lengths)
            ]
            return Params({name: column[i] for name, column, i in sources}, sources=sources)

    used_seed = None
    if strategy == "random":
        if n_models and n_models < count:
            used_seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
            # Sample indexes, never the product: the first n_models of a seeded shuffle.
            shuffle = _Shuffle(count, used_seed)
            inner = combination
            combination = lambda k: inner(shuffle(k))  # noqa: E731
            count = n_models
        elif n_models:
            warnings.append(
                f"n_models={n_models} is not smaller than the {format_count(count)} possible combination(s): "
                "all of them are used, in all_perm order."
            )

    if replicas > 1 and names:
        warnings.append(
            f"replicas={replicas} repeats each of the {format_count(count)} combination(s) (SmartSim 0.8 ignores "
            "replicas when params are given)."
        )
    total = count * replicas
    if replicas == 1:
        member = combination
    else:
        member = lambda i: combination(i // replicas)  # noqa: E731
    return ParameterSpace(names, total, member, warnings, used_seed)


def format_arg(name: str, value: Any) -> list[str]:
    """SmartSim's params_as_args rule, as argv items (values are never split on spaces).

    ``x`` -> ``-x v``; ``-x`` -> ``-x v``; ``--x`` -> ``--x=v``; ``xx`` -> ``--xx=v``.
    A value of None gives the bare flag.
    """
    if name.startswith("--"):
        flag, joined = name, True
    elif name.startswith("-"):
        flag, joined = name, False
    elif len(name) == 1:
        flag, joined = f"-{name}", False
    else:
        flag, joined = f"--{name}", True
    if value is None:
        return [flag]
    text = format_value(value)
    return [f"{flag}={text}"] if joined else [flag, text]
