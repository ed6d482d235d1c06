#!/usr/bin/env bash
# d1 in miniature (Zhao et al. 2025), on CPU: masked-diffusion pretraining (the quickstart)
# -> SFT -> diffu-GRPO -> evaluation table on the held-out Sudoku test split.
#
#   launch/d1_pipeline.sh WORKDIR [--config.rl.FIELD=VALUE ...]
#
# Extra arguments go to the RL stage. Rerunning with the same WORKDIR resumes each stage
# from its checkpoints. The table is printed and written to WORKDIR/results.md.
# Environment: PYTHON (default python), NUM_EVAL test puzzles (default 1000), EVAL_SEED.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 WORKDIR [--config.rl.FIELD=VALUE ...]" >&2
  exit 2
fi
WORKDIR=$(mkdir -p "$1" && cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

stage() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }

stage "1/4 pretraining: masked diffusion on Sudoku text (configs/quickstart.py)"
"$PYTHON" -m diffusionlm.train --config=configs/quickstart.py --workdir="$WORKDIR/pretrain"

stage "2/4 SFT on prompt -> answer (configs/sft_sudoku.py)"
"$PYTHON" -m diffusionlm.train --config=configs/sft_sudoku.py --workdir="$WORKDIR/sft" \
    --config.init_from="$WORKDIR/pretrain"

stage "3/4 diffu-GRPO (configs/rl_sudoku.py)"
"$PYTHON" -m diffusionlm.rl --config=configs/rl_sudoku.py --workdir="$WORKDIR/rl" \
    --config.init_from="$WORKDIR/sft" "$@"

stage "4/4 evaluation on the test split"
"$PYTHON" - "$WORKDIR" "${NUM_EVAL:-1000}" "${EVAL_SEED:-0}" <<'PY'
"""Accuracy of each stage with the RL run's sampler settings, greedy decoding."""
import json, math, os, sys

from absl import logging
import jax

from diffusionlm import evaluate
from diffusionlm.data import pipeline
from diffusionlm.train import load

logging.set_verbosity(logging.WARNING)
workdir, num_eval, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(os.path.join(workdir, "rl", "config.json")) as f:
  rl_config = json.load(f)
rl = rl_config["rl"]
sampler = {k: rl[k] for k in ("block_length", "steps", "remasking", "decoding", "threshold", "cache")}
sampler["temperature"] = rl["eval_temperature"]
rows = []
for name, label in (("pretrain", "pretrained (masked diffusion)"), ("sft", "+ SFT"),
                    ("rl", "+ SFT + diffu-GRPO (d1)")):
  run = load.load_run(os.path.join(workdir, name))
  examples = pipeline.load_task_examples(run.config.data, "test")[:num_eval]
  result = evaluate.evaluate_task(
      run.params, run.apply_fn, run.tokenizer, examples, task=rl["task"],
      mask_id=run.model_config.mask_id, causal=False, batch_size=rl["eval_batch_size"],
      gen_length=rl["gen_length"], key=jax.random.key(seed), sampler_kwargs=sampler,
      mesh=run.setup.mesh)
  acc, n = result["accuracy"], result["num_examples"]
  rows.append(f"| {label} | {100 * acc:.1f} ± {100 * math.sqrt(acc * (1 - acc) / n):.1f} | "
              f"{result['mean_reward']:.3f} |")
table = "\n".join([
    f"Sudoku 4x4, test split, {n} puzzles; sampler: gen_length {rl['gen_length']}, "
    f"{', '.join(f'{k} {v}' for k, v in sampler.items())}.",
    "",
    "| model | accuracy % (± s.e.) | mean reward (share of blanks right) |",
    "|---|---|---|", *rows])
print(table)
with open(os.path.join(workdir, "results.md"), "w") as f:
  f.write(table + "\n")
PY
echo "Wrote $WORKDIR/results.md"
