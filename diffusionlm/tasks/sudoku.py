"""4x4 Sudoku: fill the blank cells of a puzzle with a unique solution.

Data: puzzles generated procedurally from a seed. A grid is a string of 16 digits read row
by row; "0" marks a blank cell. Puzzles are made by blanking cells of a random solved grid,
one at a time in random order, keeping only removals after which the puzzle still has
exactly one solution. Puzzles are deduplicated and dealt out test first, then validation,
then train, so the three splits never share a puzzle and the evaluation splits do not
change with `num_train`.

Prompt: "Sudoku: <puzzle>". Response: only the <answer> block with the solved grid.

Reward (d1's single Sudoku term): sudoku 1.0 x the share of the blank cells that the answer
grid fills correctly (4x4 and 9x9 grids, "0" or "." blank). Correct: every blank right.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any

import tensorflow_datasets as tfds

from diffusionlm.data import builders
from diffusionlm.tasks import answers, layout, task

# ---- Data ----------------------------------------------------------------------------------

SIZE, BOX = 4, 2
CELLS = SIZE * SIZE


def _peers(cell: int) -> set[int]:
  r, c = divmod(cell, SIZE)
  br, bc = r - r % BOX, c - c % BOX
  same = {r * SIZE + j for j in range(SIZE)} | {i * SIZE + c for i in range(SIZE)}
  same |= {(br + i) * SIZE + bc + j for i in range(BOX) for j in range(BOX)}
  return same - {cell}


PEERS = tuple(frozenset(_peers(cell)) for cell in range(CELLS))


def parse_grid(grid: str) -> list[int]:
  """Reads "1030..." as [1, 0, 3, 0, ...]; ValueError unless 16 digits in 0..4."""
  if len(grid) != CELLS or any(ch not in "01234" for ch in grid):
    raise ValueError(f"a 4x4 sudoku grid is 16 digits 0-4 (0 = blank), got {grid!r}")
  return [int(ch) for ch in grid]


def solve(grid: str, *, max_solutions: int | None = 2) -> list[str]:
  """All solutions of `grid` (up to `max_solutions`), by backtracking.

  Fills the blank with the fewest candidates first; stops once `max_solutions` are found
  (None = find all).
  """
  cells = parse_grid(grid)
  for cell, value in enumerate(cells):
    if value and any(cells[p] == value for p in PEERS[cell]):
      return []  # The clues already clash.
  solutions = []

  def search():
    best, best_options = None, None
    for cell in range(CELLS):
      if cells[cell] == 0:
        options = set(range(1, SIZE + 1)) - {cells[p] for p in PEERS[cell]}
        if best is None or len(options) < len(best_options):
          best, best_options = cell, options
    if best is None:
      solutions.append("".join(map(str, cells)))
      return
    for value in sorted(best_options):
      cells[best] = value
      search()
      cells[best] = 0
      if max_solutions is not None and len(solutions) >= max_solutions:
        return

  search()
  return solutions


@functools.cache
def all_solutions() -> tuple[str, ...]:
  """Every solved 4x4 grid (288 of them): the empty grid, solved."""
  return tuple(solve("0" * CELLS, max_solutions=None))


@functools.cache
def _agreeing_grids() -> tuple[tuple[int, ...], ...]:
  """[cell][value]: bitmask over all_solutions() of the grids with `value` at `cell`."""
  masks = [[0] * (SIZE + 1) for _ in range(CELLS)]
  for bit, grid in enumerate(all_solutions()):
    for cell, ch in enumerate(grid):
      masks[cell][int(ch)] |= 1 << bit
  return tuple(map(tuple, masks))


def count_solutions(cells: list[int]) -> int:
  """Number of solved grids agreeing with every clue (nonzero cell) of `cells`."""
  masks = _agreeing_grids()
  agree = (1 << len(all_solutions())) - 1
  for cell, value in enumerate(cells):
    if value:
      agree &= masks[cell][value]
  return agree.bit_count()


def _make_puzzle(rng: random.Random, *, min_blanks: int, max_blanks: int) -> tuple[str, str]:
  solution = all_solutions()[rng.randrange(len(all_solutions()))]
  target = rng.randint(min_blanks, max_blanks)
  cells = parse_grid(solution)
  order = list(range(CELLS))
  rng.shuffle(order)
  blanks = 0
  for cell in order:
    if blanks == target:
      break
    cells[cell] = 0
    if count_solutions(cells) == 1:
      blanks += 1
    else:
      cells[cell] = int(solution[cell])
  return "".join(map(str, cells)), solution


def generate(seed: int, count: int, *, min_blanks: int = 6,
             max_blanks: int = 10) -> list[dict[str, str]]:
  """`count` distinct puzzles {"puzzle", "solution"}, the same for the same arguments."""
  if not 1 <= min_blanks <= max_blanks <= CELLS - 4:
    raise ValueError(f"need 1 <= min_blanks <= max_blanks <= 12 (a 4x4 sudoku needs at "
                     f"least 4 clues), got {min_blanks}, {max_blanks}")
  rng = random.Random(seed)
  examples, seen = [], set()
  for _ in range(20 * count + 1000):
    if len(examples) == count:
      break
    puzzle, solution = _make_puzzle(rng, min_blanks=min_blanks, max_blanks=max_blanks)
    if puzzle.count("0") >= min_blanks and puzzle not in seen:
      seen.add(puzzle)
      examples.append({"puzzle": puzzle, "solution": solution})
  if len(examples) < count:
    raise ValueError(f"could not find {count} distinct sudoku puzzles with "
                     f"{min_blanks}-{max_blanks} blanks")
  return examples


@dataclasses.dataclass
class SudokuConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train: int = 50_000
  num_validation: int = 1000
  num_test: int = 1000
  min_blanks: int = 6
  max_blanks: int = 10


def make_config(*, seed: int = 0, num_train: int = 0, num_validation: int = 1000,
                num_test: int = 1000, min_blanks: int = 6, max_blanks: int = 10) -> SudokuConfig:
  """A config named by its settings; num_train=0 means the default 50,000."""
  num_train = num_train or 50_000
  return builders.identity_config(
      SudokuConfig, prefix=f"seed{seed}-n{num_train}", seed=seed, num_train=num_train,
      num_validation=num_validation, num_test=num_test, min_blanks=min_blanks,
      max_blanks=max_blanks)


class DlmSudoku(builders.LocalBuilder):
  """4x4 Sudoku: {"puzzle": 16 digits with 0 = blank, "solution": 16 digits}."""
  FEATURES = {"puzzle": tfds.features.Text(), "solution": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    examples = generate(c.seed, c.num_test + c.num_validation + c.num_train,
                        min_blanks=c.min_blanks, max_blanks=c.max_blanks)
    splits = builders.deal_splits(examples, num_test=c.num_test,
                                  num_validation=c.num_validation, num_train=c.num_train)
    return {name: self._generate_examples(part) for name, part in splits.items()}


# ---- Reward --------------------------------------------------------------------------------

_SUDOKU_SIZES = {16: 4, 81: 9}
_EMPTY_CELLS = "0."


def _check_sudoku(puzzle: Any, solution: Any) -> tuple[str, str]:
  puzzle = answers.field_text(puzzle, "puzzle")
  solution = answers.field_text(solution, "solution")
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
  block = layout.answer_block(completion)
  if block is None:
    return 0.0
  grid = [c for c in block if c in "0123456789"]
  if len(grid) != len(puzzle):
    return 0.0
  empty = [i for i, c in enumerate(puzzle) if c in _EMPTY_CELLS]
  return sum(grid[i] == solution[i] for i in empty) / len(empty)


# ---- The task ------------------------------------------------------------------------------


def make_builder(data_config):
  """The DlmSudoku builder of data.task_seed and data.num_examples (train puzzles)."""
  return functools.partial(DlmSudoku, config=make_config(
      seed=int(data_config.get("task_seed", 0)), num_train=int(data_config.num_examples)))


TASK = task.Task(
    name="sudoku",
    question=lambda ex: f"Sudoku: {ex['puzzle']}",
    reasoning=lambda ex: "",
    answer=lambda ex: ex["solution"],
    reward_terms=(task.RewardTerm("sudoku", sudoku_reward, ("puzzle", "solution"), 1.0),),
    is_correct=lambda completion, ex: sudoku_reward(
        completion, ex["puzzle"], ex["solution"]) == 1.0,
    builder=make_builder,
)
