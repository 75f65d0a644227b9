"""Lazy parameter spaces: SmartSim's ensemble expansion without materialising it.

Pure Python, no Django. A ParameterSpace answers ``len`` and ``space[i]`` by
arithmetic on indexes, so a 10^15-member all_perm space costs no more than a
4-member one. Member ``i`` is SmartSim's ``<ensemble>_<i>``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "STRATEGIES",
    "ExpansionError",
    "ParameterSpace",
    "count_parts",
    "exact_count",
    "expand",
    "format_arg",
    "format_count",
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


class ParameterSpace(Sequence):
    """A read-only, lazy sequence of member parameter dicts.

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
    the cycle past values >= n. Sampling k members is then k lookups, whatever n."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int):
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        self.n = n
        generator = random.Random(seed)
        self.keys = [generator.getrandbits(64) for _ in range(self.ROUNDS)]

    def __call__(self, index: int) -> int:
        value = index
        while True:
            left, right = value >> self.half, value & self.mask
            for key in self.keys:
                left, right = right, left ^ (hash((key, right)) & self.mask)
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

        def combination(k: int) -> dict[str, Any]:
            return {name: column[k] for name, column in zip(names, columns)}

    else:
        # Mixed-radix place values, last parameter fastest (itertools.product order);
        # suffix products in one pass (quadratic big-int work for 200 huge columns otherwise).
        strides = [1] * len(lengths)
        for i in range(len(lengths) - 2, -1, -1):
            strides[i] = strides[i + 1] * lengths[i + 1]
        count = strides[0] * lengths[0] if lengths else 1

        def combination(k: int) -> dict[str, Any]:
            return {
                name: column[(k // stride) % length]
                for name, column, stride, length in zip(names, columns, strides, lengths)
            }

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
    text = str(value)
    return [f"{flag}={text}"] if joined else [flag, text]
