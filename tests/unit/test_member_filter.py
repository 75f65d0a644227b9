"""ensembles.member_filter: the member table's filter expressions, parsed without eval."""

import pytest

from ensembles.member_filter import (
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Comparison,
    FilterError,
    Literal,
    Or,
    comparisons,
    parse,
    quote,
)


def cmp(name, op, text, value=None):
    return Comparison(name, op, Literal(text, text if value is None else value))


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_a_blank_filter_is_no_filter(text):
    assert parse(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("energy > 0.1", cmp("energy", ">", "0.1", 0.1)),
        ("energy>0.1", cmp("energy", ">", "0.1", 0.1)),
        ("n >= -3", cmp("n", ">=", "-3", -3)),
        ("lr = 1e-3", cmp("lr", "=", "1e-3", 0.001)),
        ("alpha == 2", cmp("alpha", "=", "2", 2)),
        ("status = Failed", cmp("status", "=", "Failed")),
        ("flag != true", cmp("flag", "!=", "true", True)),
        ('beta = "a b"', cmp("beta", "=", "a b")),
        ("beta = '1'", cmp("beta", "=", "1")),  # quoted: text, not a number
        ('"my energy" <= 2', cmp("my energy", "<=", "2", 2)),
        ("--lr < 1", cmp("--lr", "<", "1", 1)),  # params_as_args names start with dashes
        ("params.a.b = x", cmp("params.a.b", "=", "x")),
        (r'note = "say \"hi\""', cmp("note", "=", 'say "hi"')),
        ("name = sweep_3", cmp("name", "=", "sweep_3")),
    ],
)
def test_a_comparison_reads_name_operator_and_typed_value(text, expected):
    assert parse(text) == expected


def test_and_binds_tighter_than_or_and_parentheses_group():
    a, b, c = cmp("a", "=", "1", 1), cmp("b", "=", "2", 2), cmp("c", "=", "3", 3)
    assert parse("a = 1 or b = 2 and c = 3") == Or((a, And((b, c))))
    assert parse("(a = 1 or b = 2) and c = 3") == And((Or((a, b)), c))
    assert parse("a = 1 AND b = 2 And c = 3") == And((a, b, c))
    assert comparisons(parse("(a = 1 or b = 2) and c = 3")) == [a, b, c]


def test_keywords_and_operators_can_be_names_or_values_when_quoted():
    assert parse('"and" = "or"') == cmp("and", "=", "or")
    assert parse("x = 'a=b'") == cmp("x", "=", "a=b")


@pytest.mark.parametrize(
    "text, message",
    [
        ("energy", "Expected an operator"),
        ("energy >", "Expected a value after 'energy' >, got the end"),
        ("> 1", "Expected a name, got '>'"),
        ("energy > 0.1 and", "Expected a name after 'and', got the end"),
        ("energy > 0.1 alpha < 2", "Unexpected 'alpha' at character 14 (join comparisons with 'and' or 'or')"),
        ("energy ! 1", "'!' at character 8 must be followed by '='"),
        ("(a = 1", "Expected ')' to close the '(' at character 1"),
        ("a = 1)", "Unexpected ')' at character 6"),
        ('beta = "open', "has no closing \""),
        ("a = = 1", "Expected a value after 'a' =, got '='"),
        ("and = 1", "Expected a name, got 'and'"),
        ("a = 1 or or b = 2", "Expected a name after 'or', got 'or'"),
        ("a\x00 = 1", "NUL"),
    ],
)
def test_bad_expressions_say_what_is_wrong_and_where(text, message):
    with pytest.raises(FilterError) as error:
        parse(text)
    assert message in str(error.value)


def test_expressions_are_bounded():
    with pytest.raises(FilterError, match="too long"):
        parse("a = 1 and " * (MAX_LENGTH // 10) + "a = 1")
    with pytest.raises(FilterError, match="Too many comparisons"):
        parse(" and ".join(["a = 1"] * (MAX_COMPARISONS + 1)))
    assert len(comparisons(parse(" and ".join(["a = 1"] * MAX_COMPARISONS)))) == MAX_COMPARISONS
    with pytest.raises(FilterError, match="Too many parentheses"):
        parse("(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1))
    assert parse("(" * MAX_DEPTH + "a = 1" + ")" * MAX_DEPTH) == cmp("a", "=", "1", 1)


def test_nothing_is_evaluated():
    with pytest.raises(FilterError, match="Expected an operator"):
        parse("__import__('os').system('true') = 1")
    assert parse("x = __import__") == cmp("x", "=", "__import__")


@pytest.mark.parametrize("text", ["alpha", "a b", 'say "hi"', "and", "OR", "x=1", "(", "back\\slash", "", "-0.5", "é"])
def test_quote_reads_back_as_one_name_or_value(text):
    node = parse(f"{quote(text)} = {quote(text)}")
    assert (node.name, node.value.text) == (text, text)
