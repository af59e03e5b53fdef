"""A safe arithmetic evaluator for the `calculator` tool: Python's AST restricted to numbers, + - * / // % **,
unary signs, parentheses and a few math functions and constants. No eval, no names beyond the table, no attributes.

Exponents are capped so `9**9**9` is an error, not a hung process.
"""
from __future__ import annotations

import ast
import math
import operator

from a1jax.envs.tools import ToolError, fmt

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
FUNCTIONS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "ln": math.log,
             "sin": math.sin, "cos": math.cos, "tan": math.tan, "abs": abs, "round": round, "min": min, "max": max}
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000
MAX_LENGTH = 2000


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression; raises ToolError with a readable reason."""
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"cannot parse expression {expression!r}: {e.msg}") from None
    try:
        value = complex(_eval(tree.body))
        value = value.real if value.imag == 0 else value
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as e:
        raise ToolError(f"cannot evaluate {expression!r}: {e}") from None
    if isinstance(value, complex) or not math.isfinite(value):
        raise ToolError(f"{expression!r} has no finite real value")
    return value


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is larger than {MAX_EXPONENT}")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords):
        return FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
    what = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    raise ToolError(f"unsupported syntax {what!r}: only numbers, + - * / // % **, parentheses, "
                    f"{', '.join(sorted(CONSTANTS))} and {', '.join(sorted(FUNCTIONS))}(...) are allowed")


def calculator(expression: str) -> str:
    """The tool: the value printed with 12 significant digits."""
    return fmt(evaluate(expression))
