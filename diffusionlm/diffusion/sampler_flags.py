"""Sampler settings of the command-line tools: one set of absl flags and their defaults.

`python -m diffusionlm.sample`, `python -m diffusionlm.evaluate` and `benchmarks/sampler.py`
call `define_flags()` and read them back with `flag_settings()`; `resolve` fills in the
defaults and checks everything before a model is loaded or a program compiled, so a bad
flag fails in a second with a message naming it. `evaluate.evaluate_task` resolves its
`sampler_kwargs` the same way.

Defaults: block_length is the largest divisor of gen_length up to 32 (LLaDA's usual block),
steps = gen_length (one token per step, LLaDA's reference setting), greedy decoding.
"""
import inspect

from absl import flags
import ml_collections

from diffusionlm.data import tokenizers
from diffusionlm.diffusion import sampling
from diffusionlm.train import checkpoint

MAX_DEFAULT_BLOCK_LENGTH = 32
# Settings that only the masked-diffusion sampler reads; the AR sampler takes temperature.
DIFFUSION_ONLY = ("block_length", "steps", "remasking", "cfg_scale", "decoding", "threshold",
                  "cache", "suppress_eos_id")
SETTINGS = ("temperature",) + DIFFUSION_ONLY


def default_block_length(gen_length: int) -> int:
  """The largest divisor of gen_length that is at most MAX_DEFAULT_BLOCK_LENGTH."""
  return max(d for d in range(1, min(gen_length, MAX_DEFAULT_BLOCK_LENGTH) + 1)
             if gen_length % d == 0)


def _generate_defaults() -> dict:
  """The keyword defaults of `sampling.generate` for SETTINGS (one source of truth)."""
  parameters = inspect.signature(sampling.generate).parameters
  return {name: parameters[name].default for name in SETTINGS
          if parameters[name].default is not inspect.Parameter.empty}


def resolve(*, gen_length: int, causal: bool, mask_id: int, **given) -> dict:
  """The keyword arguments of `generate` (causal=False) or `generate_ar` (causal=True),
  without gen_length: `given` (None = unset) completed with the defaults and checked.

  Raises ValueError naming the setting: unknown names, diffusion-only settings given for a
  causal model, and everything `sampling.check_settings` rejects.
  """
  unknown = sorted(set(given) - set(SETTINGS))
  if unknown:
    raise ValueError(f"unknown sampler setting(s) {unknown}; known: {list(SETTINGS)}")
  if gen_length is None or gen_length < 1:
    raise ValueError(f"gen_length must be >= 1, got {gen_length}.")
  given = {k: v for k, v in given.items() if v is not None}
  if causal:
    diffusion_only = sorted(set(given) & set(DIFFUSION_ONLY))
    if diffusion_only:
      raise ValueError(f"sampler setting(s) {diffusion_only} apply to masked-diffusion "
                       "models only; this model is autoregressive (causal), whose sampler "
                       "takes gen_length and temperature.")
    kwargs = {"temperature": float(given.get("temperature", 0.0))}
    sampling.check_ar_settings(gen_length=gen_length, **kwargs)
    return kwargs
  kwargs = _generate_defaults() | {"block_length": default_block_length(gen_length),
                                   "steps": gen_length} | given
  sampling.check_settings(gen_length=gen_length, mask_id=mask_id, **kwargs)
  return kwargs


def define_flags() -> None:
  """Defines --gen_length, --seed and the sampler settings on absl's global FLAGS.

  Call once, from a command-line tool's __main__ (library imports define nothing).
  Settings left unset are None, so `resolve` can tell "not given" from a default.
  """
  flags.DEFINE_integer("gen_length", 64, "Tokens to generate after each prompt.")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the sampler.")
  flags.DEFINE_float("temperature", None, "Sampling temperature; 0 (default) = greedy.")
  flags.DEFINE_integer("block_length", None, "Semi-autoregressive block length (diffusion); "
                       "default: the largest divisor of gen_length up to 32.")
  flags.DEFINE_integer("steps", None, "Denoising steps over all blocks (diffusion); "
                       "default: gen_length. Unused by --decoding=threshold.")
  flags.DEFINE_enum("remasking", None, list(sampling.REMASKING),
                    "Which predictions are committed first (diffusion); default "
                    "low_confidence.")
  flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale (diffusion); "
                     "default 0 = off.")
  flags.DEFINE_enum("decoding", None, list(sampling.DECODING),
                    "plain: LLaDA's fixed schedule; threshold: commit every token above "
                    "--threshold (diffusion). Default plain.")
  flags.DEFINE_float("threshold", None, "Confidence threshold of --decoding=threshold; "
                     "default 0.9.")
  flags.DEFINE_enum("cache", None, list(sampling.CACHE),
                    "block: approximate KV cache refreshed at each block (diffusion). "
                    "Default none.")


def flag_settings() -> dict:
  """The sampler settings given on the command line (None where unset), by name."""
  return {name: flags.FLAGS[name].value for name in SETTINGS if name in flags.FLAGS}


def settings_for_run(workdir: str, *, gen_length: int,
                     settings: dict) -> tuple[ml_collections.ConfigDict, bool]:
  """(config, causal) of the run in `workdir` (its config.json), once `settings` (e.g.
  `flag_settings()`) are checked for it: ValueError naming the setting, before anything is
  loaded or compiled."""
  saved = checkpoint.read_run_config(workdir)
  if saved is None:
    raise ValueError(f"--workdir={workdir} has no config.json: is it a diffusionlm run?")
  config = ml_collections.ConfigDict(saved)
  causal = config.objective == "ar"
  mask_id = tokenizers.load_tokenizer(config.data.tokenizer).vocab_size
  resolve(gen_length=gen_length, causal=causal, mask_id=mask_id, **settings)
  return config, causal
