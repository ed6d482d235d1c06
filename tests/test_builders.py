"""TFDS builders: Sudoku uniqueness, Countdown correctness, GSM8K parsing, text files,
disjoint deterministic splits, config identity, and locked concurrent preparation."""
import collections
import dataclasses
import functools
import json
import multiprocessing
import os
import random
import time
from fractions import Fraction

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusionlm.data import builders
from diffusionlm.data.builders import text_files
from diffusionlm.tasks import arithmetic
from diffusionlm.tasks import countdown
from diffusionlm.tasks import gsm8k
from diffusionlm.tasks import sudoku


def _prepare(builder_cls, config, data_dir):
  return builders.prepare(functools.partial(builder_cls, config=config, data_dir=str(data_dir),
                                            file_format="array_record"))


def _records(builder, split):
  source = builder.as_data_source(split)
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in source[i].items()}
          for i in range(len(source))]


# ---- Sudoku ----------------------------------------------------------------------


def _is_solved_grid(grid: str) -> bool:
  cells = [int(c) for c in grid]
  groups = [[r * 4 + c for c in range(4)] for r in range(4)]
  groups += [[r * 4 + c for r in range(4)] for c in range(4)]
  groups += [[(br + i) * 4 + bc + j for i in range(2) for j in range(2)]
             for br in (0, 2) for bc in (0, 2)]
  return all(sorted(cells[i] for i in g) == [1, 2, 3, 4] for g in groups)


def test_sudoku_solver_finds_all_288_grids():
  grids = sudoku.all_solutions()
  assert len(set(grids)) == len(grids) == 288  # The known number of 4x4 Sudoku grids.
  assert all(_is_solved_grid(g) for g in grids)


def test_sudoku_puzzles_have_exactly_one_solution():
  examples = sudoku.generate(seed=3, count=300)
  assert len({ex["puzzle"] for ex in examples}) == 300
  for ex in examples:
    puzzle, solution = ex["puzzle"], ex["solution"]
    # Backtracking (not the generator's bitmask count) finds one solution, the stored one.
    assert sudoku.solve(puzzle, max_solutions=2) == [solution]
    assert _is_solved_grid(solution)
    assert all(p in ("0", s) for p, s in zip(puzzle, solution))
    assert 6 <= puzzle.count("0") <= 10


def test_sudoku_generation_is_deterministic_per_seed():
  assert sudoku.generate(5, 40) == sudoku.generate(5, 40)
  assert sudoku.generate(5, 40) != sudoku.generate(6, 40)


def test_sudoku_builder_splits_disjoint_and_identity(tmp_path):
  config = sudoku.make_config(seed=1, num_train=60, num_validation=20, num_test=20)
  builder = _prepare(sudoku.DlmSudoku, config, tmp_path)
  puzzles = {split: [r["puzzle"] for r in _records(builder, split)]
             for split in ("train", "validation", "test")}
  assert {k: len(v) for k, v in puzzles.items()} == {"train": 60, "validation": 20, "test": 20}
  all_puzzles = sum(puzzles.values(), [])
  assert len(set(all_puzzles)) == len(all_puzzles)  # No puzzle in two splits.
  # Same settings, same prepared copy and the same data; other settings, another copy.
  again = _prepare(sudoku.DlmSudoku, sudoku.make_config(
      seed=1, num_train=60, num_validation=20, num_test=20), tmp_path)
  assert again.data_dir == builder.data_dir
  assert [r["puzzle"] for r in _records(again, "train")] == puzzles["train"]
  other_seed = sudoku.make_config(seed=2, num_train=60, num_validation=20, num_test=20)
  other_size = sudoku.make_config(seed=1, num_train=61, num_validation=20, num_test=20)
  assert len({config.name, other_seed.name, other_size.name}) == 3


# ---- Countdown -------------------------------------------------------------------


@pytest.mark.parametrize("expr, value", [
    ("2+3*4", 14), ("(2+3)*4", 20), ("10-4-3", 3), ("12/4/3", 1), ("8/3", Fraction(8, 3)),
    (" 7 * ( 1 + 2 ) ", 21), ("2*(3-5)", -4), ("((6))", 6),
])
def test_evaluator_precedence_and_associativity(expr, value):
  assert arithmetic.parse_arithmetic(expr) == value


# The shared parser reads a unary minus ("-2+5" = 3, see test_rewards.py), which the
# builder's own evaluator, now gone, rejected.
@pytest.mark.parametrize("expr", ["2*(3", "1/0", "2+", "", "2**3", "__import__('os')",
                                  "3 4", "1/(2-2)"])
def test_evaluator_rejects_bad_expressions(expr):
  with pytest.raises(ValueError):
    arithmetic.parse_arithmetic(expr)


def test_evaluator_matches_exact_arithmetic_on_random_trees():
  rng = random.Random(0)

  def tree(depth):  # (text fully bracketed, exact value)
    if depth == 0 or rng.random() < 0.3:
      n = rng.randint(0, 99)
      return str(n), Fraction(n)
    (a, va), (b, vb) = tree(depth - 1), tree(depth - 1)
    op = rng.choice("+-*/" if vb != 0 else "+-*")
    value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else None}[op]
    return f"({a}{op}{b})", value

  for _ in range(300):
    text, value = tree(4)
    assert arithmetic.parse_arithmetic(text) == value


@pytest.mark.parametrize("num_numbers", [3, 4])
def test_countdown_references_reach_target_with_exactly_the_numbers(num_numbers):
  examples = countdown.generate(seed=0, count=300, num_numbers=num_numbers)
  for ex in examples:
    numbers, target, expr = ex["numbers"], ex["target"], ex["expression"]
    assert len(numbers) == num_numbers
    assert arithmetic.parse_arithmetic(expr) == target
    assert collections.Counter(arithmetic.numbers_in(expr)) == collections.Counter(numbers)
    assert countdown.TASK.is_correct(countdown.TASK.response(ex), ex)
    assert ex["steps"].endswith(f"={target}")
  keys = [(tuple(sorted(ex["numbers"])), ex["target"]) for ex in examples]
  assert len(set(keys)) == len(keys)


def test_is_solution_rejects_wrong_answers():
  is_solution = lambda expr, numbers, target: countdown.TASK.is_correct(
      f"<answer>{expr}</answer>", {"numbers": numbers, "target": target})
  assert is_solution("3*4+5", [5, 3, 4], 17)
  assert not is_solution("3*4+5", [5, 3, 4], 18)   # Wrong value.
  assert not is_solution("3*4", [5, 3, 4], 12)     # Leaves a number unused.
  assert not is_solution("3*4+5+5", [5, 3, 4], 22)  # Uses 5 twice.
  assert not is_solution("3*4+", [5, 3, 4], 12)    # Not an expression.


def test_countdown_builder_disjoint_and_deterministic(tmp_path):
  config = countdown.make_config(seed=4, num_numbers=4, num_train=80, num_validation=20,
                                 num_test=20)
  first = _prepare(countdown.DlmCountdown, config, tmp_path / "a")
  second = _prepare(countdown.DlmCountdown, config, tmp_path / "b")
  keys = {}
  for split in ("train", "validation", "test"):
    records = _records(first, split)
    assert [r["expression"] for r in records] == [r["expression"] for r in
                                                   _records(second, split)]
    keys[split] = {(tuple(sorted(r["numbers"].tolist())), int(r["target"])) for r in records}
    assert len(keys[split]) == len(records)
  assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
  assert not keys["validation"] & keys["test"]


# ---- GSM8K -----------------------------------------------------------------------


def _gsm8k_line(i):
  return json.dumps({"question": f"Tom has {i} apples and buys 1,000 more. How many?",
                     "answer": f"He has {i}+1000 = <<{i}+1000={i + 1000}>>{i + 1000} apples.\n"
                               f"#### {i + 1000:,}"})


def test_gsm8k_parse_answer():
  reasoning, final = gsm8k.parse_answer("Add: 2+3 = <<2+3=5>>5.\n#### 1,234,567")
  assert (reasoning, final) == ("Add: 2+3 = 5.", "1234567")
  assert gsm8k.parse_answer("x\n#### -2.5")[1] == "-2.5"


@pytest.mark.parametrize("bad_line", [
    "{not json",
    json.dumps({"question": "q"}),
    json.dumps({"question": "q", "answer": "no final line"}),
    json.dumps({"question": "q", "answer": "#### twelve"}),
    json.dumps(["question", "answer"]),
])
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, bad_line):
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join([_gsm8k_line(1), _gsm8k_line(2), bad_line, _gsm8k_line(3)]) + "\n")
  with pytest.raises(ValueError, match=f"{path}, line 3"):
    gsm8k.parse_file(str(path))


def test_gsm8k_builder_splits_and_identity(tmp_path):
  folder = tmp_path / "gsm8k"
  folder.mkdir()
  (folder / "train.jsonl").write_text("\n".join(_gsm8k_line(i) for i in range(40)) + "\n")
  (folder / "test.jsonl").write_text("\n".join(_gsm8k_line(i) for i in range(7)) + "\n")
  config = gsm8k.make_config(str(folder))
  builder = _prepare(gsm8k.DlmGsm8k, config, tmp_path / "tfds")
  train, val = _records(builder, "train"), _records(builder, "validation")
  assert len(train) + len(val) == 40 and len(val) == 2  # Last 5% held out.
  assert [r["answer"] for r in val] == ["1038", "1039"]
  assert len(_records(builder, "test")) == 7
  assert "<<" not in train[0]["reasoning"] and train[0]["answer"] == "1000"
  time.sleep(0.01)
  (folder / "train.jsonl").write_text("\n".join(_gsm8k_line(i) for i in range(41)) + "\n")
  assert gsm8k.make_config(str(folder)).name != config.name  # Edited file: new identity.
  with pytest.raises(ValueError, match="train.jsonl does not exist"):
    gsm8k.make_config(str(tmp_path / "nowhere"))


# ---- Text files ------------------------------------------------------------------


def test_text_files_splits_keep_every_line_once(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  texts = {"a.txt": "".join(f"line {i} of a\n" for i in range(30)),
           "b.txt": "".join(f"b{i}\n" for i in range(9)) + "no newline at end"}
  for name, text in texts.items():
    (corpus / name).write_text(text)
  config = text_files.make_config(f"{corpus}/*.txt", chunk_chars=40)
  builder = _prepare(text_files.DlmTextFiles, config, tmp_path / "tfds")
  train, val = _records(builder, "train"), _records(builder, "validation")
  assert len(train) > 2  # Chunked.
  # Each file is its train part then its validation part, each ending a document.
  for records in (train, val):
    ends = [i for i, r in enumerate(records) if r["document_end"]]
    assert len(ends) == 2 and ends[-1] == len(records) - 1
  parts = {}
  for split, records in (("train", train), ("validation", val)):
    start = 0
    for name, end in zip(sorted(texts), [i for i, r in enumerate(records) if r["document_end"]]):
      parts[name, split] = "".join(r["text"] for r in records[start:end + 1])
      start = end + 1
  for name, text in texts.items():
    assert parts[name, "train"] + parts[name, "validation"] == text
    lines = text.splitlines(keepends=True)
    num_val = max(1, round(0.1 * len(lines)))
    assert parts[name, "validation"] == "".join(lines[-num_val:])


def test_text_files_errors_and_identity(tmp_path):
  with pytest.raises(ValueError, match="no file matches '.*missing"):
    text_files.make_config(f"{tmp_path}/missing*.txt")
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty corpus"):
    text_files.make_config(str(tmp_path / "empty.txt"))
  (tmp_path / "one.txt").write_text("hello\nworld\n")
  name = text_files.make_config(str(tmp_path / "one.txt")).name
  time.sleep(0.01)
  (tmp_path / "one.txt").write_text("hello\nthere\nworld\n")
  assert text_files.make_config(str(tmp_path / "one.txt")).name != name


# ---- Concurrent preparation --------------------------------------------------------


@dataclasses.dataclass
class _ProbeConfig(tfds.core.BuilderConfig):
  log_path: str = ""


class DlmLockProbe(builders.LocalBuilder):
  """Slow to prepare; logs each preparation to `log_path`."""
  FEATURES = {"x": tfds.features.Scalar(dtype=np.int32)}

  def _split_generators(self, dl_manager):
    with open(self.builder_config.log_path, "a") as f:
      f.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    return {"train": self._generate_examples(range(5))}

  def _generate_examples(self, examples):
    for i in examples:
      yield i, {"x": i}


def _prepare_probe(log_path, data_dir):
  builder = _prepare(DlmLockProbe, _ProbeConfig(name="probe", version="1.0.0",
                                                log_path=log_path), data_dir)
  assert len(builder.as_data_source("train")) == 5


def test_concurrent_preparation_prepares_once(tmp_path):
  log_path = str(tmp_path / "prepared.log")
  ctx = multiprocessing.get_context("fork")
  procs = [ctx.Process(target=_prepare_probe, args=(log_path, str(tmp_path / "tfds")))
           for _ in range(2)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(60)
  assert [p.exitcode for p in procs] == [0, 0]
  with open(log_path) as f:
    assert len(f.read().split()) == 1  # The second process waited and reused it.
