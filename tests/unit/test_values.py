"""ensembles.values: the value-list syntax of the parameter editor."""

import time

import pytest

from ensembles.values import ValueSyntaxError, infer_type, is_numeric, parse_values


def typed(values):
    return [(type(v), v) for v in values]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('1, 2.5, "a,b", true', [1, 2.5, "a,b", True]),
        ("1", [1]),
        ("  7  ", [7]),
        ("-3, +4", [-3, 4]),
        ("1e3, .5, 2.", [1000.0, 0.5, 2.0]),
        ("true, false, TRUE, False", [True, False, True, False]),
        ("plain words, hello", ["plain words", "hello"]),
        ('"1", \'2.5\', "true"', ["1", "2.5", "true"]),
        ("'x, y', \"a,b,c\"", ["x, y", "a,b,c"]),
        ('"say \\"hi\\""', ['say "hi"']),
        ("a ,b , c", ["a", "b", "c"]),
    ],
)
def test_parse_values_infers_types_and_keeps_quoted_commas(text, expected):
    assert typed(parse_values(text)) == typed(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("range(0, 5)", [0, 1, 2, 3, 4]),
        ("range(0, 10, 3)", [0, 3, 6, 9]),
        ("range(5, 0, -2)", [5, 3, 1]),
        ("range(3, 3)", []),
    ],
)
def test_integer_ranges_follow_python_range(text, expected):
    assert typed(parse_values(text)) == typed(expected)


def test_huge_range_is_lazy():
    start = time.perf_counter()
    values = parse_values("range(0, 1000000000000)")
    assert len(values) == 10**12
    assert values[-1] == 10**12 - 1
    assert values[123_456_789] == 123_456_789
    assert time.perf_counter() - start < 1.0


def test_huge_range_mixed_with_items_stays_lazy():
    values = parse_values("-1, range(0, 1000000000000), 'end'")
    assert len(values) == 10**12 + 2
    assert values[0] == -1
    assert values[1] == 0
    assert values[-2] == 10**12 - 1
    assert values[-1] == "end"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("range(0, 1, 0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ("range(0, 0.3, 0.1)", [0.0, 0.1, 0.2]),
        ("range(0, 1, 0.25)", [0.0, 0.25, 0.5, 0.75]),
        ("range(1, 0, -0.25)", [1.0, 0.75, 0.5, 0.25]),
        ("range(0.5, 3)", [0.5, 1.5, 2.5]),
        ("range(0, 0.001, 0.0002)", [0.0, 0.0002, 0.0004, 0.0006, 0.0008]),
    ],
)
def test_float_ranges_are_rounded_to_the_literals_decimals(text, expected):
    values = parse_values(text)
    assert len(values) == len(expected)
    assert list(values) == expected  # exact equality: 0.3, not 0.30000000000000004


def test_float_range_third_value_is_exactly_point_three():
    values = parse_values("range(0, 1, 0.1)")
    assert values[3] == 0.3
    assert values[-1] == 0.9


@pytest.mark.parametrize(
    "text, expected",
    [
        ("linspace(0, 1, 5)", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("linspace(1, 0, 3)", [1.0, 0.5, 0.0]),
        ("linspace(-2, 2, 2)", [-2.0, 2.0]),
    ],
)
def test_linspace_gives_evenly_spaced_floats(text, expected):
    assert typed(parse_values(text)) == typed(expected)


@pytest.mark.parametrize(
    "a, b, n",
    [
        (0, 1, 5),
        (0.1, 0.3, 3),
        (0.1, 0.7, 4),
        (-1.7, 2.9, 7),
        (-5.88, 8.9, 11),
        (2.5, -2.5, 4),
    ],
)
def test_linspace_endpoints_are_exact(a, b, n):
    values = parse_values(f"linspace({a}, {b}, {n})")
    assert len(values) == n
    assert values[0] == a
    assert values[-1] == b


def test_logspace_gives_powers_of_ten():
    assert list(parse_values("logspace(-3, 0, 4)")) == [0.001, 0.01, 0.1, 1.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0, range(5, 8), 100", [0, 5, 6, 7, 100]),
        ("linspace(0, 1, 3), 'x'", [0.0, 0.5, 1.0, "x"]),
        ("range(0, 2), range(10, 12)", [0, 1, 10, 11]),
        ("a, range(0, 0.3, 0.1), true", ["a", 0.0, 0.1, 0.2, True]),
    ],
)
def test_mixed_items_are_concatenated_in_order(text, expected):
    values = parse_values(text)
    assert len(values) == len(expected)
    assert typed(values) == typed(expected)
    assert [values[i] for i in range(-len(values), 0)] == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "at least one value"),
        ("   ", "at least one value"),
        ("1,,2", "item 2 is empty"),
        ("1, 2,", "trailing comma"),
        ("1, 2, ", "trailing comma"),
        (",1", "item 1 is empty"),
        ("foo(1)", "range"),
        ("sqrt(4), 1", "range"),
        ("range(1)", r"range\(\) takes"),
        ("range(1, 2, 3, 4)", r"range\(\) takes"),
        ("range()", r"range\(\) takes"),
        ("linspace(0, 1)", r"linspace\(\) takes"),
        ("logspace(0, 1, 2, 3)", r"logspace\(\) takes"),
        ("range(0, 10, 0)", "step must not be zero"),
        ("range(0, 1, 0.0)", "step must not be zero"),
        ("range(a, b)", "must be a number"),
        ("range(0, x)", "must be a number"),
        ("range(0, 5, one)", "must be a number"),
        ("linspace(a, 1, 3)", "must be a number"),
        ("linspace(0, 1, 0)", "count"),
    ],
)
def test_invalid_value_lists_raise_a_helpful_error(text, fragment):
    with pytest.raises(ValueSyntaxError, match=fragment):
        parse_values(text)


def test_value_syntax_error_is_a_value_error():
    assert issubclass(ValueSyntaxError, ValueError)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", 1),
        ("-12", -12),
        ("1.5", 1.5),
        ("1e-3", 0.001),
        ("true", True),
        ("FALSE", False),
        ("hello", "hello"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_infer_type(text, expected):
    result = infer_type(text)
    assert type(result) is type(expected)
    assert result == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1, 2.5", True),
        ("range(0, 10)", True),
        ("linspace(0, 1, 3)", True),
        ("0, range(1, 3)", True),
        ("true, false", False),
        ("1, a", False),
        ('"1"', False),
        ("0, range(1, 3), x", False),
    ],
)
def test_is_numeric(text, expected):
    assert is_numeric(parse_values(text)) is expected


# --- exact arithmetic: length and values never depend on a loop ------------------


@pytest.mark.parametrize(
    "text, length, expected",
    [
        # 1e-16 steps: rounding to 15 decimals made these all 0.0, and trimmed the length
        ("range(0, 1e-15, 1e-16)", 10, [float(f"{i}e-16") for i in range(10)]),
        ("range(0, 0.0000000000000005, 0.0000000000000001)", 5, [0.0, 1e-16, 2e-16, 3e-16, 4e-16]),
        ("range(0.1, 0.7, 0.2)", 3, [0.1, 0.3, 0.5]),
        ("range(0, 1.1, 0.1)", 11, [round(i / 10, 1) for i in range(11)]),
    ],
)
def test_float_range_length_and_values_are_exact_for_the_typed_numbers(text, length, expected):
    values = parse_values(text)
    assert len(values) == length
    assert [values[i] for i in range(length)] == [float(v) for v in expected]


def test_a_float_range_of_huge_numbers_has_its_exact_length_and_values():
    values = parse_values("range(1e30, 2e30, 1e18)")
    assert len(values) == 10**12
    assert values[0] == 1e30
    assert values[123_456_789] == float(10**30 + 123_456_789 * 10**18)
    assert values[-1] == float(2 * 10**30 - 10**18)


@pytest.mark.parametrize(
    "text",
    [
        # the review's case: 49 billion values, but floats near 2**66 are 16384 apart
        "range(73786976294838206464, 73786976294887358464, 0.001)",
        "range(1000000000000000000000000000000, 1000000000000000000000000000001, 0.5)",
        "range(1e30, 1.00000000000000000001e30, 0.1)",
        "range(100000000000000000000, 100000000000000000005, 0.5)",
        "linspace(100000000000000000000, 100000000000000000001, 3)",
    ],
)
def test_a_step_finer_than_the_float_resolution_is_refused_with_the_usable_step(text):
    with pytest.raises(ValueSyntaxError, match=r"finer than floating-point numbers .* use a (step|spacing) of at least"):
        parse_values(text)


def test_a_float_range_whose_values_fall_halfway_between_floats_is_refused():
    # near 2**53 floats are 2 apart: 2**53 + 1, + 3, ... would round pairwise onto the same float
    with pytest.raises(ValueSyntaxError, match="halfway between floating-point numbers"):
        parse_values("range(9007199254740993.0, 9007199254741003, 2.0)")


def test_a_float_range_exactly_at_the_float_resolution_is_kept():
    values = parse_values("range(4503599627370496.0, 4503599627370500.0, 1.0)")  # 2**52: floats 1 apart
    assert list(values) == [4503599627370496.0, 4503599627370497.0, 4503599627370498.0, 4503599627370499.0]


def test_linspace_of_equal_endpoints_still_repeats_on_purpose():
    assert list(parse_values("linspace(1, 1, 3)")) == [1.0, 1.0, 1.0]


def test_logspace_with_exponents_too_close_to_tell_apart_is_refused():
    with pytest.raises(ValueSyntaxError, match="logspace"):
        parse_values("logspace(0, 0.00000000000000001, 3)")


def test_linspace_interior_values_are_the_nearest_floats():
    assert list(parse_values("linspace(0.1, 0.3, 3)")) == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("range(0, 1e300, 1e-300)", r"range\(\) gives 10\^600 values; at most 1,000,000,000,000 are allowed"),
        ("range(0, 3e300, 7e-300)", r"range\(\) gives ≈ 4.28 × 10\^599 values"),
        ("range(0, 2000000000000, 1)", r"range\(\) gives 2,000,000,000,000 values"),
        ("linspace(0, 1, 2000000000000)", r"linspace\(\) gives 2,000,000,000,000 values"),
    ],
)
def test_too_many_values_are_counted_exactly_in_the_message(text, fragment):
    with pytest.raises(ValueSyntaxError, match=fragment):
        parse_values(text)


# --- the text each value was typed as ---------------------------------------------


def texts(values):
    from ensembles.expansion import value_text

    return [value_text(values, i) for i in range(len(values))]


@pytest.mark.parametrize(
    "text, values, written",
    [
        ("true, True, TRUE, false", [True, True, True, False], ["true", "True", "TRUE", "false"]),
        ("1e-3, 0.10, 2., .5, 1E3", [0.001, 0.1, 2.0, 0.5, 1000.0], ["1e-3", "0.10", "2.", ".5", "1E3"]),
        ("007, +4, -0, 1_000", [7, 4, 0, "1_000"], ["007", "+4", "-0", "1_000"]),
        (' "true" , \'a,b\' , plain words ', ["true", "a,b", "plain words"], ["true", "a,b", "plain words"]),
    ],
)
def test_listed_values_are_typed_and_keep_their_text(text, values, written):
    parsed = parse_values(text)
    assert typed(parsed) == typed(values)
    assert texts(parsed) == written


@pytest.mark.parametrize(
    "text, written",
    [
        ("range(0, 1, 0.1)", ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]),
        ("range(0, 3)", ["0", "1", "2"]),
        ("linspace(0.1, 0.3, 3)", ["0.1", "0.2", "0.3"]),
        ("logspace(-3, 0, 4)", ["0.001", "0.01", "0.1", "1.0"]),
    ],
)
def test_generated_values_are_written_in_their_shortest_round_trip_form(text, written):
    assert texts(parse_values(text)) == written


def test_mixed_lists_keep_each_items_text():
    parsed = parse_values("TRUE, range(0, 0.3, 0.1), 1e-3")
    assert typed(parsed) == typed([True, 0.0, 0.1, 0.2, 0.001])
    assert texts(parsed) == ["TRUE", "0.0", "0.1", "0.2", "1e-3"]
    assert parsed.text_at(-1) == "1e-3"
