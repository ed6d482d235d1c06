"""Exact arithmetic without eval: a small recursive-descent parser over `fractions.Fraction`.

Model output is parsed, never executed (no eval/exec/compile). The Countdown task scores
its answers with it and checks its generated puzzles with it.
"""
from fractions import Fraction
import re

MAX_EXPRESSION_CHARS = 200
MAX_NESTING_DEPTH = 50

_TOKEN_RE = re.compile(r"\s*(?:(?P<number>[0-9]+(?:\.[0-9]+)?)|(?P<op>[-+*/()]))")


def _tokens(expr: str) -> list[Fraction | str]:
  """Numbers (as Fractions) and the characters + - * / ( ); ValueError on anything else."""
  if len(expr) > MAX_EXPRESSION_CHARS:
    raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
  tokens, pos = [], 0
  while pos < len(expr):
    match = _TOKEN_RE.match(expr, pos)
    if match is None:
      if expr[pos:].isspace():
        break
      raise ValueError(f"unexpected character {expr[pos]!r} at position {pos} of {expr!r}")
    tokens.append(Fraction(match["number"]) if match["number"] else match["op"])
    pos = match.end()
  return tokens


class _Parser:
  """sum := product (("+" | "-") product)*;  product := unary (("*" | "/") unary)*;
  unary := "-" unary | atom;  atom := number | "(" sum ")".

  Depth counts open parentheses plus stacked unary minuses; above MAX_NESTING_DEPTH the
  expression is rejected.
  """

  def __init__(self, tokens: list[Fraction | str]):
    self._tokens, self._pos, self._depth = tokens, 0, 0

  def parse(self) -> Fraction:
    if not self._tokens:
      raise ValueError("empty expression")
    value = self._sum()
    if self._pos != len(self._tokens):
      raise ValueError(f"unexpected {self._tokens[self._pos]!r} after a complete expression")
    return value

  def _peek(self) -> Fraction | str | None:
    return self._tokens[self._pos] if self._pos < len(self._tokens) else None

  def _take(self) -> Fraction | str:
    token = self._peek()
    if token is None:
      raise ValueError("expression ends early")
    self._pos += 1
    return token

  def _enter(self) -> None:
    self._depth += 1
    if self._depth > MAX_NESTING_DEPTH:
      raise ValueError(f"expression nested deeper than {MAX_NESTING_DEPTH}")

  def _sum(self) -> Fraction:
    value = self._product()
    while self._peek() in ("+", "-"):
      op, rhs = self._take(), self._product()
      value = value + rhs if op == "+" else value - rhs
    return value

  def _product(self) -> Fraction:
    value = self._unary()
    while self._peek() in ("*", "/"):
      op, rhs = self._take(), self._unary()
      if op == "*":
        value *= rhs
      elif rhs == 0:
        raise ValueError("division by zero")
      else:
        value /= rhs
    return value

  def _unary(self) -> Fraction:
    if self._peek() != "-":
      return self._atom()
    self._take()
    self._enter()
    value = -self._unary()
    self._depth -= 1
    return value

  def _atom(self) -> Fraction:
    token = self._take()
    if isinstance(token, Fraction):
      return token
    if token != "(":
      raise ValueError(f"expected a number or '(', got {token!r}")
    self._enter()
    value = self._sum()
    if self._take() != ")":
      raise ValueError("expected ')'")
    self._depth -= 1
    return value


def parse_arithmetic(expr: str) -> Fraction:
  """Exact value of an arithmetic expression: + - * /, parentheses, unary minus, integer
  and decimal literals. Raises ValueError when malformed, on division by zero, above
  MAX_EXPRESSION_CHARS characters or above MAX_NESTING_DEPTH nesting."""
  return _Parser(_tokens(expr)).parse()


def numbers_in(expr: str) -> list[Fraction]:
  """The number literals of `expr` in order, as Fractions (a unary minus is not part of a
  literal: "-3" gives [3]). Raises ValueError on characters the parser does not accept."""
  return [token for token in _tokens(expr) if isinstance(token, Fraction)]

