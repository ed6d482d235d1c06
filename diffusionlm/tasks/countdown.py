"""Countdown: reach a target from 3 (or 4) numbers with + - * /, each number used once.

Data: each example is built backwards from a random expression tree over the numbers, so
the target is reachable by construction, and carries that reference expression and its
steps. Intermediate results are kept positive integers (exact division only), as in the
Countdown game. data.dataset="countdown:4" asks for 4 numbers ("countdown" = "countdown:3").

Prompt: "Use 3 4 5 to make 17". Response: the steps as reasoning, the expression as answer.

Reward (TinyZero / d1): countdown 1.0 when the answer expression equals the target and uses
exactly the given numbers, each as often as given; 0.1 for a well-formed expression that
is wrong; 0.0 when there is none. Expressions are read by `arithmetic.parse_arithmetic`,
never executed. Correct: reward 1.0.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
import dataclasses
import functools
import random
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from diffusionlm.data import builders
from diffusionlm.tasks import answers, arithmetic, layout, task

COUNTDOWN_CORRECT_REWARD = 1.0
COUNTDOWN_FORMAT_REWARD = 0.1

# ---- Data ----------------------------------------------------------------------------------

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


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


# ---- Reward --------------------------------------------------------------------------------

_EXPRESSION_CHARS_RE = re.compile(r"[0-9 \t.+\-*/()=]+")
_OPERATOR_SPELLINGS = {"\u00d7": "*", "\u00f7": "/", "\u2212": "-", "\\times": "*",
                       "\\cdot": "*", "\\div": "/"}


def countdown_expression(completion: str) -> str | None:
  """The answer expression: the last <answer> block, else the last line that looks like
  arithmetic (digits, + - * / ( ) . = and spaces, with an operator). ×, ÷, −, \\times,
  \\cdot and \\div are read as * / -. An "= ..." tail ("3*8 = 24") is dropped."""
  for spelling, op in _OPERATOR_SPELLINGS.items():
    completion = completion.replace(spelling, op)
  expr = layout.answer_block(completion)
  if expr is None:
    lines = [line for line in completion.splitlines()
             if _EXPRESSION_CHARS_RE.fullmatch(line) and re.search(r"[0-9]", line)
             and re.search(r"[-+*/]", line)]
    if not lines:
      return None
    expr = lines[-1]
  return expr.split("=")[0].strip()


def countdown_reward(completion: str, numbers: Iterable[Any], target: Any) -> float:
  """Countdown reward (TinyZero / d1 convention): COUNTDOWN_CORRECT_REWARD (1.0) when the
  answer expression equals `target` and uses exactly the given numbers, each as often as
  given (all of them must be used); COUNTDOWN_FORMAT_REWARD (0.1) for a well-formed
  expression that is wrong or uses other numbers; 0.0 when there is none or it is malformed
  (including division by zero)."""
  given = Counter(answers.field_fraction(n, "numbers") for n in numbers)
  if not given:
    raise ValueError("example field 'numbers' is empty")
  target_value = answers.field_fraction(target, "target")
  expr = countdown_expression(completion)
  if expr is None:
    return 0.0
  try:
    value = arithmetic.parse_arithmetic(expr)
  except ValueError:
    return 0.0
  if value == target_value and Counter(arithmetic.numbers_in(expr)) == given:
    return COUNTDOWN_CORRECT_REWARD
  return COUNTDOWN_FORMAT_REWARD


# ---- The task ------------------------------------------------------------------------------


def make_builder(data_config):
  """The DlmCountdown builder of data.dataset's numbers ("countdown:4": 4, else 3),
  data.task_seed and data.num_examples (train puzzles)."""
  return functools.partial(DlmCountdown, config=make_config(
      seed=int(data_config.get("task_seed", 0)),
      num_numbers=4 if data_config.dataset.endswith(":4") else 3,
      num_train=int(data_config.num_examples)))


TASK = task.Task(
    name="countdown",
    question=lambda ex: f"Use {' '.join(map(str, ex['numbers']))} to make {ex['target']}",
    reasoning=lambda ex: ex["steps"],
    answer=lambda ex: ex["expression"],
    reward_terms=(task.RewardTerm("countdown", countdown_reward, ("numbers", "target"),
                                  COUNTDOWN_CORRECT_REWARD),),
    is_correct=lambda completion, ex: countdown_reward(
        completion, ex["numbers"], ex["target"]) == COUNTDOWN_CORRECT_REWARD,
    builder=make_builder,
    variants=("3", "4"),
)
