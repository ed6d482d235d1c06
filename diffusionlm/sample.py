"""Print completions from a trained run.

  python -m diffusionlm.sample --workdir=DIR --prompt=TEXT [--prompt=TEXT ...]
      [--num_samples=1] [--gen_length=64 --block_length=.. --steps=.. --temperature=..
       --remasking=.. --cfg_scale=.. --decoding=.. --threshold=.. --cache=.. --seed=..
       --truncate_prompts]

Masked-diffusion runs sample with `generate` (LLaDA's semi-autoregressive sampler and its
faster modes), AR runs (objective "ar") with the KV-cached `generate_ar`; see
docs/sampling.md. Prompts are used verbatim; task prompts end with a newline, which bash
writes as --prompt=$'Sudoku: 0204300000140100\\n'. All prompts x samples run as one batch;
each completion is cut at its first EOS. Bad flags fail before the model is loaded.
"""
from absl import app
from absl import flags
import jax

from diffusionlm import cli, generation, sampler_flags
from diffusionlm.train import load, sharding

FLAGS = flags.FLAGS


def _define_cli_flags():
  flags.DEFINE_string("workdir", None, "A trained run's directory.")
  flags.DEFINE_multi_string("prompt", None, "Prompt text; repeat the flag for a batch.")
  flags.DEFINE_integer("num_samples", 1, "Completions per prompt.")
  flags.mark_flags_as_required(["workdir", "prompt"])
  sampler_flags.define_flags()


def check_flags() -> dict:
  """The sampler settings of the flags; ValueError naming a bad flag (nothing loaded yet)."""
  settings = sampler_flags.flag_settings()
  sampler_flags.settings_for_run(FLAGS.workdir, gen_length=FLAGS.gen_length, settings=settings)
  if FLAGS.num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {FLAGS.num_samples}.")
  for i, prompt in enumerate(FLAGS.prompt):
    if not prompt:
      raise ValueError(f"--prompt number {i + 1} is empty.")
  return settings


def sample_from_flags(settings: dict) -> list[list[str]]:
  """Loads the run and prints (and returns) the completions of each prompt."""
  run = load.load_run(FLAGS.workdir)
  prompts = [p for p in FLAGS.prompt for _ in range(FLAGS.num_samples)]
  ways = sharding.data_parallel_size(run.setup.mesh)
  out = generation.complete(
      run.params, run.apply_fn, run.tokenizer, prompts, mask_id=run.model_config.mask_id,
      causal=run.model_config.causal, batch_size=-(-len(prompts) // ways) * ways,
      gen_length=FLAGS.gen_length, key=jax.random.key(FLAGS.seed), sampler_kwargs=settings,
      mesh=run.setup.mesh, max_length=run.setup.config.data.seq_len,
      truncate_prompts=FLAGS.truncate_prompts)
  n = FLAGS.num_samples
  per_prompt = [out["completions"][i * n:(i + 1) * n] for i in range(len(FLAGS.prompt))]
  for prompt, completions in zip(FLAGS.prompt, per_prompt):
    print(f"=== prompt: {prompt!r}")
    for j, completion in enumerate(completions):
      print(f"--- sample {j + 1}:\n{completion}" if n > 1 else completion)
  return per_prompt


def main(argv):
  cli.start(argv)
  try:
    settings = check_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  sample_from_flags(settings)


if __name__ == "__main__":
  _define_cli_flags()
  app.run(main)
