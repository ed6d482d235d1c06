"""Rule-based rewards for diffu-GRPO (Zhao et al. 2025, "d1: Scaling Reasoning in Diffusion
Large Language Models via Reinforcement Learning"; values follow d1's released rewards).

Every reward reads a completion string (plus the task's example fields) and returns a
float; none of them raises on any model output. Nothing here executes model output:
no eval/exec/compile and no computer-algebra parsing. Countdown arithmetic goes through
the small recursive-descent parser `parse_arithmetic` over exact `fractions.Fraction`s.

Completion layout (the SFT/RL data format):

  <reasoning>\\n ... \\n</reasoning>\\n<answer>\\n ... \\n</answer>

Reward terms per task (all bounded in [0, max]; the registry `REWARD_FUNCTIONS` lists them
with the example fields each one reads). As in d1, the format terms are used for GSM8K only;
countdown and sudoku have a single task reward and MATH a correctness term plus a
boxed-in-answer term.

  task       term             max   meaning
  gsm8k      xml_count        0.5   0.125 for each of the four tags present exactly once,
                                    minus 0.001 per character after "</answer>" (surrounding
                                    whitespace not counted; the penalty is capped at that
                                    tag's 0.125, where d1's is unbounded below)
             soft_format      0.5   "<reasoning>", "</reasoning>", then (after optional
                                    whitespace) "<answer>" and "</answer>", in that order,
                                    anywhere in the text (d1 anchors it at the start)
             strict_format    0.5   the whole completion is exactly the layout above (each
                                    tag once; only trailing whitespace may follow)
             integer_answer   0.5   the last <answer> block holds an integer ("-?[0-9]+")
             correctness      2.0   `gsm8k_correct` (d1 uses 2.0)
  math       correctness      2.0   `math_correct`
             boxed_in_answer  0.5   the last <answer> block contains a complete \\boxed{...}
  countdown  countdown        1.0   `countdown_reward`: 1.0 / 0.1 / 0.0
  sudoku     sudoku           1.0   `sudoku_reward`: share of empty cells filled correctly

Example fields: gsm8k and math read `answer`; countdown reads `numbers` and `target`; sudoku
reads `puzzle` and `solution`. Those fields are data, not model output: a malformed one
raises ValueError naming it.

Decisions: numbers compare exactly as Fractions and "50%" counts as 50 (GSM8K and MATH
write percentages bare); a countdown answer must use every given number exactly as often as
given (TinyZero / d1); a sudoku answer must hold one digit per cell.
"""
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
import dataclasses
from fractions import Fraction
import numbers as numbers_lib
import re
from typing import Any

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

XML_TAG_REWARD = 0.125
XML_TRAILING_PENALTY_PER_CHAR = 0.001
SOFT_FORMAT_REWARD = 0.5
STRICT_FORMAT_REWARD = 0.5
INTEGER_ANSWER_REWARD = 0.5
CORRECT_REWARD = 2.0
BOXED_IN_ANSWER_REWARD = 0.5
COUNTDOWN_CORRECT_REWARD = 1.0
COUNTDOWN_FORMAT_REWARD = 0.1

MAX_EXPRESSION_CHARS = 200
MAX_NESTING_DEPTH = 50


# ---- Locating the answer ------------------------------------------------------------------


def answer_block(text: str) -> str | None:
  """Stripped content of the last complete <answer>...</answer> block, or None.

  The block ends at the last "</answer>" and starts at the last "<answer>" before it.
  """
  end = text.rfind(ANSWER_CLOSE)
  if end < 0:
    return None
  start = text.rfind(ANSWER_OPEN, 0, end)
  if start < 0:
    return None
  return text[start + len(ANSWER_OPEN):end].strip()


_BOXED_RE = re.compile(r"\\boxed\s*\{")


def last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} whose braces close (nesting allowed), or None."""
  if "\\boxed" not in text:
    return None
  close_of, open_positions = {}, []
  for i, char in enumerate(text):
    if char == "{":
      open_positions.append(i)
    elif char == "}" and open_positions:
      close_of[open_positions.pop()] = i
  for match in reversed(list(_BOXED_RE.finditer(text))):
    brace = match.end() - 1
    if brace in close_of:
      return text[brace + 1:close_of[brace]].strip()
  return None


# ---- Numbers -----------------------------------------------------------------------------

# An unsigned decimal: "1,000" (thousands groups), "18", "3.5" or ".5".
_UNSIGNED = r"(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
_WHOLE_NUMBER_RE = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:\$\s*)?(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?\s*%?")
_LATEX_FRACTION_RE = re.compile(
    rf"(?P<sign>[-+]?)\s*\\[dt]?frac\s*\{{\s*(?P<num>{_UNSIGNED})\s*\}}"
    rf"\s*\{{\s*(?P<den>{_UNSIGNED})\s*\}}")
# A number inside running text; a minus sign counts only where it cannot be subtraction.
_NUMBER_IN_TEXT_RE = re.compile(
    rf"(?:(?P<sign>(?<![\w)\]}}])-)\s?)?\$?(?<![\w.])(?P<num>{_UNSIGNED})"
    rf"(?:/(?P<den>[0-9]+)(?!\.?[0-9]))?", re.ASCII)


def _fraction_from_match(match: re.Match) -> Fraction | None:
  """The matched number; None for a zero denominator or a literal too long for int()."""
  try:
    value = Fraction(match["num"].replace(",", ""))
    denominator = Fraction(match["den"].replace(",", "")) if match["den"] else Fraction(1)
  except ValueError:  # Python refuses int(str) above sys.get_int_max_str_digits() digits.
    return None
  if denominator == 0:
    return None
  value /= denominator
  return -value if match["sign"] == "-" else value


def parse_number(text: str) -> Fraction | None:
  """The number that makes up all of `text`, or None.

  Accepts "1,000", "1000.0", ".5", "-3", "$18" / "\\$18", "-$18", "3/4", "\\frac{3}{4}"
  (also \\dfrac, \\tfrac), spaces between those parts ("- $ 18", but "1 2" is no number),
  a trailing "." and a trailing "%" (or "\\%"). A percent sign is
  ignored, not divided by 100: GSM8K and MATH write percentage answers as the bare number
  ("50%" == "50").
  """
  s = text.replace("\u2212", "-").replace("\\$", "$").replace("\\%", "%").strip()
  s = s.rstrip(".").rstrip()
  match = _WHOLE_NUMBER_RE.fullmatch(s) or _LATEX_FRACTION_RE.fullmatch(s)
  return _fraction_from_match(match) if match else None


def last_number(text: str) -> Fraction | None:
  """The last number written in running text (see `parse_number` for the forms), or None."""
  matches = list(_NUMBER_IN_TEXT_RE.finditer(text.replace("\u2212", "-")))
  for match in reversed(matches):
    value = _fraction_from_match(match)
    if value is not None:
      return value
  return None


def _field_text(value: Any, name: str) -> str:
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  if not isinstance(value, str):
    raise ValueError(f"example field {name!r} must be a string, got {type(value).__name__}")
  return value


def _field_fraction(value: Any, name: str) -> Fraction:
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  try:
    if isinstance(value, str):
      return Fraction(value.strip())
    if isinstance(value, numbers_lib.Rational):
      return Fraction(value)
    return Fraction(float(value))
  except (TypeError, ValueError, OverflowError) as e:
    raise ValueError(f"example field {name!r} is not a number: {value!r}") from e


# ---- GSM8K -------------------------------------------------------------------------------

_NUMBER_AFTER_CUE = rf"[\s:*]*(?P<sign>-?)\s?\$?(?P<num>{_UNSIGNED})(?:/(?P<den>[0-9]+))?"
_ANSWER_CUES = tuple(re.compile(cue + _NUMBER_AFTER_CUE) for cue in (
    r"####",
    r"(?i:the\s+(?:final\s+)?answer\s+is)",
    r"(?m:^[ \t]*A[ \t]*:)",
))


def _gsm8k_number_in(text: str) -> Fraction | None:
  """Rules 2-6 of `extract_gsm8k_answer`, applied to `text`."""
  whole = parse_number(text)
  if whole is not None:
    return whole
  boxed = last_boxed(text)
  if boxed is not None:
    whole = parse_number(boxed)
    return whole if whole is not None else last_number(boxed)
  for cue in _ANSWER_CUES:
    matches = list(cue.finditer(text))
    if matches:
      return _fraction_from_match(matches[-1])
  return last_number(text)


def extract_gsm8k_answer(completion: str) -> Fraction | None:
  """The completion's final numeric answer, or None if it gives no number.

  Priority: (1) the last <answer>...</answer> block (its content is then read by the rules
  below; a block without a number means no answer); (2) the last complete \\boxed{...};
  (3) the last "#### N"; (4) the last "The answer is N"; (5) the last line "A: N";
  (6) the last number anywhere. A number spans the forms of `parse_number`; a text that is
  one number as a whole ("\\frac{3}{4}", "- $ 18") is read as that number first.
  """
  block = answer_block(completion)
  return _gsm8k_number_in(block if block is not None else completion)


def gsm8k_gold(answer: str) -> Fraction:
  """The reference number: the raw GSM8K answer field ("... #### N") or the bare number
  (a string, or an int / Fraction)."""
  if isinstance(answer, numbers_lib.Rational):
    return Fraction(answer)
  text = _field_text(answer, "answer")
  tail = text.rsplit("####", 1)[-1]
  value = parse_number(tail)
  if value is None:
    raise ValueError(f"gsm8k answer field holds no number after '####': {answer!r}")
  return value


def gsm8k_correct(completion: str, answer: str) -> bool:
  """True when the completion's final answer equals the reference number exactly."""
  gold = gsm8k_gold(answer)
  predicted = extract_gsm8k_answer(completion)
  return predicted is not None and predicted == gold


def gsm8k_reward(completion: str, answer: str) -> float:
  """CORRECT_REWARD (2.0, as in d1) when `gsm8k_correct`, else 0.0."""
  return CORRECT_REWARD if gsm8k_correct(completion, answer) else 0.0


# ---- MATH --------------------------------------------------------------------------------

_TEXT_GROUP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\(?:[!,;: ]|q?quad(?![a-zA-Z]))")


def normalize_math_answer(answer: str) -> str:
  """Canonical string form of a MATH answer for exact comparison.

  Drops \\left/\\right, spacing commands (\\! \\, \\; \\: \\quad), degree signs, "$", "%",
  all whitespace and trailing "."; \\dfrac/\\tfrac -> \\frac, \\frac12 -> \\frac{1}{2},
  \\sqrt2 -> \\sqrt{2}; a lone "\\text{X}" becomes "X", while \\text{...} groups next to
  other content are units and are removed ("10\\text{ cm}" -> "10"); a short "x = " prefix
  (one "=" with at most two characters before it) is removed.
  """
  s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", answer)
  s = _SPACING_RE.sub("", s)
  s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
  s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\u00b0", "", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = s.strip()
  lone_text = _TEXT_GROUP_RE.fullmatch(s)
  s = lone_text[1] if lone_text else _TEXT_GROUP_RE.sub("", s)
  s = re.sub(r"\s+", "", s).rstrip(".")
  s = re.sub(r"\\frac([0-9])([0-9])", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\sqrt([0-9])", r"\\sqrt{\1}", s)
  if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
    s = s.split("=")[1]
  return s


def math_answers_equal(predicted: str, reference: str) -> bool:
  """Equal after `normalize_math_answer`, or both simple numbers with the same value."""
  a, b = normalize_math_answer(predicted), normalize_math_answer(reference)
  if a == b:
    return True
  value_a, value_b = parse_number(a), parse_number(b)
  return value_a is not None and value_a == value_b


def math_gold(answer: str) -> str:
  """The reference answer: the last \\boxed{} of a full solution, else the field itself."""
  text = _field_text(answer, "answer")
  boxed = last_boxed(text)
  gold = boxed if boxed is not None else text.strip()
  if not normalize_math_answer(gold):
    raise ValueError(f"math answer field is empty after normalisation: {answer!r}")
  return gold


def math_correct(completion: str, answer: str) -> bool:
  """The completion's last \\boxed{} (else its last <answer> block) equals the reference."""
  gold = math_gold(answer)
  predicted = last_boxed(completion)
  if predicted is None:
    predicted = answer_block(completion)
  return predicted is not None and math_answers_equal(predicted, gold)


def math_reward(completion: str, answer: str) -> float:
  """CORRECT_REWARD (2.0, as in d1) when `math_correct`, else 0.0."""
  return CORRECT_REWARD if math_correct(completion, answer) else 0.0


def boxed_in_answer_reward(completion: str) -> float:
  """BOXED_IN_ANSWER_REWARD when the last <answer> block contains a complete \\boxed{}."""
  block = answer_block(completion)
  return BOXED_IN_ANSWER_REWARD if block and last_boxed(block) is not None else 0.0


# ---- Format ------------------------------------------------------------------------------

_STRICT_RE = re.compile(r"<reasoning>\n.*\n</reasoning>\n<answer>\n.*\n</answer>\s*", re.DOTALL)
_REASONING_THEN_ANSWER_RE = re.compile(r"</reasoning>\s*<answer>")


def strict_format_reward(completion: str) -> float:
  """STRICT_FORMAT_REWARD when the completion is exactly the reasoning/answer layout."""
  if any(completion.count(tag) != 1 for tag in TAGS):
    return 0.0
  return STRICT_FORMAT_REWARD if _STRICT_RE.fullmatch(completion) else 0.0


def soft_format_reward(completion: str) -> float:
  """SOFT_FORMAT_REWARD when the four tags appear in order (anything around them)."""
  start = completion.find(REASONING_OPEN)
  if start < 0:
    return 0.0
  middle = _REASONING_THEN_ANSWER_RE.search(completion, start + len(REASONING_OPEN))
  if middle is None or completion.find(ANSWER_CLOSE, middle.end()) < 0:
    return 0.0
  return SOFT_FORMAT_REWARD


def xml_count_reward(completion: str) -> float:
  """XML_TAG_REWARD per tag present exactly once, less a capped trailing-text penalty."""
  reward = 0.0
  for tag in TAGS:
    if completion.count(tag) == 1:
      reward += XML_TAG_REWARD
  if completion.count(ANSWER_CLOSE) == 1:
    trailing = completion.split(ANSWER_CLOSE)[-1].strip()
    reward -= min(XML_TAG_REWARD, XML_TRAILING_PENALTY_PER_CHAR * len(trailing))
  return reward


def integer_answer_reward(completion: str) -> float:
  """INTEGER_ANSWER_REWARD when the last <answer> block is an integer (d1's int reward)."""
  block = answer_block(completion)
  return INTEGER_ANSWER_REWARD if block and re.fullmatch(r"-?[0-9]+", block) else 0.0


# ---- Countdown: exact arithmetic without eval --------------------------------------------

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


_EXPRESSION_CHARS_RE = re.compile(r"[0-9 \t.+\-*/()=]+")
_OPERATOR_SPELLINGS = {"\u00d7": "*", "\u00f7": "/", "\u2212": "-", "\\times": "*",
                       "\\cdot": "*", "\\div": "/"}


def countdown_expression(completion: str) -> str | None:
  """The answer expression: the last <answer> block, else the last line that looks like
  arithmetic (digits, + - * / ( ) . = and spaces, with an operator). ×, ÷, −, \\times,
  \\cdot and \\div are read as * / -. An "= ..." tail ("3*8 = 24") is dropped."""
  for spelling, op in _OPERATOR_SPELLINGS.items():
    completion = completion.replace(spelling, op)
  expr = answer_block(completion)
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
  given = Counter(_field_fraction(n, "numbers") for n in numbers)
  if not given:
    raise ValueError("example field 'numbers' is empty")
  target_value = _field_fraction(target, "target")
  expr = countdown_expression(completion)
  if expr is None:
    return 0.0
  try:
    value = parse_arithmetic(expr)
  except ValueError:
    return 0.0
  if value == target_value and Counter(numbers_in(expr)) == given:
    return COUNTDOWN_CORRECT_REWARD
  return COUNTDOWN_FORMAT_REWARD


# ---- Sudoku ------------------------------------------------------------------------------

_SUDOKU_SIZES = {16: 4, 81: 9}
_EMPTY_CELLS = "0."


def _check_sudoku(puzzle: Any, solution: Any) -> tuple[str, str]:
  puzzle, solution = _field_text(puzzle, "puzzle"), _field_text(solution, "solution")
  if len(puzzle) not in _SUDOKU_SIZES:
    raise ValueError(f"example field 'puzzle' must have 16 or 81 cells, got {len(puzzle)}")
  digits = "123456789"[:_SUDOKU_SIZES[len(puzzle)]]
  if any(c not in digits + _EMPTY_CELLS for c in puzzle):
    raise ValueError(f"example field 'puzzle' holds characters outside {digits}0.: {puzzle!r}")
  if len(solution) != len(puzzle) or any(c not in digits for c in solution):
    raise ValueError(f"example field 'solution' must be {len(puzzle)} digits from {digits}, "
                     f"got {solution!r}")
  if any(p not in _EMPTY_CELLS and p != s for p, s in zip(puzzle, solution)):
    raise ValueError(f"example field 'solution' {solution!r} contradicts puzzle {puzzle!r}")
  if not any(c in _EMPTY_CELLS for c in puzzle):
    raise ValueError(f"example field 'puzzle' has no empty cell: {puzzle!r}")
  return puzzle, solution


def sudoku_reward(completion: str, puzzle: str, solution: str) -> float:
  """Share of the puzzle's empty cells ("0" or ".") that the answer grid fills correctly.

  The grid is read from the last <answer> block: its ASCII digits in order, everything else
  (whitespace, "|", "-", ...) ignored. It must hold exactly one digit per cell (16 for 4x4,
  81 for 9x9), otherwise the reward is 0.0; so is a completion without an <answer> block.
  """
  puzzle, solution = _check_sudoku(puzzle, solution)
  block = answer_block(completion)
  if block is None:
    return 0.0
  grid = [c for c in block if c in "0123456789"]
  if len(grid) != len(puzzle):
    return 0.0
  empty = [i for i, c in enumerate(puzzle) if c in _EMPTY_CELLS]
  return sum(grid[i] == solution[i] for i in empty) / len(empty)


# ---- Registry ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewardTerm:
  """One named reward: fn(completion, *(example[f] for f in fields)) in [0, max_value]."""
  name: str
  fn: Callable[..., float]
  fields: tuple[str, ...]
  max_value: float

  def __call__(self, completion: str, example: Mapping[str, Any]) -> float:
    missing = [f for f in self.fields if f not in example]
    if missing:
      raise ValueError(f"reward {self.name!r} needs example field(s) {missing}; "
                       f"the example has {sorted(example)}")
    return float(self.fn(completion, *(example[f] for f in self.fields)))


REWARD_FUNCTIONS: dict[str, tuple[RewardTerm, ...]] = {
    "gsm8k": (
        RewardTerm("xml_count", xml_count_reward, (), 4 * XML_TAG_REWARD),
        RewardTerm("soft_format", soft_format_reward, (), SOFT_FORMAT_REWARD),
        RewardTerm("strict_format", strict_format_reward, (), STRICT_FORMAT_REWARD),
        RewardTerm("integer_answer", integer_answer_reward, (), INTEGER_ANSWER_REWARD),
        RewardTerm("correctness", gsm8k_reward, ("answer",), CORRECT_REWARD),
    ),
    "math": (
        RewardTerm("correctness", math_reward, ("answer",), CORRECT_REWARD),
        RewardTerm("boxed_in_answer", boxed_in_answer_reward, (), BOXED_IN_ANSWER_REWARD),
    ),
    "countdown": (
        RewardTerm("countdown", countdown_reward, ("numbers", "target"),
                   COUNTDOWN_CORRECT_REWARD),
    ),
    "sudoku": (
        RewardTerm("sudoku", sudoku_reward, ("puzzle", "solution"), 1.0),
    ),
}


def reward_terms(task: str) -> tuple[RewardTerm, ...]:
  """The reward terms of `task`; ValueError naming the known tasks otherwise."""
  if task not in REWARD_FUNCTIONS:
    raise ValueError(f"unknown reward task {task!r}; known: {sorted(REWARD_FUNCTIONS)}")
  return REWARD_FUNCTIONS[task]


def score_terms(task: str, completion: str, example: Mapping[str, Any]) -> dict[str, float]:
  """Each reward term of `task` for one completion, by name (for logging)."""
  return {term.name: term(completion, example) for term in reward_terms(task)}


def total_reward(task: str, completion: str, example: Mapping[str, Any]) -> float:
  """The scalar reward r_i that diffu-GRPO normalises within each group: the sum of the
  task's reward terms."""
  return sum(score_terms(task, completion, example).values())
