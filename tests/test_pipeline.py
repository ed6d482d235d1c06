"""grain pipeline: packing, sft rows, data-constrained epochs, noise, host sharding,
resumable iterator state, eval batches and clear errors. All data made in tmp dirs."""
import json
import pathlib
import pickle
import random

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from configs import base
from diffusionlm.data import builders
from diffusionlm import tasks
from diffusionlm.data import pipeline
from diffusionlm.data import tokenizers
from diffusionlm.tasks import layout

L = 16  # seq_len
TOK = tokenizers.CharTokenizer()
_WORDS = "a an the cat dog sat ran on mat log big red sun fox".split()


def _lines(n, seed):
  rng = random.Random(seed)
  return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 9))) + "\n"
          for _ in range(n)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  (root / "corpus").mkdir()
  for i, n in enumerate((120, 80, 40)):
    (root / "corpus" / f"part{i}.txt").write_text("".join(_lines(n, seed=i)))
  return root


def _config(root, **overrides):
  c = base.get_config().data
  c.data_dir = str(root / "tfds")
  c.dataset = "text_files"
  c.source_path = str(root / "corpus" / "*.txt")
  c.seq_len = L
  c.num_examples = 64
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def _loader(c, *, objective="mdm", batch=8, seed=0, process_index=0, process_count=1):
  return pipeline.make_train_loader(c, TOK, objective=objective, global_batch_size=batch,
                                    seed=seed, process_index=process_index,
                                    process_count=process_count)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _all_rows(c, objective="mdm", split="train"):
  rows = pipeline.make_rows(pipeline.Dataset(c), TOK, objective=objective, split=split,
                            seq_len=c.seq_len)
  return rows, rows.gather(np.arange(rows.num_rows))


# ---- Formatting ------------------------------------------------------------------


_EXAMPLES = [
    {"task": "sudoku", "puzzle": "1030002000000000", "solution": "1234342121434312"},
    {"task": "countdown", "numbers": [3, 4, 5], "target": 17, "expression": "3*4+5",
     "steps": "3*4=12, 12+5=17"},
    {"task": "gsm8k", "question": "What is 2+2?", "reasoning": "2+2 = 4.",
     "answer": "4"},
    {"task": "math", "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
     "solution": "$\\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.",
     "answer": "\\frac{3}{4}"},
]


@pytest.mark.parametrize("example", _EXAMPLES, ids=lambda ex: ex["task"])
def test_formatting_response_carries_the_reference_answer(example):
  task = tasks.get(example["task"])
  prompt, response = task.prompt(example), task.response(example)
  assert task.text(example) == prompt + response
  assert prompt.endswith("\n")
  has_reasoning = example["task"] != "sudoku"
  assert response.startswith(layout.REASONING_OPEN if has_reasoning else layout.ANSWER_OPEN)
  assert layout.answer_block(response) == task.answer(example)


@pytest.mark.parametrize("example", _EXAMPLES, ids=lambda ex: ex["task"])
def test_reference_responses_earn_every_rl_reward(example):
  task = tasks.get(example["task"])
  response = task.response(example)
  for term in task.reward_terms:
    value = term.fn(response, *(example[field] for field in term.fields))
    assert value == term.max_value, term.name


def test_extract_answer():
  assert layout.answer_block("<answer> 1 </answer> then <answer>\n2\n</answer>") == "2"
  assert layout.answer_block("<reasoning>no answer</reasoning>") is None
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    tasks.get("chess")


# ---- Rows ------------------------------------------------------------------------


def test_packing_keeps_every_token_once(root):
  c = _config(root)
  rows, packed = _all_rows(c)
  # Expected: each file's training lines (all but the last 10%), then EOS.
  expected = []
  for i in range(3):
    lines = (root / "corpus" / f"part{i}.txt").read_text().splitlines(keepends=True)
    expected += TOK.encode("".join(lines[:len(lines) - round(0.1 * len(lines))]))
    expected.append(TOK.eos_id)
  assert packed["tokens"][packed["valid"]].tolist() == expected
  assert packed["valid"][:-1].all()  # Only the last row has padding, at its end.
  last_valid = packed["valid"][-1]
  assert (np.diff(last_valid.astype(int)) <= 0).all()
  assert (packed["tokens"][-1][~last_valid] == TOK.pad_id).all()
  assert rows.num_rows == -(-len(expected) // L)


def test_token_stream_is_cached_and_pickles_by_path(root):
  c = _config(root)
  dataset = pipeline.Dataset(c)
  first = pipeline.token_stream(dataset, TOK, "train")
  assert isinstance(first, np.memmap)  # Read back from the cache file.
  cached = list(pathlib.Path(dataset.builder.data_dir).glob("tokens-*.npy"))
  assert len(cached) == 1
  rows = pipeline.PackedRows(first, seq_len=L, pad_id=0, what="test")
  assert len(pickle.dumps(rows)) < 2000  # The path travels, not the tokens.
  restored = pickle.loads(pickle.dumps(rows))
  np.testing.assert_array_equal(restored.gather(np.arange(5))["tokens"],
                                rows.gather(np.arange(5))["tokens"])


def test_task_pretraining_text_is_prompt_plus_response(root):
  c = _config(root, dataset="countdown")
  _, packed = _all_rows(c)
  examples = pipeline.load_task_examples(c, "train")
  expected = "".join(tasks.get("countdown").text(ex) + "<eos>" for ex in examples)
  assert TOK.decode(packed["tokens"][packed["valid"]]) == expected


def test_sft_rows_are_prompt_response_eos_padding(root):
  c = _config(root, dataset="sudoku", seq_len=64)
  rows, batch = _all_rows(c, objective="sft")
  examples = pipeline.load_task_examples(c, "train")
  assert rows.num_rows == len(examples) == 64
  assert batch["valid"].all() and batch["tokens"].dtype == np.int32
  for ex, tokens, prompt_len in zip(examples, batch["tokens"], batch["prompt_len"]):
    prompt, response = tasks.get("sudoku").prompt(ex), tasks.get("sudoku").response(ex)
    assert prompt_len == len(prompt)
    assert TOK.decode(tokens[:prompt_len]) == prompt
    end = prompt_len + len(response)
    assert TOK.decode(tokens[prompt_len:end]) == response
    assert (tokens[end:] == TOK.eos_id).all() and end < 64  # At least one EOS: fits seq_len 64.
  assert layout.answer_block(TOK.decode(batch["tokens"][0])) == examples[0]["solution"]


def _write_gsm8k(folder, question_lengths):
  folder.mkdir(exist_ok=True)
  lines = [json.dumps({"question": "q" * n, "answer": f"x\n#### {n}"})
           for n in question_lengths]
  (folder / "train.jsonl").write_text("\n".join(lines) + "\n")


def test_sft_drops_examples_longer_than_seq_len(root):
  lengths = [5, 30, 10, 50, 12, 40, 8, 60, 7, 9, 11, 6, 13, 70, 14, 15, 16, 17, 18, 19]
  _write_gsm8k(root / "gsm_drop", lengths)
  c = _config(root, dataset="gsm8k", source_path=str(root / "gsm_drop"), seq_len=80)
  rows, batch = _all_rows(c, objective="sft")
  train_lengths = lengths[:-1]  # The last record is the validation split.
  fixed = len(tasks.get("gsm8k").text(
      {"task": "gsm8k", "question": "", "reasoning": "x", "answer": "1"})) + 1
  fits = [n for n in train_lengths if n + fixed + len(str(n)) - 1 <= 80]
  assert 0 < len(fits) < len(train_lengths)
  assert rows.num_rows == len(fits) and rows.num_dropped == len(train_lengths) - len(fits)
  assert batch["prompt_len"].tolist() == [n + 1 for n in fits]  # Question + newline.
  c.seq_len = 20
  with pytest.raises(ValueError, match="data.seq_len=20 is shorter than every example"):
    _all_rows(c, objective="sft")


# ---- Training stream ---------------------------------------------------------------


def test_batch_format(root):
  batch = next(iter(_loader(_config(root), batch=8, process_count=2)))
  assert batch["tokens"].shape == batch["valid"].shape == (4, L)
  assert batch["tokens"].dtype == np.int32 and batch["valid"].dtype == bool
  assert batch["epoch"].dtype == np.int32 and batch["epoch"].shape == (4,)
  assert "prompt_len" not in batch
  sft = next(iter(_loader(_config(root, dataset="sudoku", seq_len=64), objective="sft")))
  assert sft["prompt_len"].dtype == np.int32 and sft["prompt_len"].shape == (8,)


def test_data_constrained_repeats_first_u_rows_reshuffled(root):
  num_unique, batch, epochs = 12, 4, 4
  c = _config(root, unique_tokens=num_unique * L + 5)  # The remainder is not used.
  _, packed = _all_rows(c)
  first_rows = [tuple(r) for r in packed["tokens"][:num_unique]]
  assert len(set(first_rows)) == num_unique  # Rows are distinguishable by content.
  index_of = {row: i for i, row in enumerate(first_rows)}
  seen = _take(iter(_loader(c, batch=batch)), num_unique * epochs // batch)
  tokens = np.concatenate([b["tokens"] for b in seen])
  epoch = np.concatenate([b["epoch"] for b in seen])
  order = np.array([index_of[tuple(r)] for r in tokens])  # KeyError = a row outside U.
  assert epoch.tolist() == np.repeat(np.arange(epochs), num_unique).tolist()
  per_epoch = order.reshape(epochs, num_unique)
  for e in range(epochs):
    assert sorted(per_epoch[e]) == list(range(num_unique))  # Each epoch a permutation.
  assert len({tuple(p) for p in per_epoch}) == epochs  # A different one each epoch.
  # Deterministic in the seed.
  again = _take(iter(_loader(c, batch=batch)), 3)
  np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in again]), tokens[:12])
  other = _take(iter(_loader(c, batch=batch, seed=1)), 3)
  assert not np.array_equal(np.concatenate([b["tokens"] for b in other]), tokens[:12])


def test_unique_tokens_budget_errors(root):
  with pytest.raises(ValueError, match="fewer than global_batch_size=8"):
    _loader(_config(root, unique_tokens=L * 8 - 1), batch=8)
  with pytest.raises(ValueError, match="more than the training split holds"):
    _loader(_config(root, unique_tokens=10**9), batch=8)


@pytest.mark.parametrize("objective, overrides", [
    ("mdm", {"unique_tokens": 12 * L}),  # 12 rows: 5 steps of 8 cross 3 epochs.
    ("sft", {"dataset": "sudoku", "seq_len": 64}),
])
def test_processes_split_the_same_global_batch(root, objective, overrides):
  c = _config(root, **overrides)
  whole = _take(iter(_loader(c, objective=objective, batch=8)), 5)
  shards = [_take(iter(_loader(c, objective=objective, batch=8, process_index=p,
                               process_count=2)), 5) for p in range(2)]
  for step in range(5):
    for key in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]), whole[step][key])


def test_noise_replaces_exact_fraction_of_rows_deterministically(root):
  num_unique, rate = 40, 0.3
  clean_c = _config(root, unique_tokens=num_unique * L)
  noisy_c = _config(root, unique_tokens=num_unique * L, noise_rate=rate)
  steps = 2 * num_unique // 8  # Two epochs.
  clean = np.concatenate([b["tokens"] for b in _take(iter(_loader(clean_c)), steps)])
  noisy_batches = _take(iter(_loader(noisy_c)), steps)
  noisy = np.concatenate([b["tokens"] for b in noisy_batches])
  assert all(b["valid"].all() for b in noisy_batches)
  changed = (clean != noisy).any(axis=1).reshape(2, num_unique)
  assert changed.sum(axis=1).tolist() == [round(rate * num_unique)] * 2
  assert noisy.min() >= 0 and noisy.max() < TOK.vocab_size
  # The same rows are noise in both epochs, with the same tokens.
  clean_rows = {tuple(r) for r in clean[:num_unique][changed[0]]}
  assert clean_rows == {tuple(r) for r in clean[num_unique:][changed[1]]}
  by_clean = {tuple(c_): tuple(n) for c_, n in zip(clean, noisy)}
  for c_, n in zip(clean[num_unique:], noisy[num_unique:]):
    assert by_clean[tuple(c_)] == tuple(n)


def test_iterator_state_round_trips_through_orbax(root, tmp_path):
  c = _config(root, unique_tokens=12 * L)
  iterator = iter(_loader(c))
  _take(iterator, 3)
  state = iterator.get_state()
  json.loads(state)  # Plain JSON: one small file per process.
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = _take(iterator, 4)

  resumed = iter(_loader(c))  # A fresh pipeline, as after a restart.
  resumed.set_state(state)
  from_orbax = iter(_loader(c))
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(from_orbax)))
  for want, got, got_orbax in zip(expected, _take(resumed, 4), _take(from_orbax, 4)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
      np.testing.assert_array_equal(got_orbax[key], want[key])


# ---- Evaluation ------------------------------------------------------------------


@pytest.mark.parametrize("objective, overrides", [
    ("ar", {}), ("sft", {"dataset": "sudoku", "seq_len": 64})])
def test_eval_batches_are_validation_rows_in_order(root, objective, overrides):
  c = _config(root, **overrides)
  kwargs = dict(objective=objective, global_batch_size=8, num_batches=3)
  whole = pipeline.make_eval_batches(c, TOK, process_index=0, process_count=1, **kwargs)
  halves = [pipeline.make_eval_batches(c, TOK, process_index=p, process_count=2, **kwargs)
            for p in range(2)]
  rows, _ = _all_rows(c, objective=objective, split="validation")
  for k in range(3):
    want = rows.gather((k * 8 + np.arange(8)) % rows.num_rows)
    for key in want:
      np.testing.assert_array_equal(whole[k][key], want[key])
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]),
                                    want[key])
    assert (whole[k]["epoch"] == 0).all()


# ---- Registered TFDS datasets ------------------------------------------------------


class DlmTestCorpus(builders.LocalBuilder):
  """A registered TFDS dataset, read as data.dataset = "tfds:dlm_test_corpus"."""
  FEATURES = {"sentence": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(_lines(50, seed=7)),
            "test": self._generate_examples(_lines(10, seed=8))}

  def _generate_examples(self, examples):
    for i, line in enumerate(examples):
      yield i, {"sentence": line.strip()}


def test_registered_tfds_dataset_by_name(root):
  c = _config(root, dataset="tfds:dlm_test_corpus", text_key="sentence")
  _, packed = _all_rows(c)
  expected = "".join(line.strip() + "<eos>" for line in _lines(50, seed=7))
  assert TOK.decode(packed["tokens"][packed["valid"]]) == expected
  _, val = _all_rows(c, split="validation")  # No validation split: test is used.
  assert TOK.decode(val["tokens"][val["valid"]]).startswith(_lines(10, seed=8)[0].strip())
  with pytest.raises(ValueError, match="no feature data.text_key='text'"):
    _all_rows(_config(root, dataset="tfds:dlm_test_corpus", text_key="text"))


# ---- Errors ----------------------------------------------------------------------


def test_bad_input_raises_clear_errors(root):
  with pytest.raises(ValueError, match="unknown data.dataset 'imagenet'"):
    _loader(_config(root, dataset="imagenet"))
  with pytest.raises(ValueError, match="no TFDS dataset"):
    _loader(_config(root, dataset="tfds:no_such_dataset_anywhere"))
  with pytest.raises(ValueError, match="unknown objective 'mlm'"):
    _loader(_config(root), objective="mlm")
  with pytest.raises(ValueError, match="objective 'sft' needs a task dataset"):
    _loader(_config(root), objective="sft")
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    _loader(_config(root), batch=8, process_count=3)
  with pytest.raises(ValueError, match="data.seq_len=100000 is longer than all"):
    _loader(_config(root, seq_len=100_000))
  (root / "tiny.txt").write_text("")
  with pytest.raises(ValueError, match="empty corpus"):
    _loader(_config(root, source_path=str(root / "tiny.txt")))
  bad = root / "gsm_bad"
  bad.mkdir()
  (bad / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
  with pytest.raises(ValueError, match=r"gsm_bad/train.jsonl, line 2"):
    _loader(_config(root, dataset="gsm8k", source_path=str(bad)), objective="sft")
  with pytest.raises(ValueError, match="noise_rate applies to pretraining"):
    _loader(_config(root, dataset="sudoku", seq_len=64, noise_rate=0.1), objective="sft")
