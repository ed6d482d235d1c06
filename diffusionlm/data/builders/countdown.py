"""Countdown: reach a target from 3 (or 4) numbers with + - * /, each number used once.

Each example is built backwards from a random expression tree over the numbers, so the
target is reachable by construction, and carries that reference expression. Intermediate
results are kept positive integers (exact division only), as in the Countdown game.
Expressions are checked by `evaluate` below, a small exact-arithmetic parser (never
Python's eval()); the RL rewards reuse it.
"""
from __future__ import annotations

import collections
import dataclasses
import random
import re
from fractions import Fraction

import numpy as np
import tensorflow_datasets as tfds

from diffusionlm.data import builders

_TOKEN = re.compile(r"\s*(\d+|[-+*/()])")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _tokens(expr: str) -> list[str]:
  tokens, pos = [], 0
  expr = expr.rstrip()
  while pos < len(expr):
    match = _TOKEN.match(expr, pos)
    if not match:
      raise ValueError(f"expression {expr!r}: unexpected character {expr[pos:].lstrip()[0]!r}")
    tokens.append(match.group(1))
    pos = match.end()
  return tokens


def evaluate(expr: str) -> Fraction:
  """Exact value of an arithmetic expression of integers, + - * / and parentheses.

  Grammar: expr = term (("+"|"-") term)*; term = factor (("*"|"/") factor)*;
  factor = INTEGER | "(" expr ")". Raises ValueError on bad syntax or division by zero.
  """
  tokens = _tokens(expr)
  pos = 0

  def peek():
    return tokens[pos] if pos < len(tokens) else None

  def take():
    nonlocal pos
    if pos >= len(tokens):
      raise ValueError(f"expression {expr!r} ends early")
    pos += 1
    return tokens[pos - 1]

  def factor() -> Fraction:
    token = take()
    if token == "(":
      value = expression()
      if take() != ")":
        raise ValueError(f"expression {expr!r}: missing ')'")
      return value
    if token.isdigit():
      return Fraction(int(token))
    raise ValueError(f"expression {expr!r}: unexpected {token!r}")

  def term() -> Fraction:
    value = factor()
    while peek() in ("*", "/"):
      op, right = take(), factor()
      if op == "/" and right == 0:
        raise ValueError(f"expression {expr!r} divides by zero")
      value = value * right if op == "*" else value / right
    return value

  def expression() -> Fraction:
    value = term()
    while peek() in ("+", "-"):
      op, right = take(), term()
      value = value + right if op == "+" else value - right
    return value

  value = expression()
  if pos != len(tokens):
    raise ValueError(f"expression {expr!r}: unexpected {tokens[pos]!r}")
  return value


def expression_numbers(expr: str) -> list[int]:
  """The integers written in `expr`, in order."""
  return [int(t) for t in _tokens(expr) if t.isdigit()]


def is_solution(expr: str, numbers, target: int) -> bool:
  """True iff `expr` uses exactly `numbers` (each once) and evaluates to `target`."""
  try:
    value = evaluate(expr)
  except ValueError:
    return False
  used = collections.Counter(expression_numbers(expr))
  return used == collections.Counter(int(n) for n in numbers) and value == target


def _apply(op: str, a: int, b: int) -> int | None:
  """a op b if it is a positive integer, else None."""
  if op == "+":
    return a + b
  if op == "-":
    return a - b if a > b else None
  if op == "*":
    return a * b
  return a // b if a % b == 0 else None


def _build(rng, numbers: list[int]):
  """A random tree over `numbers`: (value, text, precedence, steps) or None."""
  if len(numbers) == 1:
    return numbers[0], str(numbers[0]), 3, []
  split = rng.randrange(1, len(numbers))
  left, right = _build(rng, numbers[:split]), _build(rng, numbers[split:])
  if left is None or right is None:
    return None
  op = rng.choice("+-*/")
  value = _apply(op, left[0], right[0])
  if value is None:
    return None
  prec = _PRECEDENCE[op]
  # Left operand needs brackets if it binds looser; right also if equal and op is - or /.
  left_text = f"({left[1]})" if left[2] < prec else left[1]
  right_text = (f"({right[1]})" if right[2] < prec or (right[2] == prec and op in "-/")
                else right[1])
  steps = left[3] + right[3] + [f"{left[0]}{op}{right[0]}={value}"]
  return value, left_text + op + right_text, prec, steps


def generate(seed: int, count: int, *, num_numbers: int = 3, max_number: int = 50,
             max_target: int = 200) -> list[dict]:
  """`count` distinct puzzles {"numbers", "target", "expression", "steps"}."""
  if num_numbers not in (3, 4):
    raise ValueError(f"countdown uses 3 or 4 numbers, got num_numbers={num_numbers}")
  rng = random.Random(seed)
  examples, seen = [], set()
  for _ in range(200 * count + 1000):
    if len(examples) == count:
      break
    numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
    built = _build(rng, rng.sample(numbers, num_numbers))
    if built is None or not 1 <= built[0] <= max_target:
      continue
    key = (tuple(sorted(numbers)), built[0])
    if key not in seen:
      seen.add(key)
      examples.append({"numbers": numbers, "target": built[0], "expression": built[1],
                       "steps": ", ".join(built[3])})
  if len(examples) < count:
    raise ValueError(f"could not find {count} distinct countdown puzzles")
  return examples


@dataclasses.dataclass
class CountdownConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_numbers: int = 3
  num_train: int = 50_000
  num_validation: int = 1000
  num_test: int = 1000
  max_number: int = 50
  max_target: int = 200


def make_config(*, seed: int = 0, num_numbers: int = 3, num_train: int = 0,
                num_validation: int = 1000, num_test: int = 1000, max_number: int = 50,
                max_target: int = 200) -> CountdownConfig:
  """A config named by its settings; num_train=0 means the default 50,000."""
  num_train = num_train or 50_000
  return builders.identity_config(
      CountdownConfig, prefix=f"k{num_numbers}-seed{seed}-n{num_train}", seed=seed,
      num_numbers=num_numbers, num_train=num_train, num_validation=num_validation,
      num_test=num_test, max_number=max_number, max_target=max_target)


class DlmCountdown(builders.LocalBuilder):
  """{"numbers": int32[k], "target", "expression": a reference solution, "steps"}."""
  FEATURES = {"numbers": tfds.features.Tensor(shape=(None,), dtype=np.int32),
              "target": tfds.features.Scalar(dtype=np.int32),
              "expression": tfds.features.Text(),
              "steps": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    examples = generate(c.seed, c.num_test + c.num_validation + c.num_train,
                        num_numbers=c.num_numbers, max_number=c.max_number,
                        max_target=c.max_target)
    splits = builders.deal_splits(examples, num_test=c.num_test,
                                  num_validation=c.num_validation, num_train=c.num_train)
    return {name: self._generate_examples(part) for name, part in splits.items()}

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      yield i, {**ex, "numbers": np.asarray(ex["numbers"], np.int32)}
