"""Rewards for diffu-GRPO: answer extraction, numeric equivalence, exact arithmetic, format
terms, sudoku partial credit, and that no reward raises on (or executes) model output."""
import ast
from fractions import Fraction
import inspect
import time

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from diffusionlm import tasks
from diffusionlm.tasks import answers, arithmetic, countdown, gsm8k, layout, math_problems, sudoku

CANONICAL = "<reasoning>\nthink\n</reasoning>\n<answer>\n18\n</answer>\n"


def _sudoku_solution(n: int) -> str:
  """A valid n^2 x n^2 grid: cell (r, c) = (r * n + r // n + c) mod n^2 + 1."""
  size = n * n
  return "".join(str((r * n + r // n + c) % size + 1) for r in range(size) for c in range(size))


# ---- GSM8K ---------------------------------------------------------------------------------


@pytest.mark.parametrize("completion, expected", [
    # (1) the last <answer> block wins over every other rule, and is authoritative.
    ("#### 3\n\\boxed{4}\nThe answer is 6\n<answer>5</answer>", 5),
    ("<answer>1</answer> then <answer>2</answer>", 2),
    ("7 apples <answer>none</answer>", None),
    ("<answer>a</answer> 9 <answer>b</answer>", None),
    # its content is read by the remaining rules
    ("<answer>\\boxed{12}</answer>", 12),
    ("<answer>3 * 6 = 18</answer>", 18),
    ("<answer>The answer is 18 because 3*6</answer>", 18),
    ("<answer>\n$1,000.\n</answer>", 1000),
    ("<answer>3 4</answer>", 4),
    # (2) the last complete \boxed{}, nested braces handled, beats "####"
    ("#### 3 and \\boxed{4}", 4),
    ("\\boxed{\\frac{1}{2}}", Fraction(1, 2)),
    ("\\boxed{1} then \\boxed{2}", 2),
    ("\\boxed{1} then \\boxed{2", 1),
    ("\\boxed {x = 7}", 7),
    # (3) "#### N" beats "The answer is N"
    ("#### 4\nThe answer is 3", 4),
    ("####-$5", -5),
    # (4) "The answer is N" beats "A: N"
    ("The answer is 3\nA: 4", 3),
    ("the final answer is: **-$1,250.50** ok", Fraction(-250100, 200)),
    # (5) "A: N" at a line start beats the last number
    ("Q: 2+2?\nA: 4\nlater 9", 4),
    ("PA: 5 and 6", 6),
    # (6) the last number anywhere
    ("I think 3 then 7 apples", 7),
    ("it costs 5-3 = 2 dollars", 2),
    ("the ratio is 3/4.", Fraction(3, 4)),
    ("no number here", None),
    ("", None),
])
def test_gsm8k_extraction_rules(completion, expected):
  assert gsm8k.extract_gsm8k_answer(completion) == expected


@pytest.mark.parametrize("text, value", [
    ("1,000", 1000), ("- $ 18", -18), ("\\$1,250.50.", Fraction(2501, 2)),
    ("\\frac { 3 } { 4 }", Fraction(3, 4)), ("-\\dfrac{1}{2}", Fraction(-1, 2)),
    ("3 / 4", Fraction(3, 4)), ("12 \\%", 12), (".5", Fraction(1, 2)),
    ("1 2", None), ("3/0", None), ("1,2", None), ("1,0000", None), ("18 dollars", None),
    ("", None), ("-", None),
])
def test_parse_number(text, value):
  assert answers.parse_number(text) == value


@pytest.mark.parametrize("predicted, gold, equal", [
    ("1,000", "1000", True),
    ("1000.0", "1,000", True),
    ("$18", "18", True),
    ("\\$18", "18", True),
    ("18.", "18", True),
    ("18 dollars", "18", True),
    ("-3", "-3", True),
    ("\u22123", "-3", True),  # unicode minus
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    (".5", "0.5", True),
    ("50%", "50", True),  # a percent sign is ignored, not divided by 100
    ("$1,250.50", "1250.5", True),
    ("-3", "3", False),
    ("3/4", "34", False),
    ("50%", "0.5", False),
    ("18", "18.5", False),
    ("1.000", "1000", False),
    ("1,000", "1", False),
])
def test_gsm8k_numeric_equivalence(predicted, gold, equal):
  assert gsm8k.gsm8k_correct(f"<answer>{predicted}</answer>", gold) is equal
  assert gsm8k.gsm8k_reward(f"<answer>{predicted}</answer>", gold) == (2.0 if equal else 0.0)


def test_gsm8k_accepts_the_raw_answer_field():
  raw = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
         "Altogether 48+24 = <<48+24=72>>72.\n#### 72")
  assert gsm8k.gsm8k_correct("<answer>72</answer>", raw)
  assert not gsm8k.gsm8k_correct("<answer>24</answer>", raw)
  assert gsm8k.gsm8k_correct("so 72", "#### 72") and gsm8k.gsm8k_correct("so 72", "72")
  assert gsm8k.gsm8k_correct("so 72", 72) and gsm8k.gsm8k_correct("so 72", b"#### 72")
  assert not gsm8k.gsm8k_correct("no number at all", raw)


@pytest.mark.parametrize("bad_gold", ["#### many", "", "no digits"])
def test_gsm8k_bad_gold_raises(bad_gold):
  with pytest.raises(ValueError, match="answer"):
    gsm8k.gsm8k_correct("<answer>1</answer>", bad_gold)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(-10**7, 10**7))
def test_gsm8k_formats_of_the_same_integer_are_equal(n):
  gold = f"steps...\n#### {n:,}"
  sign = "-" if n < 0 else ""
  for written in (str(n), f"{n:,}", f"{n}.0", f"{sign}${abs(n):,}", f"{n}.", f"\\boxed{{{n}}}"):
    assert gsm8k.gsm8k_correct(f"<answer>{written}</answer>", gold), written
    assert gsm8k.gsm8k_correct(f"blah 3 blah. The answer is {written}", gold), written
  assert not gsm8k.gsm8k_correct(f"<answer>{n + 1}</answer>", gold)


# ---- Format --------------------------------------------------------------------------------

JUNK = "junk"


@pytest.mark.parametrize("completion, strict, soft, xml, integer", [
    (CANONICAL, 0.5, 0.5, 0.5, 0.5),
    (CANONICAL + " \n\n", 0.5, 0.5, 0.5, 0.5),  # trailing whitespace is no junk
    ("<reasoning>think</reasoning>\n<answer>18</answer>", 0.0, 0.5, 0.5, 0.5),
    (CANONICAL + JUNK, 0.0, 0.5, 0.5 - 0.001 * len(JUNK), 0.5),
    (CANONICAL + "x" * 1000, 0.0, 0.5, 0.375, 0.5),  # the trailing penalty is capped
    ("intro " + CANONICAL, 0.0, 0.5, 0.5, 0.5),
    (CANONICAL + "<answer>\n18\n</answer>\n", 0.0, 0.5, 0.25, 0.5),  # answer tags twice
    ("<answer>1</answer><reasoning>x</reasoning>", 0.0, 0.0, 0.5 - 0.001 * 24, 0.5),
    ("<reasoning>\nx\n</reasoning>\n<answer>\n1.5\n", 0.0, 0.0, 0.375, 0.0),
    ("<reasoning>\nx\n</reasoning>\nhmm\n<answer>\n-3\n</answer>", 0.0, 0.0, 0.5, 0.5),
    ("<reasoning>\n\n</reasoning>\n<answer>\n\n</answer>", 0.5, 0.5, 0.5, 0.0),
    ("plain text", 0.0, 0.0, 0.0, 0.0),
])
def test_format_rewards(completion, strict, soft, xml, integer):
  assert layout.strict_format_reward(completion) == strict
  assert layout.soft_format_reward(completion) == soft
  assert layout.xml_count_reward(completion) == pytest.approx(xml)
  assert gsm8k.integer_answer_reward(completion) == integer


# ---- MATH ----------------------------------------------------------------------------------


@pytest.mark.parametrize("predicted, gold, equal", [
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("1/3", "\\frac{1}{3}", True),
    ("10\\text{ cm}", "10", True),
    ("\\text{Monday}", "Monday", True),
    ("5.", "5", True),
    ("x = 3", "3", True),
    ("90^\\circ", "90", True),
    ("50\\%", "50", True),
    ("\\$5", "5", True),
    ("3\\!\\sqrt2", "3\\sqrt{2}", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("(1,2)", "(2,1)", False),
    ("\\sqrt{2}", "2", False),
])
def test_math_answer_equivalence(predicted, gold, equal):
  assert math_problems.math_answers_equal(predicted, gold) is equal
  assert math_problems.math_answers_equal(gold, predicted) is equal


def test_math_correct_reads_last_boxed_then_answer_block():
  solution = "Half of it, so the answer is $\\boxed{\\frac{1}{2}}$."
  assert math_problems.math_correct("<answer>\\boxed{\\dfrac{1}{2}}</answer>", solution)
  assert math_problems.math_correct("\\boxed{7} no, \\boxed{0.5}", solution)
  assert not math_problems.math_correct("\\boxed{0.5} no, \\boxed{7}", solution)
  assert math_problems.math_correct("<answer>0.5</answer>", solution)  # no \boxed: the block
  assert not math_problems.math_correct("it is 0.5", solution)  # neither: no answer
  assert math_problems.math_reward("<answer>\\boxed{1/2}</answer>", "\\frac{1}{2}") == 2.0
  assert math_problems.boxed_in_answer_reward("<answer>\\boxed{1/2}</answer>") == 0.5
  assert math_problems.boxed_in_answer_reward("\\boxed{1/2} <answer>1/2</answer>") == 0.0
  with pytest.raises(ValueError, match="answer"):
    math_problems.math_correct("\\boxed{1}", "\\boxed{ }")


# ---- Countdown: parser ---------------------------------------------------------------------


@pytest.mark.parametrize("expr, value", [
    ("2+3*4", 14), ("(2+3)*4", 20), ("8-3-2", 3), ("8/4/2", 1), ("2*3/4", Fraction(3, 2)),
    ("2*-3", -6), ("-2*3", -6), ("--3", 3), ("-(2+3)", -5), ("1/3+1/3+1/3", 1),
    ("7/2", Fraction(7, 2)), ("1.5*2", 3), (" 12 + 3 ", 15), ("((((5))))", 5),
    ("100-25*3/5", 85), ("2-3", -1),
])
def test_parse_arithmetic_known_values(expr, value):
  assert arithmetic.parse_arithmetic(expr) == value


@pytest.mark.parametrize("expr, problem", [
    ("", "empty"), ("   ", "empty"), ("2+", "ends early"), ("(2", "ends early"),
    ("2)", "unexpected"), ("2 3", "unexpected"), ("2**3", "expected"), ("2(3)", "unexpected"),
    ("1/0", "division by zero"), ("1/(2-2)", "division by zero"), ("a+1", "character"),
    ("+2", "expected"), ("2+*3", "expected"), ("()", "expected"), ("1..2", "character"),
    ("2^3", "character"), ("1.", "character"),
])
def test_parse_arithmetic_rejects_malformed(expr, problem):
  with pytest.raises(ValueError, match=problem):
    arithmetic.parse_arithmetic(expr)


def test_parse_arithmetic_limits():
  depth = arithmetic.MAX_NESTING_DEPTH
  assert arithmetic.parse_arithmetic("(" * depth + "1" + ")" * depth) == 1
  assert arithmetic.parse_arithmetic("-" * depth + "1") == (-1) ** depth
  with pytest.raises(ValueError, match="nested"):
    arithmetic.parse_arithmetic("(" * (depth + 1) + "1" + ")" * (depth + 1))
  with pytest.raises(ValueError, match="nested"):
    arithmetic.parse_arithmetic("-" * (depth + 1) + "1")
  count = (arithmetic.MAX_EXPRESSION_CHARS - 1) // 2  # "1+1+...+1" of 2 * count + 1 chars
  assert arithmetic.parse_arithmetic("1+" * count + "1") == count + 1
  with pytest.raises(ValueError, match="longer"):
    arithmetic.parse_arithmetic("1+" * (count + 1) + "1")


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}

_trees = st.recursive(
    st.integers(-20, 20),
    lambda children: st.tuples(st.sampled_from("+-*/"), children, children),
    max_leaves=7)


def _value(tree) -> Fraction:
  """Exact value of a tree; ZeroDivisionError where it divides by zero."""
  if isinstance(tree, int):
    return Fraction(tree)
  op, left, right = tree
  a, b = _value(left), _value(right)
  if op == "/":
    return a / b  # Fraction raises ZeroDivisionError for b == 0.
  return {"+": a + b, "-": a - b, "*": a * b}[op]


def _render(tree, space: str, parent_op: str | None = None, right: bool = False) -> str:
  """Infix text with only the parentheses that precedence and left-associativity need."""
  if isinstance(tree, int):
    return str(tree)
  op, left, rhs = tree
  text = _render(left, space, op) + space + op + space + _render(rhs, space, op, right=True)
  if parent_op is not None and (
      _PRECEDENCE[op] < _PRECEDENCE[parent_op]
      or (right and parent_op in "-/" and _PRECEDENCE[op] == _PRECEDENCE[parent_op])):
    return "(" + text + ")"
  return text


def _leaves(tree) -> list[int]:
  return [tree] if isinstance(tree, int) else _leaves(tree[1]) + _leaves(tree[2])


@settings(max_examples=200, deadline=None)
@given(tree=_trees, space=st.sampled_from(["", " "]))
def test_parse_arithmetic_matches_tree_value(tree, space):
  expr = _render(tree, space)
  assert arithmetic.numbers_in(expr) == [abs(n) for n in _leaves(tree)]
  try:
    expected = _value(tree)
  except ZeroDivisionError:
    with pytest.raises(ValueError, match="division by zero"):
      arithmetic.parse_arithmetic(expr)
    return
  assert arithmetic.parse_arithmetic(expr) == expected


def test_numbers_in():
  assert arithmetic.numbers_in("12+3*(4-5)") == [12, 3, 4, 5]
  assert arithmetic.numbers_in("-3") == [3]
  assert arithmetic.numbers_in("2.5*2") == [Fraction(5, 2), 2]
  with pytest.raises(ValueError, match="character"):
    arithmetic.numbers_in("2 + x")


# ---- Countdown: reward ---------------------------------------------------------------------


@pytest.mark.parametrize("completion, reward", [
    ("<answer>3*5-7</answer>", 1.0),
    ("<answer>5*3-7</answer>", 1.0),
    ("<answer>\n3 \u00d7 5 \u2212 7\n</answer>", 1.0),
    ("<answer>3 \\times 5 - 7</answer>", 1.0),
    ("<answer>3*5-7 = 8</answer>", 1.0),
    ("reasoning\n3*5-7", 1.0),  # no tags: the last line that looks like arithmetic
    ("try 3+5\nthen\n3*5-7\nso it works", 1.0),
    ("<answer>3*5+7</answer>", 0.1),  # wrong value
    ("<answer>5+3</answer>", 0.1),  # right value, 7 unused
    ("<answer>3*5-7+0</answer>", 0.1),  # right value, extra number
    ("<answer>5+3+7-7</answer>", 0.1),  # right value, 7 reused
    ("<answer>8</answer>", 0.1),
    ("<answer>3*5-7/0</answer>", 0.0),  # division by zero is malformed
    ("<answer>3*5-</answer>", 0.0),
    ("<answer>three times five</answer>", 0.0),
    ("<answer>" + "(" * 60 + "8" + ")" * 60 + "</answer>", 0.0),
    ("3*5-7 <answer></answer>", 0.0),  # the block is authoritative
    ("no expression here 3", 0.0),
])
def test_countdown_reward(completion, reward):
  assert countdown.countdown_reward(completion, [3, 5, 7], 8) == reward


def test_countdown_repeated_numbers_and_field_types():
  assert countdown.countdown_reward("<answer>4+2+2</answer>", [2, 2, 4], 8) == 1.0
  assert countdown.countdown_reward("<answer>4*2</answer>", [2, 2, 4], 8) == 0.1
  assert countdown.countdown_reward("<answer>3*5-7</answer>", np.array([7, 3, 5]),
                                    np.int64(8)) == 1.0
  assert countdown.countdown_reward("<answer>3*5-7</answer>", ["3", "5", "7"], b"8") == 1.0
  with pytest.raises(ValueError, match="numbers"):
    countdown.countdown_reward("<answer>1</answer>", [], 1)
  with pytest.raises(ValueError, match="target"):
    countdown.countdown_reward("<answer>1</answer>", [1], "eight")


@settings(max_examples=100, deadline=None)
@given(tree=_trees, data=st.data())
def test_countdown_rewards_any_correct_expression(tree, data):
  try:
    target = _value(tree)
  except ZeroDivisionError:
    return
  leaves = [abs(n) for n in _leaves(tree)]
  numbers = data.draw(st.permutations(leaves))
  answer = f"<answer>{_render(tree, ' ')}</answer>"
  assert countdown.countdown_reward(answer, numbers, target) == 1.0
  assert countdown.countdown_reward(answer, numbers, target + 1) == 0.1
  assert countdown.countdown_reward(answer, numbers + [1], target) == 0.1


# ---- Sudoku --------------------------------------------------------------------------------


def _grid_text(cells: str) -> str:
  size = int(len(cells) ** 0.5)
  rows = [" | ".join(cells[r * size:(r + 1) * size]) for r in range(size)]
  return "<answer>\n" + "\n".join(rows) + "\n</answer>"


@settings(max_examples=60, deadline=None)
@given(n=st.sampled_from([2, 3]), data=st.data())
def test_sudoku_reward_is_share_of_empty_cells_right(n, data):
  solution = _sudoku_solution(n)
  cells = len(solution)
  empty = sorted(data.draw(st.sets(st.integers(0, cells - 1), min_size=1)))
  blank = data.draw(st.sampled_from("0."))
  puzzle = "".join(blank if i in empty else c for i, c in enumerate(solution))
  wrong = data.draw(st.sets(st.integers(0, cells - 1)))  # given cells may be wrong too
  answer = "".join(str(int(c) % (n * n) + 1) if i in wrong else c for i, c in enumerate(solution))
  expected = 1 - len(wrong & set(empty)) / len(empty)
  assert sudoku.sudoku_reward(_grid_text(answer), puzzle, solution) == pytest.approx(expected)


def test_sudoku_unparseable_answers_score_zero():
  solution = _sudoku_solution(2)
  puzzle = "0" * 8 + solution[8:]
  assert sudoku.sudoku_reward(_grid_text(solution), puzzle, solution) == 1.0
  assert sudoku.sudoku_reward(solution, puzzle, solution) == 0.0  # no <answer> block
  assert sudoku.sudoku_reward(f"<answer>{solution[:15]}</answer>", puzzle, solution) == 0.0
  assert sudoku.sudoku_reward(f"<answer>{solution}1</answer>", puzzle, solution) == 0.0
  assert sudoku.sudoku_reward("<answer>" + solution, puzzle, solution) == 0.0


@pytest.mark.parametrize("puzzle, solution, problem", [
    ("0" * 15, "1" * 15, "16 or 81"),
    ("0" * 16, "1234", "solution"),
    ("5" + "0" * 15, _sudoku_solution(2), "outside"),
    ("2" + "0" * 15, _sudoku_solution(2), "contradicts"),
    (_sudoku_solution(2), _sudoku_solution(2), "no empty"),
])
def test_sudoku_bad_fields_raise(puzzle, solution, problem):
  with pytest.raises(ValueError, match=problem):
    sudoku.sudoku_reward("<answer>1</answer>", puzzle, solution)


# ---- Registry, robustness, safety ------------------------------------------------------------

_SOLUTION4 = _sudoku_solution(2)
EXAMPLES = {
    "gsm8k": {"answer": "#### 18"},
    "math": {"answer": "\\boxed{\\frac{1}{2}}"},
    "countdown": {"numbers": [3, 5, 7], "target": 8},
    "sudoku": {"puzzle": "0" * 6 + _SOLUTION4[6:], "solution": _SOLUTION4},
}
PERFECT = {
    "gsm8k": CANONICAL,
    "math": "<reasoning>\nhalf\n</reasoning>\n<answer>\n\\boxed{0.5}\n</answer>",
    "countdown": "<reasoning>\nx\n</reasoning>\n<answer>\n3*5-7\n</answer>",
    "sudoku": _grid_text(_SOLUTION4),
}


@pytest.mark.parametrize("name", sorted(tasks.names()))
def test_perfect_completion_reaches_the_maximum(name):
  task_def = tasks.get(name)
  terms = task_def.reward_terms
  assert task_def.reward(PERFECT[name], EXAMPLES[name]) == pytest.approx(
      sum(term.max_value for term in terms))
  assert set(task_def.score_terms(PERFECT[name], EXAMPLES[name])) == {t.name for t in terms}


def test_registry_errors():
  assert set(tasks.names()) == {"gsm8k", "math", "countdown", "sudoku"}
  with pytest.raises(ValueError, match="unknown task 'chess'; registered tasks: sudoku, "
                     "countdown, gsm8k, math"):
    tasks.get("chess")
  with pytest.raises(ValueError, match="target"):
    tasks.get("countdown").reward("x", {"numbers": [1]})


_REWARD_TERMS = {name: tasks.get(name).reward_terms for name in tasks.names()}
_FRAGMENTS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "\\boxed{",
              "{", "}", "####", "The answer is ", "A: ", "0", "1", "7", "8", "-", "/", "*", "+",
              "(", ")", "$", ",", ".", "%", "\\frac", "=", "\\text{", "\u2212", "\u00d7", "x"]
_model_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=3)), max_size=60).map("".join))


@settings(max_examples=200, deadline=None)
@given(text=_model_text)
def test_no_reward_raises_on_model_output(text):
  for task, terms in _REWARD_TERMS.items():
    for term in terms:
      value = term(text, EXAMPLES[task])
      assert isinstance(value, float) and 0.0 <= value <= term.max_value, (task, term.name)
  gsm8k.extract_gsm8k_answer(text)
  math_problems.math_answers_equal(text, "1")
  try:
    assert isinstance(arithmetic.parse_arithmetic(text), Fraction)
  except ValueError:
    pass


def test_pathological_inputs_are_fast():
  texts = ["<answer>" * 20000, "\\boxed{" * 20000, "{" * 100000, "1," * 50000,
           "<reasoning>" * 10000 + "</reasoning> " * 10000, "9" * 100000,
           "<answer>" + "(" * 100000 + "</answer>", "- " * 50000, "\n".join(["1+"] * 30000),
           "<answer>-" + " " * 100000 + "x</answer>", "<answer>1" + " " * 100000 + "x</answer>"]
  start = time.perf_counter()
  for text in texts:
    for task, terms in _REWARD_TERMS.items():
      for term in terms:
        assert 0.0 <= term(text, EXAMPLES[task]) <= term.max_value
  assert time.perf_counter() - start < 10.0


def test_rewards_source_never_executes_code():
  for module in (answers, arithmetic, countdown, gsm8k, layout, math_problems, sudoku,
                 tasks.task):
    _assert_executes_nothing(ast.parse(inspect.getsource(module)))


def _assert_executes_nothing(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      func = node.func
      name = func.id if isinstance(func, ast.Name) else None
      attr = func.attr if isinstance(func, ast.Attribute) else None
      assert name not in {"eval", "exec", "compile", "__import__", "getattr"}, name
      assert attr not in {"eval", "exec", "sympify", "parse_expr"}, attr
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
      assert not any(m.split(".")[0] in {"sympy", "builtins", "subprocess"} for m in modules)
