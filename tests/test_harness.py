"""The lm-evaluation-harness model (diffusionlm/harness.py), offline, under `-m eval`.

Three tasks defined in local YAML over local jsonl files (multiple choice by loglikelihood,
generate_until, loglikelihood_rolling) run through `lm_eval.simple_evaluate` with the model
`diffusionlm`; every number it reports equals a direct call of the project's functions
(`losses.mdm_nll` / `ar_nll` on the request's row, `generation.complete`), and the harness's
accuracy is the one those numbers give.
"""
import json
import math
import os

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.eval
lm_eval = pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness: pip install "
                              "-e '.[eval]'")

import numerics  # pylint: disable=g-import-not-at-top,wrong-import-order
import toy_models  # pylint: disable=g-import-not-at-top,wrong-import-order
from diffusionlm import generation, harness, likelihood  # pylint: disable=g-import-not-at-top

SEQ_LEN, NUM_MC, SEED = 32, 2, 5
MC_DOCS = [{"question": "Q: 2+2=", "choices": ["4", "5", "22"], "answer": 0},
           {"question": "The sky is", "choices": ["blue", "green"], "answer": 0},
           {"question": "", "choices": ["a", "bb"], "answer": 1}]
GEN_DOCS = [{"question": "Count: 1 2 3", "answer": " 4"}, {"question": "abc", "answer": "d"}]
PPL_DOCS = [{"text": "To be, or not to be, that is the question: whether 'tis nobler in "
             "the mind to suffer"}, {"text": "Speak."}]
TASKS = {
    "dlm_mc": {"output_type": "multiple_choice", "doc_to_text": "{{question}}",
               "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
               "metric_list": [{"metric": "acc"}]},
    "dlm_gen": {"output_type": "generate_until", "doc_to_text": "{{question}}",
                "doc_to_target": "{{answer}}",
                "generation_kwargs": {"until": ["\n", "3"], "max_gen_toks": 8},
                "metric_list": [{"metric": "exact_match"}]},
    "dlm_ppl": {"output_type": "loglikelihood_rolling", "doc_to_text": "",
                "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"}]},
}
DOCS = {"dlm_mc": MC_DOCS, "dlm_gen": GEN_DOCS, "dlm_ppl": PPL_DOCS}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  """One YAML file per task, each over its own jsonl file (test split)."""
  root = tmp_path_factory.mktemp("tasks")
  for name, spec in TASKS.items():
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS[name]))
    config = {"task": name, "dataset_path": "json", "test_split": "test",
              "dataset_kwargs": {"data_files": {"test": str(data)}}, **spec}
    (root / f"{name}.yaml").write_text(json.dumps(config))  # JSON is YAML.
  return str(root)


def _evaluate(model, task_dir, tasks):
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  return lm_eval.simple_evaluate(
      model=model, tasks=tasks, log_samples=True, bootstrap_iters=0,
      task_manager=lm_eval.tasks.TaskManager(include_path=task_dir))


def _samples(results, task):
  return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def _direct_nll_fn(run):
  """(context ids, continuation ids) -> -log p of the request alone, keyed as the harness
  keys it (fold_in(key(seed), request_hash))."""
  nll = toy_models.direct_request_nll(run, seq_len=SEQ_LEN, num_mc=NUM_MC)
  return lambda context, continuation: nll(context, continuation, jax.random.key(SEED))


@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_harness_numbers_are_the_projects(objective, task_dir, tmp_path):
  workdir = toy_models.write_random_run(str(tmp_path / "run"), objective=objective,
                                        data={"seq_len": SEQ_LEN})
  sampler = dict(block_length=4, steps=8) if objective == "mdm" else {}
  model = harness.DiffusionLM(workdir, num_mc=NUM_MC, seed=SEED, batch_size=8, gen_length=8,
                              **sampler)
  results = _evaluate(model, task_dir, ["dlm_mc", "dlm_ppl", "dlm_gen"])
  run, direct_nll = model.run, _direct_nll_fn(model.run)
  encode, bos = run.tokenizer.encode, run.tokenizer.bos_id

  # Multiple choice: lm_eval asks for question + " " + choice, split into a context and a
  # continuation; an empty context becomes BOS.
  correct = []
  for doc, sample in zip(MC_DOCS, _samples(results, "dlm_mc")):
    assert ["".join(a) for a in sample["arguments"]] == [
        doc["question"] + " " + c for c in doc["choices"]]
    context = encode(doc["question"]) or [bos]
    want = [-direct_nll(context, encode(" " + c)) for c in doc["choices"]]
    got = [ll for ll, _ in sample["filtered_resps"]]
    numerics.assert_close_at_scale(got, want, rel=1e-5)
    correct.append(int(np.argmax(want)) == doc["answer"])
    if objective == "mdm":
      assert not any(greedy for _, greedy in sample["filtered_resps"])
  assert results["results"]["dlm_mc"]["acc,none"] == pytest.approx(np.mean(correct))

  # Rolling loglikelihood: the windows' direct NLLs, summed per document.
  for doc, sample in zip(PPL_DOCS, _samples(results, "dlm_ppl")):
    windows = likelihood.rolling_windows(encode(doc["text"]), max_len=SEQ_LEN, prefix_id=bos)
    assert len(windows) == (3 if len(doc["text"]) > 60 else 1)
    want = -sum(direct_nll(c, x) for c, x in windows)
    assert sample["filtered_resps"][0] == pytest.approx(want, rel=1e-5)

  # Generation: generation.complete's completions, cut at the stop sequences "\n" and "3".
  out = generation.complete(
      run.params, run.apply_fn, run.tokenizer, [d["question"] for d in GEN_DOCS],
      mask_id=run.model_config.mask_id, causal=run.model_config.causal, batch_size=8,
      gen_length=8, key=jax.random.key(SEED), sampler_kwargs=sampler, mesh=run.setup.mesh)
  got = [s["filtered_resps"][0] for s in _samples(results, "dlm_gen")]
  assert got == [harness.cut_at_stops(t, ["\n", "3"]) for t in out["completions"]]


def test_rolling_windows_are_lm_evals():
  from lm_eval import utils  # pylint: disable=g-import-not-at-top
  ids = list(range(10, 47))
  for max_len in (2, 4, 9, 40):
    want = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
        ids, prefix_token=1, max_seq_len=max_len - 1, context_len=1)]
    assert likelihood.rolling_windows(ids, max_len=max_len, prefix_id=1) == want


def test_stop_sequences_and_bad_model_args(tmp_path):
  assert harness.cut_at_stops("ab\ncd3", ["3", "\n"]) == "ab"
  assert harness.cut_at_stops("abc", ["", "x"]) == "abc"
  workdir = toy_models.write_random_run(str(tmp_path / "run"), data={"seq_len": SEQ_LEN})
  with pytest.raises(ValueError, match="block_length"):
    harness.DiffusionLM(workdir, gen_length=8, block_length=3)
  with pytest.raises(ValueError, match="has no config.json"):
    harness.DiffusionLM(str(tmp_path))
  assert not math.isnan(harness.DiffusionLM(workdir, batch_size="auto").batch_size)
