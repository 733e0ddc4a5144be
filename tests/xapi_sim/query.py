"""<class>.get_all_records_where(expr): xapi's small filter language.

Grammar from ocaml/database/db_filter_lex.mll and db_filter_parse.mly:
`field "name" = "literal"`, `and`, `or` (same precedence, left to right), `not`,
`true`, `false`, parentheses; string literals cannot contain a double quote. A
bad expression raises Db_filter.Expression_error, which ocaml/xapi/exnHelper.ml
maps to INVALID_VALUE [expr; exception]. Field names are database column names,
where a namespace separator is "__" (name__label); plain API names are accepted
too. Values compare as their wire text (true/false, decimal ints, enum names).
"""

from __future__ import annotations

import re
from typing import Any

from .engine import Call
from .errors import XapiError
from .registry import api
from .schema import LISTABLE

_TOKEN = re.compile(r'\s*(?:(=)|(\()|(\))|"([^"]*)"|(true|false|field|and|or|not))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError("Stdlib.Parsing.Parse_error")
        eq, lpar, rpar, literal, word = match.groups()
        if literal is not None:
            out.append(("lit", literal))
        else:
            out.append(("sym", eq or lpar or rpar or word))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str, record: dict[str, Any]) -> None:
        self.tokens = _tokens(text)
        self.record = record

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[0] if self.tokens else None

    def take(self) -> tuple[str, str]:
        if not self.tokens:
            raise ValueError("Stdlib.Parsing.Parse_error")
        return self.tokens.pop(0)

    def expr(self) -> bool:
        value = self.unary()
        while self.peek() in (("sym", "and"), ("sym", "or")):
            op = self.take()[1]
            right = self.unary()
            value = (value and right) if op == "and" else (value or right)
        return value

    def unary(self) -> bool:
        token = self.peek()
        if token == ("sym", "not"):
            self.take()
            return not self.unary()
        if token == ("sym", "("):
            self.take()
            value = self.expr()
            if self.take() != ("sym", ")"):
                raise ValueError("Stdlib.Parsing.Parse_error")
            return value
        if token in (("sym", "true"), ("sym", "false")):
            return self.take()[1] == "true"
        left = self.value()
        if self.take() != ("sym", "="):
            raise ValueError("Stdlib.Parsing.Parse_error")
        return left == self.value()

    def value(self) -> str:
        kind, text = self.take()
        if kind == "lit":
            return text
        if text != "field":
            raise ValueError("Stdlib.Parsing.Parse_error")
        kind, name = self.take()
        if kind != "lit":
            raise ValueError("Stdlib.Parsing.Parse_error")
        value = self.record.get(name, self.record.get(name.replace("__", "_")))
        if isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)


def matches(expr: str, record: dict[str, Any]) -> bool:
    try:
        parser = _Parser(expr, record)
        result = parser.expr()
        if parser.tokens:
            raise ValueError("Stdlib.Parsing.Parse_error")
        return result
    except ValueError as error:
        raise XapiError("INVALID_VALUE", expr, str(error)) from None


def _register(cls: str) -> None:
    @api(f"{cls}.get_all_records_where", "s", async_ok=False)
    def where(call: Call, expr: str) -> dict[str, Any]:
        out = {}
        for ref in list(call.store.all(cls)):
            record = call.store.render(cls, ref)
            if matches(expr, record):
                out[ref] = record
        return out


for _cls in LISTABLE:
    _register(_cls)
