"""The expressions of Galaxy's resubmit rules (`condition: "memory_limit_reached and attempt < 3"`,
`delay: "attempt * 30"`), parsed and evaluated by a small interpreter of our own.

An expression comes from a configuration file, but it is never handed to `eval`: it is
parsed into Python's syntax tree and only the nodes below are accepted (names from the
given set, numbers, booleans, `and`/`or`/`not`, comparisons, `+ - * / // %`, unary minus,
parentheses); anything else (a call, an attribute, a subscript, `**`, a lambda, a string) is
refused when the configuration loads, with what was found and where.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
MAX_LENGTH = 500


class ExpressionError(ValueError):
    """An expression that does not parse, or uses what is not allowed; the text says what."""


@dataclass(frozen=True)
class Expression:
    text: str
    _tree: ast.expr

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        return _evaluate(self._tree, names)


def parse(text: str, names: frozenset[str]) -> Expression:
    """A checked expression over `names`; ExpressionError naming what is wrong otherwise."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ExpressionError(f"must be an expression, not {type(text).__name__}")
    source = str(text).strip()
    if not source:
        raise ExpressionError("is empty")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"{source!r} does not parse: {exc.msg}") from None
    _check(tree, names, source)
    return Expression(source, tree)


def _check(node: ast.AST, names: frozenset[str], source: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, names, source)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        _check(node.operand, names, source)
    elif isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        _check(node.left, names, source)
        _check(node.right, names, source)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        _check(node.left, names, source)
        for comparator in node.comparators:
            _check(comparator, names, source)
    elif isinstance(node, ast.Name):
        if node.id not in names and node.id not in ("True", "False"):
            raise ExpressionError(f"{source!r}: unknown name {node.id!r} (known: {', '.join(sorted(names))})")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, (bool, int, float)):
            raise ExpressionError(f"{source!r}: only numbers and true/false may be written, not {node.value!r}")
        if abs(node.value) > 10**12:
            raise ExpressionError(f"{source!r}: {node.value} is too large")
    else:
        raise ExpressionError(f"{source!r}: {type(node).__name__} is not allowed here (only names, numbers, "
                              "and/or/not, comparisons and + - * / // %)")


def _evaluate(node: ast.expr, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for value in node.values:
                result = _evaluate(value, names)
                if not result:
                    return result
            return result
        result = False
        for value in node.values:
            result = _evaluate(value, names)
            if result:
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, names)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except ZeroDivisionError:
            return 0
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, comparator in zip(node.ops, node.comparators):
            right = _evaluate(comparator, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Name):
        if node.id in ("True", "False"):
            return node.id == "True"
        return names[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    raise ExpressionError(f"{type(node).__name__} is not allowed")  # unreachable after _check
