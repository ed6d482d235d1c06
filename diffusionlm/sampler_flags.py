"""The sampler's command-line flags: one set of absl flags for the CLIs that generate text.

`python -m diffusionlm.sample`, `python -m diffusionlm.evaluate` and `benchmarks/sampler.py`
call `define_flags()` and read the settings back with `flag_settings()`;
`settings_for_run` checks them against the run (generation.resolve_sampler_settings fills in
the defaults) before a model is loaded or a program compiled, so a bad flag fails in a
second with a message naming it.
"""
from absl import flags
import ml_collections

from diffusionlm import generation
from diffusionlm.data import tokenizers
from diffusionlm.diffusion import sampling
from diffusionlm.train import run_dir


def define_flags() -> None:
  """Defines --gen_length, --seed and the sampler settings on absl's global FLAGS.

  Call once, from a command-line tool's __main__ (library imports define nothing).
  Settings left unset are None, so `resolve_sampler_settings` can tell "not given" from a
  default.
  """
  flags.DEFINE_integer("gen_length", 64, "Tokens to generate after each prompt.")
  flags.DEFINE_integer("seed", 0, "PRNG seed of the sampler.")
  flags.DEFINE_bool("truncate_prompts", False, "Keep the last tokens of prompts that leave "
                    "no room for --gen_length within the model's trained sequence length "
                    "(default: refuse them with an error).")
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
  return {name: flags.FLAGS[name].value for name in generation.SAMPLER_SETTINGS
          if name in flags.FLAGS}


def settings_for_run(workdir: str, *, gen_length: int,
                     settings: dict) -> tuple[ml_collections.ConfigDict, bool]:
  """(config, causal) of the run in `workdir` (its config.json), once `settings` (e.g.
  `flag_settings()`) are checked for it: ValueError naming the setting, before anything is
  loaded or compiled."""
  config = run_dir.read_config(workdir)
  if config is None:
    raise ValueError(f"--workdir={workdir} has no config.json: is it a diffusionlm run?")
  causal = config.model.causal
  mask_id = tokenizers.load_tokenizer(config.data.tokenizer).vocab_size
  generation.resolve_sampler_settings(gen_length=gen_length, causal=causal, mask_id=mask_id,
                                      **settings)
  return config, causal
