"""Likelihood of requests (diffusionlm/likelihood.py) and the perplexity CLI.

The sharded, batched Scorer gives the numbers of direct `mdm_nll` / `ar_nll` calls on each
row alone (same keys => same numbers), whatever the batch size and request order; rolling
windows score every token once within the model's length; the perplexity CLI reports those
numbers in bits per token with a standard error, and names bad input.
"""
import json
import math
import os

import jax
import numpy as np
import pytest

import cli_runs
import numerics
import toy_models
from diffusionlm import likelihood, perplexity
from diffusionlm.train import load

SEQ_LEN = 24
NUM_MC = 3
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.\n"


@pytest.fixture(scope="module", params=["mdm", "ar"])
def run(request, tmp_path_factory):
  workdir = toy_models.write_random_run(str(tmp_path_factory.mktemp(request.param)),
                                        objective=request.param, data={"seq_len": SEQ_LEN})
  return load.load_run(workdir)  # All 8 devices, data-parallel.


def _pairs(tokenizer):
  ids = tokenizer.encode
  return [(ids("Q: 2+2?\nA:"), ids(" 4")), (ids("Q: 2+2?\nA:"), ids(" five")),
          (ids("x"), ids("yz")), (ids("a much longer context, cut on the left"), ids(" ok")),
          (ids("\n"), ids("To be, or not to be"))]


@pytest.fixture(scope="module")
def direct(run):
  """One request alone through losses.mdm_nll / ar_nll, built from the documented rules."""
  return toy_models.direct_request_nll(run, seq_len=SEQ_LEN, num_mc=NUM_MC)


def test_scorer_equals_direct_calls_whatever_the_batching(run, direct):
  pairs = _pairs(run.tokenizer)
  key = jax.random.key(7)
  common = dict(causal=run.model_config.causal, mask_id=run.model_config.mask_id,
                max_len=SEQ_LEN, num_mc=NUM_MC, pad_to=SEQ_LEN, mesh=run.setup.mesh)
  out = likelihood.Scorer(run.apply_fn, batch_size=8, **common)(run.params, pairs, key=key,
                                                                greedy=True)
  want = [direct(c, x, key) for c, x in pairs]
  numerics.assert_close_at_scale(out["nll"], np.array(want), rel=1e-5)
  assert np.all(out["nll"] > 0) and out["nll"][0] != out["nll"][1]
  assert out["num_tokens"].tolist() == [len(x) for _, x in pairs]
  # Unsharded, batches of 2, reversed order: each request keeps its number.
  again = likelihood.Scorer(run.apply_fn, batch_size=2, **{**common, "mesh": None})(
      run.params, pairs[::-1], key=key)
  numerics.assert_close_at_scale(again["nll"][::-1], out["nll"], rel=1e-5)
  if run.model_config.causal:  # Greedy: the argmax chain, computed here from the logits.
    logits = jax.jit(run.apply_fn)
    # Causal: the padding on the right changes nothing before it.
    argmax = lambda ids: np.asarray(logits(run.params, np.array([ids + [0] * (SEQ_LEN - len(
        ids))]))).argmax(-1)[0, :len(ids)]
    for (context, continuation), got in zip(pairs, out["greedy"]):
      chain = argmax(context + continuation)[len(context) - 1:-1]
      assert got == (chain.tolist() == continuation)
    best = [int(argmax(pairs[2][0])[-1])]
    assert likelihood.Scorer(run.apply_fn, **common)(
        run.params, [(pairs[2][0], best)], key=key, greedy=True)["greedy"].tolist() == [True]
  else:
    assert not out["greedy"].any()  # Not defined for the diffusion model (documented).


def test_rolling_windows_score_every_token_once():
  ids = list(range(100, 123))
  for max_len in (2, 5, 8, 30):
    pairs = likelihood.rolling_windows(ids, max_len=max_len, prefix_id=1)
    assert [t for _, x in pairs for t in x] == ids
    assert pairs[0][0] == [1]
    for context, continuation in pairs:
      assert len(context) + len(continuation) <= max_len and context
    for (_, x), (c, _) in zip(pairs, pairs[1:]):  # Later windows: the ids right before them.
      assert c[-1] == x[-1]
    if max_len < len(ids):  # The last window fills the row.
      assert len(pairs[-1][0]) + len(pairs[-1][1]) == max_len
  with pytest.raises(ValueError, match="max_len must be >= 2"):
    likelihood.rolling_windows(ids, max_len=1, prefix_id=1)


def test_bad_requests_are_named(run):
  scorer = likelihood.Scorer(run.apply_fn, causal=run.model_config.causal,
                             mask_id=run.model_config.mask_id, max_len=SEQ_LEN)
  for pairs, error in [([([1], [])], "continuation is empty"), ([([], [5])], "context is empty"),
                       ([([1], [5] * SEQ_LEN)], "exceeds the model's 24 positions"),
                       ([], "nothing to score")]:
    with pytest.raises(ValueError, match=error):
      scorer(run.params, pairs, key=jax.random.key(0))


def test_bits_per_token_is_the_windows_nll(run, direct):
  """bits_per_token = sum of the rolling windows' NLL / (tokens ln 2), per repeat key."""
  ids = perplexity.encode_documents(run.tokenizer, [TEXT, "", TEXT[:30]], max_tokens=90)
  assert [len(x) for x in ids] == [len(TEXT), 90 - len(TEXT)]
  key = jax.random.key(3)
  out = perplexity.bits_per_token(run, ids, num_mc=NUM_MC, repeats=3, batch_size=8, key=key)
  bos = run.tokenizer.bos_id
  pairs = [p for x in ids for p in likelihood.rolling_windows(x, max_len=SEQ_LEN, prefix_id=bos)]
  repeats = 1 if run.model_config.causal else 3
  want = [sum(direct(c, x, jax.random.fold_in(key, r)) for c, x in pairs)
          / (90 * math.log(2)) for r in range(repeats)]
  numerics.assert_close_at_scale(out["estimates"], want, rel=1e-5)
  assert out["num_tokens"] == 90 and out["num_windows"] == len(pairs)
  if run.model_config.causal:
    assert out["exact"] and out["standard_error"] == 0.0 and out["repeats"] == 1
  else:
    se = np.std(out["estimates"], ddof=1) / math.sqrt(3)
    assert out["standard_error"] == pytest.approx(se) and se > 0


def _perplexity_cli(*args):
  return cli_runs.run_module("diffusionlm.perplexity", *args)


def test_cli_reports_and_names_bad_input(tmp_path):
  workdir = toy_models.write_random_run(str(tmp_path / "run"), data={"seq_len": SEQ_LEN})
  data = tmp_path / "held_out.jsonl"
  data.write_text("".join(json.dumps({"text": t}) + "\n" for t in [TEXT, TEXT[::-1]]))
  code, output = _perplexity_cli(f"--workdir={workdir}", f"--data={data}", "--num_mc=2",
                                 "--repeats=2", "--batch_size=8")
  assert code == 0, output
  with open(os.path.join(workdir, "perplexity_held_out.jsonl.json")) as f:
    saved = json.load(f)
  assert (saved["num_tokens"], saved["num_documents"], saved["num_mc"]) == (2 * len(TEXT), 2, 2)
  assert f"| {saved['bits_per_token']:.4f} | {saved['standard_error']:.4f} |" in output
  with pytest.raises(ValueError, match="no such file"):
    perplexity.read_documents(str(tmp_path / "missing.txt"), text_key="text")
  with pytest.raises(ValueError, match="no field --text_key='body'"):
    perplexity.read_documents(str(data), text_key="body")
  assert perplexity.is_file("held_out.txt") and not perplexity.is_file("tfds:lm1b")
