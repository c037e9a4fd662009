"""The Mapnik filter subset of class configs: tokenizer, parser and evaluator.

Supported (everything else is an error, never silently ignored)::

    [key]                         a tag (``[mapnik::geometry_type]`` is the geometry
                                  type: 1 point, 2 line, 3 polygon, 4 collection)
    'text'  "text"  12  -3.5      string and number literals; ``null``, ``true``, ``false``
    = != < <= > >=                comparisons (Mapnik's ``eq``, ``neq``, ``<>``,
                                  ``lt``, ``le``, ``gt``, ``ge`` are accepted too)
    and  or  not                  (``&&``, ``||``, ``!`` too)
    ( ... )                       grouping
    [key].match('regex')          the whole value matches the regular expression

Semantics follow Mapnik: a missing tag is ``null``; ``=`` and ``!=`` between a
value and ``null`` compare presence; ``<``-style comparisons are numeric when
both sides read as numbers, else text, and false with ``null``; ``.match``
on a missing tag is false. A bare ``[key]`` is true when the tag is present
and not empty, ``"no"``, ``"false"`` or ``"0"``.

An empty filter (or none) selects every feature.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from satseg_plugin.inference.errors import ConfigError

#: A compiled filter: ``tags -> bool``; ``tags`` maps keys to str/int/float values.
Predicate = Callable[[Mapping[str, object]], bool]

GEOMETRY_TYPE_KEY = "mapnik::geometry_type"


class FilterError(ConfigError):
    """A class filter cannot be parsed or uses a construct this builder lacks."""


@dataclass(frozen=True)
class Token:
    kind: str  # "field", "string", "number", "op", "lparen", "rparen", "word", "dot", "end", "bad"
    value: str
    pos: int  # 0-based offset in the filter text


_OPS = {
    "=": "=",
    "==": "=",
    "!=": "!=",
    "<>": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "&&": "and",
    "||": "or",
    "!": "not",
}
_WORD_OPS = {
    "and": "and",
    "or": "or",
    "not": "not",
    "eq": "=",
    "is": "=",
    "neq": "!=",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
}
_ARITHMETIC = set("+-*/%")
_NUMBER_RE = re.compile(r"\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fail(cls: str, text: str, pos: int, what: str) -> FilterError:
    return FilterError(f"class {cls!r}: bad filter at position {pos + 1}: {what} (filter: {text})")


def _negative(text: str, i: int, tokens: list[Token]) -> bool:
    """A '-' that starts a number literal (after an operator, '(' or at the start)."""
    if text[i] != "-" or not _NUMBER_RE.match(text, i + 1):
        return False
    return not tokens or tokens[-1].kind in ("op", "lparen", "comma")


def tokenize(text: str, cls: str = "?") -> list[Token]:
    """Split ``text`` into tokens; raise ``FilterError`` naming ``cls`` and the position."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "[":
            j = text.find("]", i + 1)
            if j < 0:
                raise _fail(cls, text, i, "'[' without its ']'")
            key = text[i + 1 : j].strip()
            if not key:
                raise _fail(cls, text, i, "empty tag name '[]'")
            tokens.append(Token("field", key, i))
            i = j + 1
        elif c in "'\"":
            j, chars = i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                raise _fail(cls, text, i, "string without its closing quote")
            tokens.append(Token("string", "".join(chars), i))
            i = j + 1
        elif c == "(":
            tokens.append(Token("lparen", c, i))
            i += 1
        elif c == ")":
            tokens.append(Token("rparen", c, i))
            i += 1
        elif c == ",":
            tokens.append(Token("comma", c, i))
            i += 1
        elif c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()) or _negative(text, i, tokens):
            m = _NUMBER_RE.match(text, i + 1 if c == "-" else i)
            assert m is not None
            tokens.append(Token("number", text[i : m.end()], i))
            i = m.end()
        elif c == ".":
            tokens.append(Token("dot", c, i))
            i += 1
        elif text.startswith(("<=", ">=", "!=", "<>", "==", "&&", "||"), i):
            tokens.append(Token("op", _OPS[text[i : i + 2]], i))
            i += 2
        elif c in "=<>!":
            tokens.append(Token("op", _OPS[c], i))
            i += 1
        elif c in _ARITHMETIC:
            raise _fail(cls, text, i, f"arithmetic ({c!r}) is not supported in filters")
        elif _WORD_RE.match(text, i):
            m = _WORD_RE.match(text, i)
            assert m is not None
            word = m.group(0)
            low = word.lower()
            if low in _WORD_OPS:
                tokens.append(Token("op", _WORD_OPS[low], i))
            else:
                tokens.append(Token("word", word, i))
            i = m.end()
        else:
            raise _fail(cls, text, i, f"unexpected character {c!r}")
    tokens.append(Token("end", "", n))
    return tokens


# The AST: small tuples, compiled to closures below.
#   ("field", key) ("const", value) ("cmp", op, left, right) ("match", key, regex)
#   ("and", a, b) ("or", a, b) ("not", a) ("truthy", key)


class _Parser:
    def __init__(self, text: str, cls: str) -> None:
        self.text, self.cls = text, cls
        self.tokens = tokenize(text, cls)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, tok: Token, what: str) -> FilterError:
        return _fail(self.cls, self.text, tok.pos, what)

    def parse(self) -> tuple:
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail(tok, f"unexpected {_describe(tok)} (expected 'and', 'or' or the end)")
        return node

    def parse_or(self) -> tuple:
        node = self.parse_and()
        while self.peek().kind == "op" and self.peek().value == "or":
            self.take()
            node = ("or", node, self.parse_and())
        return node

    def parse_and(self) -> tuple:
        node = self.parse_not()
        while self.peek().kind == "op" and self.peek().value == "and":
            self.take()
            node = ("and", node, self.parse_not())
        return node

    def parse_not(self) -> tuple:
        tok = self.peek()
        if tok.kind == "op" and tok.value == "not":
            self.take()
            return ("not", self.parse_not())
        return self.parse_comparison()

    def parse_comparison(self) -> tuple:
        left = self.parse_operand()
        tok = self.peek()
        if tok.kind == "op" and tok.value in ("=", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.parse_operand()
            if left[0] == "const" and right[0] == "const":
                raise self.fail(tok, "a comparison needs a [tag] on one side")
            return ("cmp", tok.value, left, right)
        if left[0] == "field":
            return ("truthy", left[1])
        if left[0] == "const" and left[1] is not None and isinstance(left[1], bool):
            return left
        if left[0] in ("match", "and", "or", "not", "cmp", "truthy"):
            return left
        raise self.fail(tok, f"expected a comparison after the value, found {_describe(tok)}")

    def parse_operand(self) -> tuple:
        tok = self.take()
        if tok.kind == "lparen":
            node = self.parse_or()
            close = self.take()
            if close.kind != "rparen":
                raise self.fail(close, f"expected ')' to close the '(' at position {tok.pos + 1}")
            return node
        if tok.kind == "field":
            if self.peek().kind == "dot":
                return self.parse_method(tok)
            return ("field", tok.value)
        if tok.kind == "string":
            return ("const", tok.value)
        if tok.kind == "number":
            v = float(tok.value)
            return ("const", int(v) if v.is_integer() and "." not in tok.value else v)
        if tok.kind == "word":
            low = tok.value.lower()
            if low in ("null", "true", "false"):
                return ("const", {"null": None, "true": True, "false": False}[low])
            geom_words = {"point": 1, "linestring": 2, "polygon": 3, "collection": 4}
            if low in geom_words:
                return ("const", geom_words[low])
            if self.peek().kind == "lparen":
                raise self.fail(tok, f"function {tok.value}() is not supported in filters")
            raise self.fail(tok, f"unknown word {tok.value!r} (tags are written [{tok.value}])")
        if tok.kind == "end":
            raise self.fail(tok, "the filter ends where a value was expected")
        raise self.fail(tok, f"expected a value, found {_describe(tok)}")

    def parse_method(self, field: Token) -> tuple:
        dot = self.take()
        name = self.peek()
        if name.kind != "word":
            raise self.fail(dot, "expected a method name after '.'")
        self.take()
        if name.value != "match":
            raise self.fail(name, f"'.{name.value}' is not supported (only .match('regex'))")
        lp, arg, rp = self.take(), self.take(), self.take()
        if lp.kind != "lparen":
            raise self.fail(lp, "expected '(' after .match")
        if arg.kind != "string":
            raise self.fail(arg, "expected a quoted regular expression in .match(...)")
        if rp.kind != "rparen":
            raise self.fail(rp, "expected ')' after the regular expression")
        try:
            regex = re.compile(arg.value)
        except re.error as exc:
            raise self.fail(arg, f"bad regular expression {arg.value!r}: {exc}") from None
        return ("match", field.value, regex)


def _describe(tok: Token) -> str:
    if tok.kind == "end":
        return "the end of the filter"
    if tok.kind == "string":
        return f"the string {tok.value!r}"
    return repr(tok.value)


def parse(text: str | None, cls: str = "?") -> tuple:
    """Parse filter ``text`` to an AST; ``None`` or blank text selects everything."""
    if text is None or not text.strip():
        return ("const", True)
    return _Parser(text, cls).parse()


def _as_number(v: object) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        return None


def _equal(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return na == nb
    return str(a) == str(b)


def _order(op: str, a: object, b: object) -> bool:
    if a is None or b is None:
        return False
    na, nb = _as_number(a), _as_number(b)
    x, y = (na, nb) if na is not None and nb is not None else (str(a), str(b))
    if op == "<":
        return x < y  # type: ignore[operator]
    if op == "<=":
        return x <= y  # type: ignore[operator]
    if op == ">":
        return x > y  # type: ignore[operator]
    return x >= y  # type: ignore[operator]


def _truthy(v: object) -> bool:
    if v is None:
        return False
    if isinstance(v, str):
        return v not in ("", "no", "false", "0")
    return bool(v)


def _value(node: tuple) -> Callable[[Mapping[str, object]], object]:
    if node[0] == "field":
        key = node[1]
        return lambda tags: tags.get(key)
    if node[0] == "const":
        value = node[1]
        return lambda tags: value
    inner = compile_ast(node)  # a boolean sub-expression used as a value
    return lambda tags: inner(tags)


def compile_ast(node: tuple) -> Predicate:
    """Turn an AST from ``parse`` into a predicate over a tag mapping."""
    kind = node[0]
    if kind == "const":
        value = _truthy(node[1])
        return lambda tags: value
    if kind == "truthy":
        key = node[1]
        return lambda tags: _truthy(tags.get(key))
    if kind == "match":
        key, regex = node[1], node[2]

        def match(tags: Mapping[str, object]) -> bool:
            v = tags.get(key)
            return v is not None and regex.fullmatch(str(v)) is not None

        return match
    if kind == "cmp":
        op, left, right = node[1], _value(node[2]), _value(node[3])
        if op == "=":
            return lambda tags: _equal(left(tags), right(tags))
        if op == "!=":
            return lambda tags: not _equal(left(tags), right(tags))
        return lambda tags: _order(op, left(tags), right(tags))
    if kind == "and":
        a, b = compile_ast(node[1]), compile_ast(node[2])
        return lambda tags: a(tags) and b(tags)
    if kind == "or":
        a, b = compile_ast(node[1]), compile_ast(node[2])
        return lambda tags: a(tags) or b(tags)
    if kind == "not":
        a = compile_ast(node[1])
        return lambda tags: not a(tags)
    if kind == "field":
        key = node[1]
        return lambda tags: _truthy(tags.get(key))
    raise ValueError(f"unknown filter node {kind!r}")


def compile_filter(text: str | None, cls: str = "?") -> Predicate:
    """Parse and compile ``text``; the predicate takes a feature's tags.

    Raises ``FilterError`` (a ``ConfigError``) naming class ``cls`` and the
    1-based position of the problem.
    """
    return compile_ast(parse(text, cls))


def referenced_keys(node: tuple) -> set[str]:
    """The tag keys an AST reads (for messages and quick checks)."""
    kind = node[0]
    if kind in ("field", "truthy", "match"):
        return {node[1]}
    if kind == "cmp":
        return referenced_keys(node[2]) | referenced_keys(node[3])
    if kind in ("and", "or"):
        return referenced_keys(node[1]) | referenced_keys(node[2])
    if kind == "not":
        return referenced_keys(node[1])
    return set()
