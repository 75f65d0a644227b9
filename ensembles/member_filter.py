"""The member table's filter: a small expression language, parsed without eval.

    energy > 0.1
    alpha <= 0.2 and energy > 0
    status = Failed or (beta = "a b" and returncode != 0)

A comparison is ``<name> <op> <value>``: a parameter, result or member field name,
one of ``= == != < <= > >=``, and a value: a number, a bare word, or a quoted text
("..." or '...', a backslash escapes the next character). Comparisons join with
``and`` (binding tighter) and ``or``, grouped by parentheses. A name that is not a
plain word (a space, an operator, a keyword) is quoted too: ``"my energy" > 1``.

Pure, no Django: ``parse`` gives a tree of Comparison / And / Or that the
selectors translate to a query, or raises FilterError saying what is wrong where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from .values import infer_type

MAX_LENGTH = 1000
MAX_COMPARISONS = 20
MAX_DEPTH = 10  # parentheses inside parentheses
OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
KEYWORDS = ("and", "or")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|<=|>=|=|<|>|!)
      | (?P<paren>[()])
      | (?P<quote>["'])
      | (?P<word>[^\s()"'=!<>]+)
    )""",
    re.VERBOSE,
)
_PLAIN_WORD = re.compile(r"[^\s()\"'=!<>\\]+")


class FilterError(ValueError):
    """A filter that cannot be used, with a message for the person who typed it."""


@dataclass(frozen=True)
class Literal:
    text: str  # as typed, without its quotes
    value: int | float | bool | str  # a bare word's inferred type; quoted text stays text

    @property
    def number(self) -> int | float | None:
        return self.value if isinstance(self.value, (int, float)) and not isinstance(self.value, bool) else None


@dataclass(frozen=True)
class Comparison:
    name: str
    op: str  # one of OPERATORS ("==" is read as "=")
    value: Literal


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


Node = Union[Comparison, And, Or]


@dataclass(frozen=True)
class _Token:
    kind: str  # op, (, ), text (quoted), word, and, or, end
    text: str
    at: int  # 0-based position in the expression

    def described(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text) if self.kind != "text" else f'"{self.text}"'


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """The text of the quoted string opening at ``start``, and the position after it."""
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif char == quote:
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    raise FilterError(f"The text starting at character {start + 1} has no closing {quote}.")


def _tokens(text: str) -> list[_Token]:
    tokens, i = [], 0
    while True:
        match = _TOKEN.match(text, i)
        if match is None:  # only blanks are left
            tokens.append(_Token("end", "", len(text)))
            return tokens
        at = match.start(match.lastgroup)
        if match.lastgroup == "quote":
            value, i = _read_quoted(text, at)
            tokens.append(_Token("text", value, at))
            continue
        i = match.end()
        value = match.group(match.lastgroup)
        if match.lastgroup == "op":
            if value == "!":
                raise FilterError(f"'!' at character {at + 1} must be followed by '=' (!=).")
            tokens.append(_Token("op", "=" if value == "==" else value, at))
        elif match.lastgroup == "paren":
            tokens.append(_Token(value, value, at))
        elif value.lower() in KEYWORDS:
            tokens.append(_Token(value.lower(), value, at))
        else:
            tokens.append(_Token("word", value, at))


class _Parser:
    def __init__(self, tokens: list[_Token]):
        self.tokens, self.i, self.comparisons = tokens, 0, 0

    @property
    def next(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def either(self, depth: int) -> Node:
        parts = [self.both(depth)]
        while self.next.kind == "or":
            self.take()
            parts.append(self.both(depth))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def both(self, depth: int) -> Node:
        parts = [self.operand(depth)]
        while self.next.kind == "and":
            self.take()
            parts.append(self.operand(depth))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def operand(self, depth: int) -> Node:
        token = self.take()
        if token.kind == "(":
            if depth >= MAX_DEPTH:
                raise FilterError(f"Too many parentheses inside each other (at most {MAX_DEPTH}).")
            node = self.either(depth + 1)
            closing = self.take()
            if closing.kind != ")":
                raise FilterError(f"Expected ')' to close the '(' at character {token.at + 1}, got {closing.described()}.")
            return node
        if token.kind not in ("word", "text"):
            after = f" after {self.tokens[self.i - 2].described()}" if self.i >= 2 else ""
            raise FilterError(f"Expected a name{after}, got {token.described()}.")
        op = self.take()
        if op.kind != "op":
            raise FilterError(
                f"Expected an operator ({' '.join(OPERATORS)}) after {token.described()}, got {op.described()}."
            )
        value = self.take()
        if value.kind not in ("word", "text"):
            raise FilterError(f"Expected a value after {token.described()} {op.text}, got {value.described()}.")
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise FilterError(f"Too many comparisons (at most {MAX_COMPARISONS}).")
        literal = Literal(value.text, value.text if value.kind == "text" else infer_type(value.text))
        return Comparison(token.text, op.text, literal)


def parse(text: str) -> Node | None:
    """The expression as a tree, None when it is blank; FilterError when it is not valid."""
    if len(text) > MAX_LENGTH:
        raise FilterError(f"The filter is too long (at most {MAX_LENGTH} characters).")
    if "\x00" in text:  # no name or value holds one (and PostgreSQL refuses it in text)
        raise FilterError("The filter contains a NUL character.")
    parser = _Parser(_tokens(text))
    if parser.next.kind == "end":
        return None
    node = parser.either(0)
    rest = parser.next
    if rest.kind != "end":
        hint = " (join comparisons with 'and' or 'or')" if rest.kind in ("word", "text", "(") else ""
        raise FilterError(f"Unexpected {rest.described()} at character {rest.at + 1}{hint}.")
    return node


def comparisons(node: Node | None) -> list[Comparison]:
    """Every comparison of the tree, left to right."""
    if node is None:
        return []
    if isinstance(node, Comparison):
        return [node]
    return [c for part in node.parts for c in comparisons(part)]


def quote(text: str) -> str:
    """``text`` as one name or value of an expression: bare when it reads back the same."""
    if _PLAIN_WORD.fullmatch(text) and text.lower() not in KEYWORDS:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
