"""What a task is: its prompt and reference response, its data, its rewards, its correctness.

The pipeline (SFT rows, pretraining text), the RL rollout (prompts and rewards) and
evaluation (prompts, accuracy, mean reward) know a task only through this record, found by
name in the registry (`diffusionlm.tasks.get`). An example is the dict the task's builder
writes, plus "task": its name.
"""
from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

from diffusionlm.tasks import layout


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


@dataclasses.dataclass(frozen=True)
class Task:
  """One task, everything about it in one place.

  question, reasoning, answer: example -> the prompt's text (before its newline), the
    reference reasoning ("" = the response has no reasoning block) and the reference answer
    (what goes between the <answer> tags).
  reward_terms: the rule-based rewards of the RL stage; the reward is their sum.
  is_correct(completion, example): full correctness, the accuracy of evaluation.
  builder(data_config): a function of (data_dir=, file_format=) making the prepared TFDS
    builder of `data_config.dataset`; its records are the examples.
  variants: the suffixes V that data.dataset="NAME:V" may add (read by `builder`).
  reads_source_path: whether the examples come from the folder data.source_path.
  """
  name: str
  question: Callable[[dict], str]
  reasoning: Callable[[dict], str]
  answer: Callable[[dict], str]
  reward_terms: tuple[RewardTerm, ...]
  is_correct: Callable[[str, dict], bool]
  builder: Callable[[Any], Callable[..., Any]]
  variants: tuple[str, ...] = ()
  reads_source_path: bool = False

  def prompt(self, example: dict) -> str:
    """What the model is conditioned on: the question and a newline."""
    return self.question(example) + "\n"

  def response(self, example: dict) -> str:
    """The target completion: the reference reasoning and answer in d1's layout."""
    return layout.format_response(self.reasoning(example), self.answer(example))

  def text(self, example: dict) -> str:
    """prompt + response: what the pretraining objectives see."""
    return self.prompt(example) + self.response(example)

  def score_terms(self, completion: str, example: Mapping[str, Any]) -> dict[str, float]:
    """Each reward term for one completion, by name (for logging)."""
    return {term.name: term(completion, example) for term in self.reward_terms}

  def reward(self, completion: str, example: Mapping[str, Any]) -> float:
    """The scalar reward r_i that diffu-GRPO normalises within each group: the sum of the
    reward terms."""
    return sum(self.score_terms(completion, example).values())
