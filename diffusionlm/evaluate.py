"""Task evaluation: generate completions for task prompts and score them.

  python -m diffusionlm.evaluate --workdir=DIR [--task=sudoku|countdown|gsm8k|math|...]
      [--split=test] [--source_path=FOLDER] [--num_examples=200] [--batch_size=32]
      [sampler flags, see sampler_flags.py]

prints a table and writes DIR/eval_<task>_<split>.json (`generation.write_result`):
accuracy, mean reward, speed, the sampler settings and every prompt's completion with its
score. Tasks that read a folder (gsm8k, math) take --source_path, default the run's
data.source_path. The work is done by `generation.evaluate_task`.
"""
from absl import app
from absl import flags
import jax

from diffusionlm import cli, generation, sampler_flags, tasks
from diffusionlm.data import pipeline
from diffusionlm.train import load, sharding

FLAGS = flags.FLAGS


def _define_cli_flags():
  flags.DEFINE_string("workdir", None, "A trained run's directory.")
  flags.DEFINE_string("task", None, "A registered task (diffusionlm/tasks/); default: the "
                      "run's dataset.")
  flags.DEFINE_string("split", "test", "Dataset split to evaluate.")
  flags.DEFINE_integer("num_examples", 200, "First N examples of the split; 0 = all.")
  flags.DEFINE_integer("batch_size", 32, "Prompts per generation batch.")
  flags.DEFINE_string("data_dir", None, "Where the task data is prepared; default: the run's "
                      "config.data.data_dir.")
  flags.DEFINE_string("source_path", None, "Tasks that read a folder (gsm8k, math): the "
                      "folder of jsonl files (e.g. MATH500's test.jsonl); default: the run's "
                      "config.data.source_path.")
  flags.DEFINE_integer("show", 3, "Completions to print.")
  flags.mark_flags_as_required(["workdir"])
  sampler_flags.define_flags()


def check_flags():
  """(config, causal, task, settings) of the flags; ValueError naming a bad flag."""
  settings = sampler_flags.flag_settings()
  config, causal = sampler_flags.settings_for_run(FLAGS.workdir, gen_length=FLAGS.gen_length,
                                                  settings=settings)
  run_task = config.data.dataset.split(":")[0]
  task = FLAGS.task or run_task
  if task not in tasks.names():
    raise ValueError(f"--task={task!r} is not a task; registered tasks: "
                     f"{', '.join(tasks.names())} (the run was trained on "
                     f"{config.data.dataset!r}).")
  if tasks.get(task).reads_source_path and task != run_task and FLAGS.source_path is None:
    raise ValueError(f"--task={task} reads its examples from a folder: pass "
                     f"--source_path=DIR (the run was trained on {config.data.dataset!r}, "
                     f"so its data.source_path={config.data.source_path!r} is not {task}'s).")
  if FLAGS.batch_size < 1 or FLAGS.num_examples < 0:
    raise ValueError(f"--batch_size must be >= 1 and --num_examples >= 0, got "
                     f"{FLAGS.batch_size} and {FLAGS.num_examples}.")
  return config, causal, task, settings


def evaluate_from_flags(config, causal, task, settings) -> dict:
  """Loads the run and its examples, evaluates, prints a table."""
  data_config = config.data.copy_and_resolve_references()
  if FLAGS.data_dir is not None:
    data_config.data_dir = FLAGS.data_dir
  if FLAGS.source_path is not None:
    data_config.source_path = FLAGS.source_path
  if task != config.data.dataset.split(":")[0]:
    data_config.dataset = task
  examples = pipeline.load_task_examples(data_config, FLAGS.split)
  if FLAGS.num_examples:
    examples = examples[:FLAGS.num_examples]
  run = load.load_run(FLAGS.workdir)
  mesh = run.setup.mesh
  batch_size = -(-FLAGS.batch_size // sharding.data_parallel_size(mesh)) * \
      sharding.data_parallel_size(mesh)
  result = generation.evaluate_task(
      run.params, run.apply_fn, run.tokenizer, examples, task=task,
      mask_id=run.model_config.mask_id, causal=run.model_config.causal, batch_size=batch_size,
      gen_length=FLAGS.gen_length, key=jax.random.key(FLAGS.seed), sampler_kwargs=settings,
      mesh=mesh, max_length=run.setup.config.data.seq_len, truncate_prompts=FLAGS.truncate_prompts)
  for ex, completion in list(zip(examples, result["completions"]))[:FLAGS.show]:
    print(f"--- {tasks.get(task).prompt(ex)!r} -> {completion!r}")
  print(f"\n{task} / {FLAGS.split}: {result['num_examples']} examples, "
        f"{'AR' if causal else 'diffusion'} sampler, gen_length={FLAGS.gen_length}, "
        f"settings { {k: v for k, v in settings.items() if v is not None} }")
  print("| accuracy | mean reward | mean length | passes / token | tokens/s |")
  print("|---|---|---|---|---|")
  print(f"| {100 * result['accuracy']:.1f}% | {result['mean_reward']:.3f} | "
        f"{result['mean_completion_length']:.1f} | {result['passes_per_token']:.3f} | "
        f"{result['tokens_per_sec']:,.0f} |")
  if jax.process_index() == 0:
    path = generation.write_result(
        FLAGS.workdir, result, examples, task=task, split=FLAGS.split,
        settings={"gen_length": FLAGS.gen_length, "seed": FLAGS.seed,
                  "sampler": "ar" if causal else "diffusion", "batch_size": batch_size,
                  **generation.resolve_sampler_settings(
                      gen_length=FLAGS.gen_length, causal=causal,
                      mask_id=run.model_config.mask_id, **settings)})
    print(f"Wrote {path}")
  return result


def main(argv):
  cli.start(argv)
  try:
    checked = check_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  evaluate_from_flags(*checked)


if __name__ == "__main__":
  _define_cli_flags()
  app.run(main)
