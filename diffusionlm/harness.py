"""An lm-evaluation-harness model, registered as `diffusionlm`: any run directory, any task.

  pip install -e ".[eval]"
  python -m diffusionlm.harness --model diffusionlm \
      --model_args workdir=runs/shakespeare,num_mc=32,gen_length=64 \
      --tasks lambada_openai --batch_size 32 [any other lm_eval flag, e.g. --include_path]

`python -m diffusionlm.harness` is lm_eval's own command line with this model registered;
from Python, import this module and pass `model="diffusionlm"` (or a `DiffusionLM`) to
`lm_eval.simple_evaluate`.

Requests:
- loglikelihood: log p(continuation | context). Causal run: exact; masked-diffusion run: minus
  the conditional Monte-Carlo ELBO (`losses.mdm_nll` masking only the continuation, `num_mc`
  stratified draws; LLaDA's evaluation), a lower bound in expectation. `is_greedy`: causal
  runs, whether greedy decoding reproduces the continuation; masked-diffusion runs always
  report False (greedy decoding of a diffusion model depends on the sampler's schedule, so
  tasks whose metric reads it, e.g. lambada's acc, are not meaningful for them).
- loglikelihood_rolling: summed over `likelihood.rolling_windows` of the run's seq_len.
- generate_until: the run's sampler (`generation.complete`: LLaDA's block sampler or the AR
  sampler) with the settings below; the completion is cut at EOS, then at the first stop
  sequence of the request's `until`. Prompts that leave no room for the generation within
  seq_len keep their last tokens.

Model args: workdir (required), num_mc (default 32), seed (0), pad_to (64; likelihood rows are
padded to a multiple of it), gen_length (default: the request's max_gen_toks, else 256), and
the sampler settings of `generation.SAMPLER_SETTINGS` (block_length, steps, temperature,
remasking, cfg_scale, decoding, threshold, cache, suppress_eos_id). lm_eval's --batch_size
(an int; "auto" means 32) is the number of rows per batch, rounded up to a multiple of the
mesh's data-parallel size.

Batches are sharded over the run's mesh. Several processes (a multi-host job) each run the
same command: every process reports rank 0 of 1 to lm_eval, so each one receives all requests,
the batches are sharded across all of them, and every process gets every result.
"""
from collections.abc import Sequence

from absl import logging
import jax

try:
  from lm_eval.api import model as lm_model
  from lm_eval.api import registry
except ImportError as e:
  raise ImportError("diffusionlm.harness needs lm-evaluation-harness: pip install -e "
                    "'.[eval]'") from e

from diffusionlm import generation, likelihood
from diffusionlm.train import load, sharding

DEFAULT_NUM_MC = 32
DEFAULT_GEN_LENGTH = 256  # lm_eval's default max_gen_toks.


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
  """`text` up to the earliest occurrence of any stop sequence."""
  end = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
  return text[:end]


@registry.register_model("diffusionlm")
class DiffusionLM(lm_model.LM):
  """A diffusionlm run directory as an lm-evaluation-harness model (module docstring)."""

  def __init__(self, workdir: str, num_mc: int = DEFAULT_NUM_MC, seed: int = 0,
               pad_to: int = 64, gen_length: int | None = None, batch_size=32,
               max_batch_size=None, device=None, **sampler_settings):
    super().__init__()
    del max_batch_size, device  # JAX places the work on the run's mesh.
    self.run = load.load_run(workdir, source="model_args workdir")
    model_config, tokenizer = self.run.model_config, self.run.tokenizer
    self.max_len = int(self.run.config.data.seq_len)
    batch_size = 32 if str(batch_size).startswith("auto") else int(batch_size)
    parallel = sharding.data_parallel_size(self.run.setup.mesh)
    self.batch_size = -(-batch_size // parallel) * parallel  # Whole rows per device.
    self.gen_length, self.key = gen_length, jax.random.key(int(seed))
    self.sampler_settings = sampler_settings
    if gen_length is not None or sampler_settings:  # Name a bad setting now, not mid-run.
      generation.resolve_sampler_settings(
          gen_length=gen_length or DEFAULT_GEN_LENGTH, causal=model_config.causal,
          mask_id=model_config.mask_id, **sampler_settings)
    self.prefix_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    self.scorer = likelihood.Scorer(
        self.run.apply_fn, causal=model_config.causal, mask_id=model_config.mask_id,
        max_len=self.max_len, num_mc=int(num_mc), batch_size=self.batch_size,
        pad_to=int(pad_to), pad_id=tokenizer.pad_id, mesh=self.run.setup.mesh)

  # ---- Likelihood ------------------------------------------------------------------------

  def encode_pair(self, context: str, continuation: str) -> likelihood.Pair:
    """(context ids, continuation ids): spaces at the end of the context move to the
    continuation, the continuation's ids are those of context + continuation after the
    context's (so tokens merging across the boundary stay whole), and an empty context is
    the BOS (or EOS) token."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = self.run.tokenizer.encode
    context_ids = encode(context) if context else []
    whole_ids = encode(context + continuation)
    continuation_ids = whole_ids[len(context_ids):]
    return context_ids or [self.prefix_id], continuation_ids

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    del disable_tqdm
    pairs = [self.encode_pair(*request.args) for request in requests]
    out = self.scorer(self.run.params, pairs, key=self.key, greedy=True)
    return [(-float(nll), bool(greedy)) for nll, greedy in zip(out["nll"], out["greedy"])]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    owners, pairs = [], []
    for i, request in enumerate(requests):
      windows = likelihood.rolling_windows(self.run.tokenizer.encode(request.args[0]),
                                           max_len=self.max_len, prefix_id=self.prefix_id)
      owners += [i] * len(windows)
      pairs += windows
    totals = [0.0] * len(requests)
    if pairs:
      for i, nll in zip(owners, self.scorer(self.run.params, pairs, key=self.key)["nll"]):
        totals[i] -= float(nll)
    return totals

  # ---- Generation ------------------------------------------------------------------------

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    by_length = {}  # gen_length -> request indices (one compiled sampler each).
    for i, request in enumerate(requests):
      gen_kwargs = request.args[1] or {}
      length = self.gen_length or int(gen_kwargs.get("max_gen_toks", DEFAULT_GEN_LENGTH))
      by_length.setdefault(length, []).append(i)
    outputs = [""] * len(requests)
    model_config = self.run.model_config
    for gen_length, members in by_length.items():
      if gen_length >= self.max_len:
        raise ValueError(f"gen_length={gen_length} leaves no room for a prompt within the "
                         f"run's seq_len={self.max_len}; pass a smaller gen_length model arg.")
      result = generation.complete(
          self.run.params, self.run.apply_fn, self.run.tokenizer,
          [requests[i].args[0] for i in members], mask_id=model_config.mask_id,
          causal=model_config.causal, batch_size=self.batch_size, gen_length=gen_length,
          key=self.key, sampler_kwargs=self.sampler_settings, mesh=self.run.setup.mesh,
          max_length=self.max_len, truncate_prompts=True)
      for i, text in zip(members, result["completions"]):
        until = (requests[i].args[1] or {}).get("until") or []
        outputs[i] = cut_at_stops(text, [until] if isinstance(until, str) else until)
      logging.info("generate_until: %d prompts, gen_length %d, %.0f tokens/s", len(members),
                   gen_length, result["tokens_per_sec"])
    return outputs


def main() -> None:
  """lm_eval's command line with `diffusionlm` registered (this module is imported)."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed()
  cli_evaluate()


if __name__ == "__main__":
  main()
