"""Export a run as a Hugging Face checkpoint: `python -m diffusionlm.export --workdir=RUN --out=HF_DIR`.

A masked-diffusion run becomes a LLaDA checkpoint (`LLaDAModelLM`), an autoregressive run a
`LlamaForCausalLM`: config.json, safetensors shards with model.safetensors.index.json, and the
tokenizer (diffusionlm/train/export.py). `python -m diffusionlm.convert --hf_dir=HF_DIR`
imports it back unchanged.

  python -m diffusionlm.export --workdir=runs/shakespeare --out=hf/shakespeare
"""
from absl import app
from absl import flags

from diffusionlm import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A run directory with a checkpoint.")
_OUT = flags.DEFINE_string("out", None, "Directory to write the Hugging Face checkpoint to.")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard, GiB.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import export  # pylint: disable=g-import-not-at-top
  if _MAX_SHARD_GB.value <= 0:
    raise app.UsageError(f"--max_shard_gb must be > 0, got {_MAX_SHARD_GB.value}.")
  try:
    out = export.export_run(_WORKDIR.value, _OUT.value,
                            max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if jax.process_index() == 0:
    kind = "LLaDA (bidirectional)" if out["family"] == "llada" else "LLaMA (causal)"
    print(f"Exported {_WORKDIR.value} -> {_OUT.value}: {kind}, {out['num_params']:,} "
          f"parameters in {out['num_shards']} safetensors shard(s).", flush=True)


if __name__ == "__main__":
  app.run(main)
