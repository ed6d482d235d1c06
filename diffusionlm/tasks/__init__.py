"""The task registry: every task by name, each defined in one module of this package.

  from diffusionlm import tasks
  task = tasks.get("sudoku")         # a tasks.Task; unknown names list the registered ones
  task.prompt(example), task.response(example), task.reward(completion, example),
  task.is_correct(completion, example), task.builder(data_config)

Built in: sudoku, countdown, gsm8k, math. `register(task)` adds another (see docs/tasks.md).
"""
from diffusionlm.tasks import countdown, gsm8k, math_problems, sudoku
from diffusionlm.tasks.task import RewardTerm, Task

_REGISTRY: dict[str, Task] = {t.name: t for t in (sudoku.TASK, countdown.TASK, gsm8k.TASK,
                                                   math_problems.TASK)}


def register(task: Task) -> Task:
  """Adds `task` under task.name (a name taken raises ValueError); returns it."""
  if task.name in _REGISTRY:
    raise ValueError(f"a task named {task.name!r} is already registered")
  if ":" in task.name:
    raise ValueError(f"task name {task.name!r} may not contain ':' (it starts a variant)")
  _REGISTRY[task.name] = task
  return task


def names() -> tuple[str, ...]:
  """The registered task names, built-in ones first."""
  return tuple(_REGISTRY)


def get(name: str) -> Task:
  """The task called `name`; ValueError listing the registered tasks otherwise."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(names())}")
  return _REGISTRY[name]


def for_dataset(spec: str) -> Task | None:
  """The task whose examples data.dataset=`spec` reads ("countdown:4" -> countdown), or None
  when `spec` names no task (e.g. text_files)."""
  name, colon, variant = spec.partition(":")
  task = _REGISTRY.get(name)
  if task is None or (colon and variant not in task.variants):
    return None
  return task


def dataset_names() -> tuple[str, ...]:
  """Every data.dataset value that names a task: NAME and NAME:VARIANT."""
  return tuple(spelling for t in _REGISTRY.values()
               for spelling in (t.name, *(f"{t.name}:{v}" for v in t.variants)))
