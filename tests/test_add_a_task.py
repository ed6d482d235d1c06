"""A new task in one file (docs/tasks.md): a toy "reverse a word" task, its builder, reward and
correctness, registered and then used by the SFT pipeline, the RL rollout and evaluation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from diffusionlm import generation, tasks
from diffusionlm.data import builders, pipeline, tokenizers
from diffusionlm.rl import rollout
from diffusionlm.tasks import layout
from diffusionlm.train import sharding

# ---- The task: everything about it, as a user's module would hold it ----------------------

WORDS = ["abc", "dog", "tree", "star", "moon", "fish", "lamp", "rain"]


class ToyReverse(builders.LocalBuilder):
  """{"word"}: the first two words are the test split, the next two validation, the rest train."""
  FEATURES = {"word": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager
    examples = [{"word": w} for w in WORDS]
    splits = builders.deal_splits(examples, num_test=2, num_validation=2, num_train=4)
    return {name: self._generate_examples(part) for name, part in splits.items()}


def reverse_reward(completion: str, word: str) -> float:
  """1.0 when the last <answer> block is the word reversed."""
  return 1.0 if layout.answer_block(completion) == word[::-1] else 0.0


REVERSE = tasks.Task(
    name="reverse",
    question=lambda ex: f"Reverse: {ex['word']}",
    reasoning=lambda ex: "",
    answer=lambda ex: ex["word"][::-1],
    reward_terms=(tasks.RewardTerm("reverse", reverse_reward, ("word",), 1.0),),
    is_correct=lambda completion, ex: reverse_reward(completion, ex["word"]) == 1.0,
    builder=lambda data_config: ToyReverse,
)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
  """REVERSE in the registry for one test (a copy, restored afterwards)."""
  monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # pylint: disable=protected-access
  tasks.register(REVERSE)


# ---- Using it ----------------------------------------------------------------------------

TOK = tokenizers.CharTokenizer()
MASK = TOK.vocab_size
G = 24  # Generated tokens; the response "<answer>\ncba\n</answer>" has 22.
EXAMPLES = [{"task": "reverse", "word": "abc"}, {"task": "reverse", "word": "xyz"}]
P = len(REVERSE.prompt(EXAMPLES[0]))  # Both prompts have this length.
# Position p of prompt + generation holds TARGET[p]: the answer "cba", then EOS.
RESPONSE = REVERSE.response(EXAMPLES[0])
TARGET = np.array([TOK.pad_id] * P + TOK.encode(RESPONSE) + [TOK.eos_id] * (G - len(RESPONSE)))


def cba_apply_fn(params, tokens_BxT, **unused):
  """A model that always answers "cba": almost all mass on TARGET[position]."""
  del params, unused
  return 30.0 * jax.nn.one_hot(jnp.asarray(TARGET)[jnp.arange(tokens_BxT.shape[1])],
                               TOK.vocab_size)[None].repeat(tokens_BxT.shape[0], 0)


def test_registry_knows_the_new_task():
  assert tasks.get("reverse") is REVERSE and "reverse" in tasks.names()
  with pytest.raises(ValueError, match="already registered"):
    tasks.register(REVERSE)
  with pytest.raises(ValueError, match="registered tasks: .*reverse"):
    tasks.get("chess")


def test_sft_rows_come_from_the_task(tmp_path):
  c = base.get_config().data
  c.dataset, c.data_dir, c.seq_len = "reverse", str(tmp_path), 40
  examples = pipeline.load_task_examples(c, "train")
  assert [ex["word"] for ex in examples] == WORDS[4:]
  rows = pipeline.make_rows(pipeline.Dataset(c), TOK, objective="sft", split="train",
                            seq_len=c.seq_len)
  batch = rows.gather(np.arange(rows.num_rows))
  for ex, tokens, prompt_len in zip(examples, batch["tokens"], batch["prompt_len"]):
    assert TOK.decode(tokens[:prompt_len]) == f"Reverse: {ex['word']}\n"
    response = TOK.decode(tokens[prompt_len:][tokens[prompt_len:] != TOK.eos_id])
    assert response == f"<answer>\n{ex['word'][::-1]}\n</answer>"
    assert REVERSE.is_correct(response, ex)


def test_rollout_scores_with_the_task_rewards():
  mesh = sharding.make_mesh(base.get_config().mesh, jax.devices()[:1])
  batch, metrics, completions = rollout.rollout(
      {}, cba_apply_fn, rollout.PromptSet(EXAMPLES, TOK), np.array([0, 1]), jax.random.key(0),
      tokenizer=TOK, mesh=mesh, num_generations=2, gen_length=G, mask_id=MASK,
      scale_rewards=False, score=rollout.score_with_rewards("reverse"),
      sampler_settings=generation.resolve_sampler_settings(gen_length=G, causal=False,
                                                          mask_id=MASK))
  assert completions == [RESPONSE] * 4
  np.testing.assert_array_equal(batch["rewards"], [1, 1, 0, 0])
  np.testing.assert_allclose(batch["advantages"], 0.0)  # Equal rewards within each group.
  assert metrics["reward_mean"] == metrics["reward/reverse"] == 0.5


def test_evaluation_scores_with_the_task():
  result = generation.evaluate_task(
      {}, cba_apply_fn, TOK, EXAMPLES, task="reverse", mask_id=MASK, causal=False,
      batch_size=2, gen_length=G, key=jax.random.key(0))
  assert result["completions"] == [RESPONSE] * 2
  assert (result["accuracy"], result["mean_reward"]) == (0.5, 0.5)
  assert result["correct"] == [True, False]
