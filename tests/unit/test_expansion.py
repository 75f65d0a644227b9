"""ensembles.expansion: lazy ParameterSpace, strategies, replicas and format_arg."""

import itertools
import time

import pytest

from ensembles.expansion import (
    ExpansionError,
    ParameterSpace,
    exact_count,
    expand,
    format_arg,
    format_count,
    text_overrides,
    texts_of,
)
from ensembles.specs import member_argv

HUGE = {f"p{i}": range(0, 1000) for i in range(5)}  # 10**15 combinations
HUGE_LEN = 10**15

SLICES = [
    slice(None),
    slice(1, None),
    slice(None, -1),
    slice(None, None, 2),
    slice(None, None, -1),
    slice(-3, None),
    slice(1, 100, 3),
    slice(5, 2),
    slice(-100, 100),
]


def product_members(params):
    names = list(params)
    return [dict(zip(names, combo)) for combo in itertools.product(*params.values())]


def assert_sequence_invariants(space):
    """Indexing, iteration and slicing all agree with the materialised list."""
    members = list(space)
    assert len(members) == len(space)
    assert members == [space[i] for i in range(len(space))]
    assert [space[-i] for i in range(1, len(space) + 1)] == [members[-i] for i in range(1, len(members) + 1)]
    for sl in SLICES:
        sliced = space[sl]
        assert isinstance(sliced, ParameterSpace)
        assert list(sliced) == members[sl], sl
        assert len(sliced) == len(members[sl]), sl
        assert [sliced[i] for i in range(len(sliced))] == members[sl], sl
    with pytest.raises(IndexError):
        space[len(space)]
    with pytest.raises(IndexError):
        space[-len(space) - 1]


# --- all_perm ---------------------------------------------------------------

ALL_PERM_CASES = {
    "smartsim example": {"a": [1, 2], "b": ["x", "y"]},
    "one param": {"a": [1, 2, 3]},
    "three params uneven": {"a": [1, 2], "b": ["x", "y", "z"], "c": [True, False]},
    "single values": {"a": [1], "b": [2], "c": [3]},
    "range values": {"n": range(3), "m": range(10, 14)},
    "tuples": {"a": (0.5, 1.5), "b": ("u",)},
}


def test_all_perm_varies_the_last_parameter_fastest():
    space = expand({"a": [1, 2], "b": ["x", "y"]}, "all_perm")
    assert list(space) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


@pytest.mark.parametrize("params", ALL_PERM_CASES.values(), ids=ALL_PERM_CASES.keys())
def test_all_perm_matches_itertools_product(params):
    space = expand(params, "all_perm")
    assert list(space) == product_members(params)
    assert space.warnings == []
    assert_sequence_invariants(space)


def test_all_perm_is_the_default_strategy():
    params = ALL_PERM_CASES["three params uneven"]
    assert list(expand(params)) == list(expand(params, "all_perm"))


def test_all_perm_with_scalar_values_treats_each_scalar_as_one_value():
    space = expand({"a": 5, "b": [1, 2], "s": "hello world"}, "all_perm")
    assert list(space) == [
        {"a": 5, "b": 1, "s": "hello world"},
        {"a": 5, "b": 2, "s": "hello world"},
    ]


# --- laziness on huge spaces -------------------------------------------------


def test_huge_all_perm_space_answers_len_and_last_member_instantly():
    start = time.perf_counter()
    space = expand(HUGE)
    assert len(space) == HUGE_LEN
    last = {f"p{i}": 999 for i in range(5)}
    assert space[HUGE_LEN - 1] == last
    assert space[-1] == last
    assert space[0] == {f"p{i}": 0 for i in range(5)}
    # Mixed-radix decoding, last parameter fastest.
    assert space[123_456_789_012_345] == {"p0": 123, "p1": 456, "p2": 789, "p3": 12, "p4": 345}
    assert time.perf_counter() - start < 1.0


def test_huge_space_index_out_of_range_raises_index_error():
    space = expand(HUGE)
    with pytest.raises(IndexError):
        space[HUGE_LEN]
    with pytest.raises(IndexError):
        space[-HUGE_LEN - 1]


def test_slicing_a_huge_space_stays_lazy():
    start = time.perf_counter()
    space = expand(HUGE)
    tail = space[HUGE_LEN - 3 :]
    assert isinstance(tail, ParameterSpace)
    assert len(tail) == 3
    assert tail[-1] == space[-1]
    stepped = space[:: 10**14]
    assert len(stepped) == 10
    assert stepped[1] == {"p0": 100, "p1": 0, "p2": 0, "p3": 0, "p4": 0}
    assert len(space[::-1]) == HUGE_LEN
    assert space[::-1][0] == space[-1]
    assert time.perf_counter() - start < 1.0


def test_slice_of_a_slice_agrees_with_list_slicing():
    space = expand({"a": range(10), "b": ["x", "y"]})
    members = list(space)
    assert list(space[2:15][::3]) == members[2:15][::3]
    assert list(space[::-2][1:4]) == members[::-2][1:4]


def test_non_integer_index_is_a_type_error():
    with pytest.raises(TypeError):
        expand({"a": [1, 2]})["0"]


# --- step --------------------------------------------------------------------

STEP_CASES = {
    "equal lengths": {"a": [1, 2, 3], "b": ["x", "y", "z"]},
    "one param": {"a": [4, 5]},
    "ranges": {"a": range(3), "b": range(10, 13)},
}


@pytest.mark.parametrize("params", STEP_CASES.values(), ids=STEP_CASES.keys())
def test_step_zips_equal_length_values_without_warning(params):
    space = expand(params, "step")
    names = list(params)
    assert list(space) == [dict(zip(names, combo)) for combo in zip(*params.values())]
    assert space.warnings == []
    assert_sequence_invariants(space)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"a": [1, 2, 3], "b": ["x", "y"]}, [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]),
        ({"a": [1], "b": [7, 8, 9]}, [{"a": 1, "b": 7}]),
        ({"a": [1, 2, 3], "b": 7}, [{"a": 1, "b": 7}]),
        ({"a": [1, 2], "s": "hello"}, [{"a": 1, "s": "hello"}]),
    ],
    ids=["first longer", "second longer", "int scalar", "str scalar"],
)
def test_step_truncates_unequal_lengths_to_the_shortest_with_a_warning(params, expected):
    space = expand(params, "step")
    assert list(space) == expected
    assert len(space.warnings) == 1
    assert_sequence_invariants(space)


def test_step_smartsim_example_with_params_as_args():
    space = expand({"H": [5, 6], "g_param": ["a", "b"]}, "step")
    run_settings = {"exe": "python", "exe_args": ["sleep.py"]}
    argvs = [member_argv(run_settings, member, ["H", "g_param"]) for member in space]
    assert argvs == [
        ["python", "sleep.py", "-H", "5", "--g_param=a"],
        ["python", "sleep.py", "-H", "6", "--g_param=b"],
    ]


# --- random --------------------------------------------------------------------

RANDOM_PARAMS = {"a": range(10), "b": range(10), "c": ["x", "y", "z", "w", "v", "u", "t", "s", "r", "q"]}


@pytest.mark.parametrize("n_models", [1, 5, 50, 999])
def test_random_samples_n_distinct_existing_combinations(n_models):
    space = expand(RANDOM_PARAMS, "random", n_models=n_models, seed=7)
    members = list(space)
    assert len(space) == n_models
    keys = [tuple(m.items()) for m in members]
    assert len(set(keys)) == n_models
    every = product_members(RANDOM_PARAMS)
    assert all(m in every for m in members[:50])
    assert_sequence_invariants(space)


def test_random_is_reproducible_from_the_seed():
    first = list(expand(RANDOM_PARAMS, "random", n_models=20, seed=42))
    second = list(expand(RANDOM_PARAMS, "random", n_models=20, seed=42))
    assert first == second


def test_random_different_seeds_give_different_samples():
    samples = {
        tuple(tuple(m.items()) for m in expand(RANDOM_PARAMS, "random", n_models=20, seed=seed))
        for seed in range(5)
    }
    assert len(samples) > 1


@pytest.mark.parametrize("n_models", [0, None])
def test_random_without_n_models_gives_every_combination_in_all_perm_order(n_models):
    params = {"a": [1, 2, 3], "b": ["x", "y"]}
    space = expand(params, "random", n_models=n_models, seed=3)
    assert list(space) == product_members(params)


@pytest.mark.parametrize("n_models", [6, 7, 1000])
def test_random_with_n_models_at_least_the_total_gives_all_in_order_with_a_warning(n_models):
    params = {"a": [1, 2, 3], "b": ["x", "y"]}
    space = expand(params, "random", n_models=n_models, seed=3)
    assert list(space) == product_members(params)
    assert len(space.warnings) == 1
    assert str(n_models) in space.warnings[0]


def test_random_sampling_from_a_huge_space_is_fast_and_distinct():
    start = time.perf_counter()
    space = expand(HUGE, "random", n_models=10**4, seed=1)
    members = list(space)
    elapsed = time.perf_counter() - start
    assert len(members) == 10**4
    assert len({tuple(m.values()) for m in members}) == 10**4
    assert elapsed < 1.0


# --- replicas ------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, options",
    [("all_perm", {}), ("step", {}), ("random", {"n_models": 4, "seed": 11})],
)
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_replicas_repeat_each_combination_consecutively(strategy, options, replicas):
    params = {"a": [1, 2, 3], "b": ["x", "y", "z"]}
    combos = list(expand(params, strategy, **options))
    space = expand(params, strategy, replicas=replicas, **options)
    assert len(space) == len(combos) * replicas
    assert [space[i] for i in range(len(space))] == [combos[i // replicas] for i in range(len(space))]
    assert_sequence_invariants(space)


@pytest.mark.parametrize("strategy", ["all_perm", "step", "random"])
@pytest.mark.parametrize("replicas", [1, 4])
def test_no_params_and_replicas_give_that_many_empty_members(strategy, replicas):
    assert list(expand({}, strategy, replicas=replicas)) == [{}] * replicas
    assert list(expand(None, strategy, replicas=replicas)) == [{}] * replicas


@pytest.mark.parametrize("replicas", [0, -1, -10])
def test_replicas_below_one_are_refused(replicas):
    with pytest.raises(ExpansionError):
        expand({"a": [1]}, replicas=replicas)


def test_replicas_on_huge_space_stay_lazy():
    space = expand(HUGE, replicas=3)
    assert len(space) == 3 * HUGE_LEN
    assert space[-1] == space[-3] == {f"p{i}": 999 for i in range(5)}


# --- empty values, errors, types ------------------------------------------------


@pytest.mark.parametrize("strategy", ["all_perm", "step", "random"])
@pytest.mark.parametrize(
    "params", [{"a": []}, {"a": [1, 2], "b": []}, {"a": range(0)}], ids=["only", "one of two", "empty range"]
)
def test_an_empty_value_list_gives_an_empty_space_with_a_warning(strategy, params):
    space = expand(params, strategy)
    assert len(space) == 0
    assert list(space) == []
    assert space.warnings
    assert_sequence_invariants(space)


@pytest.mark.parametrize("strategy", ["bogus", "ALL_PERM", "", "allperm"])
def test_unknown_strategy_is_refused_by_name(strategy):
    with pytest.raises(ExpansionError, match=repr(strategy)):
        expand({"a": [1]}, strategy)


def test_expansion_error_is_a_value_error():
    assert issubclass(ExpansionError, ValueError)


@pytest.mark.parametrize("strategy", ["all_perm", "step", "random"])
def test_values_keep_their_types(strategy):
    space = expand({"i": [1], "b": [True], "s": ["1"], "f": [1.5], "z": [0]}, strategy)
    (member,) = list(space)
    assert member == {"i": 1, "b": True, "s": "1", "f": 1.5, "z": 0}
    assert type(member["i"]) is int
    assert type(member["b"]) is bool
    assert type(member["s"]) is str
    assert type(member["f"]) is float
    assert type(member["z"]) is int


def test_bool_and_int_values_stay_distinct_members():
    space = expand({"a": [1, True, "1"]})
    assert [type(m["a"]) for m in space] == [int, bool, str]


# --- format_arg ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("x", "v", ["-x", "v"]),
        ("-x", "v", ["-x", "v"]),
        ("--x", "v", ["--x=v"]),
        ("xx", "v", ["--xx=v"]),
        ("H", 5, ["-H", "5"]),
        ("g_param", "a", ["--g_param=a"]),
        ("x", "hello world", ["-x", "hello world"]),
        ("xx", "hello world", ["--xx=hello world"]),
        ("-x", "hello world", ["-x", "hello world"]),
        ("--x", "a b  c", ["--x=a b  c"]),
        ("n", 2.5, ["-n", "2.5"]),
        ("flag", True, ["--flag=True"]),
    ],
)
def test_format_arg_follows_smartsim_params_as_args_rule(name, value, expected):
    assert format_arg(name, value) == expected


# --- counts beyond float and str ---------------------------------------------------

ASTRONOMICAL = {f"p{i}": range(0, 10**12) for i in range(200)}  # 10**2400 combinations


def test_a_space_beyond_float_range_has_its_exact_size_and_members():
    space = expand(ASTRONOMICAL, replicas=3)
    assert space.size == 3 * 10**2400
    assert space[0] == {name: 0 for name in ASTRONOMICAL}
    assert space[-1] == {name: 10**12 - 1 for name in ASTRONOMICAL}
    assert space[3 * (10**12 + 5)] == {**{name: 0 for name in ASTRONOMICAL}, "p198": 1, "p199": 5}
    assert repr(space) == "<ParameterSpace 3 × 10^2400 members over [" + ", ".join(repr(n) for n in ASTRONOMICAL) + "]>"
    assert "each of the 10^2400 combination(s)" in space.warnings[0]
    with pytest.raises(IndexError, match=r"3 × 10\^2400 members"):
        space[3 * 10**2400]


COUNT_TEXTS = [
    (0, "0"),
    (1, "1"),
    (1234, "1,234"),
    (10**15, "1,000,000,000,000,000"),
    (10**21 - 1, "999,999,999,999,999,999,999"),
    (10**21, "10^21"),
    (10**2400, "10^2400"),
    (5 * 10**2398, "5 × 10^2398"),
    (1234 * 10**2400, "≈ 1.23 × 10^2403"),
    (10**2400 - 1, "≈ 9.99 × 10^2399"),
    (10**12000, "10^12000"),  # more digits than str(int) accepts
]


@pytest.mark.parametrize("n, text", COUNT_TEXTS, ids=[text for _, text in COUNT_TEXTS])
def test_format_count_is_exact_when_short_and_a_power_of_ten_when_huge(n, text):
    assert format_count(n) == text


def test_exact_count_gives_every_digit_up_to_4000_of_them():
    assert exact_count(10**2400) == "1" + "0" * 2400
    assert exact_count(10**12000) == "10^12000"


# --- seeded sampling is frozen across Python versions -------------------------------
# The shuffle is BLAKE2b keyed by the seed (hashlib), not Python's hash() of tuples, whose
# algorithm changed in Python 3.8. The members below were picked once when hash() was
# replaced (earlier saved seeds picked other members, once); they must never change again:
# a saved seed has to pick the same members on every Python version and platform.


def test_random_sample_of_a_seed_is_frozen():
    space = expand(RANDOM_PARAMS, "random", n_models=8, seed=42)
    assert [tuple(m.values()) for m in space] == [
        (7, 8, "r"), (3, 7, "v"), (7, 8, "w"), (0, 9, "y"), (8, 1, "w"), (4, 4, "y"), (0, 0, "u"), (9, 1, "x"),
    ]


def test_random_sample_of_a_huge_space_and_a_big_seed_is_frozen():
    space = expand(HUGE, "random", n_models=3, seed=2**40 + 7)
    indexes = [129523787832283, 72723547817103, 938999733909028]  # member positions in all_perm order
    assert [tuple(m.values()) for m in space] == [
        tuple((index // 1000**p) % 1000 for p in range(4, -1, -1)) for index in indexes
    ]


def test_random_sample_of_an_astronomical_space_is_frozen():
    # 10**2400 combinations: the Feistel halves are wider than one BLAKE2b digest.
    space = expand(ASTRONOMICAL, "random", n_models=3, seed=5)
    assert [[space[j][f"p{i}"] for i in (0, 1, 199)] for j in range(3)] == [
        [120847523145, 981287919843, 672093191139],
        [671219120580, 134145043426, 739903240769],
        [620180483316, 848920079324, 828842182170],
    ]


def test_random_sampling_never_uses_the_builtin_hash(monkeypatch):
    from ensembles import expansion

    def refuse(value):
        raise AssertionError("hash() differs between Python versions")

    monkeypatch.setattr(expansion, "hash", refuse, raising=False)  # found before the builtin
    assert len({tuple(m.values()) for m in expand(HUGE, "random", n_models=50, seed=9)}) == 50


# --- values keep the text they were typed as ----------------------------------------


def test_members_carry_the_typed_text_beside_the_typed_values():
    from ensembles.values import parse_values

    space = expand(
        {"flag": parse_values("true, TRUE"), "lr": parse_values("1e-3, 0.10"), "x": parse_values("range(0, 1, 0.1)")}
    )
    member = space[0 * 20 + 1 * 10 + 3]  # flag=true, lr=0.10, x=0.3
    assert member == {"flag": True, "lr": 0.1, "x": 0.3}
    assert [type(v) for v in member.values()] == [bool, float, float]
    assert member.text == {"flag": "true", "lr": "0.10", "x": "0.3"}
    assert space[-1].text == {"flag": "TRUE", "lr": "0.10", "x": "0.9"}
    assert text_overrides(member) == {"flag": "true", "lr": "0.10"}  # what differs from str(value)


@pytest.mark.parametrize("strategy, options", [("step", {}), ("random", {"n_models": 2, "seed": 1})])
def test_every_strategy_carries_the_typed_text(strategy, options):
    from ensembles.values import parse_values

    space = expand({"a": parse_values("1e-3, 2e-3, 3e-3"), "b": parse_values("True, false, yes")}, strategy, **options)
    for member in space:
        assert member.text == {"a": f"{member['a'] * 1000:.0f}e-3", "b": {True: "True", False: "false", "yes": "yes"}[member["b"]]}


def test_values_given_in_python_are_written_with_str():
    member = expand({"a": [True, 0.1, 3, "s"]})[0]
    assert member.text == {"a": "True"}
    assert texts_of(member) == {"a": "True"} and text_overrides(member) == {}
