"""The MATH task end to end: the jsonl builder and its errors, the pipeline's "math" dataset,
the response template against d1's MATH rewards, evaluation (is_correct, the CLI and its
eval_<task>_<split>.json), and the d1 configs' settings."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import toy_models

from configs import base, llada_8b, llada_8b_rl
from diffusionlm import tasks
from diffusionlm.data import builders, pipeline
from diffusionlm.rl import rollout, setup as rl_setup
from diffusionlm.tasks import answers, layout, math_problems
from diffusionlm.train import validation

MATH = tasks.get("math")
TEST_RECORDS = [
    {"problem": "Compute $\\frac{1}{2} + \\frac{1}{4}$.",
     "solution": "$\\frac12 + \\frac14 = \\frac24 + \\frac14 = \\boxed{\\frac{3}{4}}$.",
     "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": 2,
     "unique_id": "test/prealgebra/1.json"},
    {"problem": "Find $x$ if $2x = 10$.", "solution": "Divide by 2: $x = \\boxed{5}$.",
     "answer": "5"},
    {"problem": "Write $(1,1)$ in polar coordinates.",
     "solution": "$r = \\sqrt{2}$, $\\theta = \\frac{\\pi}{4}$: "
                 "$\\boxed{\\left( \\sqrt{2}, \\frac{\\pi}{4} \\right)}$.",
     "answer": "\\left( \\sqrt{2}, \\frac{\\pi}{4} \\right)"},
]
TRAIN_RECORDS = [
    {"problem": "What is $3 \\cdot 4$?", "solution": "$3 \\cdot 4 = \\boxed{12}$.",
     "answer": "12"},
    {"problem": "Compute $\\sin 60^\\circ$.",  # No "answer": read from the last \boxed{}.
     "solution": "Not \\boxed{1}: the unit circle gives $\\boxed{\\frac{\\sqrt{3}}{2}}$."},
    {"problem": "Simplify $\\sqrt{16}$.", "solution": "$\\boxed{4}$.", "answer": "4"},
    {"problem": "What is $10\\%$ of 30?", "solution": "$0.1 \\cdot 30 = \\boxed{3}$.",
     "answer": "3"},
]


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def math_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("math")
  _write_jsonl(folder / "test.jsonl", TEST_RECORDS)
  _write_jsonl(folder / "train.jsonl", TRAIN_RECORDS)
  return str(folder)


def _data_config(source_path, data_dir):
  c = base.get_config().data
  c.dataset, c.source_path, c.data_dir = "math", str(source_path), str(data_dir)
  return c


@pytest.fixture(scope="module")
def math_examples(math_dir, tmp_path_factory):
  """{split: examples} read back through pipeline.Dataset (the prepared TFDS builder)."""
  data_config = _data_config(math_dir, tmp_path_factory.mktemp("tfds"))
  return {split: pipeline.load_task_examples(data_config, split)
          for split in ("train", "validation", "test")}


# ---- Builder and pipeline -------------------------------------------------------------


def test_builder_splits_fields_and_missing_answers(math_examples):
  test, train, val = (math_examples[s] for s in ("test", "train", "validation"))
  assert [ex["problem"] for ex in test] == [r["problem"] for r in TEST_RECORDS]
  assert [ex["answer"] for ex in test] == [r["answer"] for r in TEST_RECORDS]
  assert {ex["task"] for ex in test + train + val} == {"math"}
  assert set(test[0]) == {"task", "problem", "solution", "answer"}  # Extra fields dropped.
  # Train keeps file order; the last 5% (at least one record) is held out as validation.
  assert [ex["problem"] for ex in train + val] == [r["problem"] for r in TRAIN_RECORDS]
  assert len(val) == 1
  assert train[1]["answer"] == "\\frac{\\sqrt{3}}{2}"  # The last \boxed{}, nested braces.


def test_folder_without_train_has_only_test(tmp_path):
  _write_jsonl(tmp_path / "test.jsonl", TEST_RECORDS)
  dataset = pipeline.Dataset(_data_config(tmp_path, tmp_path / "tfds"))
  assert dataset.task.name == "math" and set(dataset.builder.info.splits) == {"test"}
  assert dataset.split_name("validation") == "test"
  with pytest.raises(ValueError, match="no 'train' split"):
    dataset.split_name("train")
  with pytest.raises(ValueError, match="test.jsonl does not exist"):
    math_problems.make_config(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "Expecting property name"),
    (json.dumps({"solution": "\\boxed{1}", "answer": "1"}), "'problem' and 'solution'"),
    (json.dumps({"problem": "p", "solution": "s", "answer": 7}), "'answer' must be a string"),
    (json.dumps({"problem": "p", "solution": "no box here"}), "no \\\\boxed"),
    (json.dumps({"problem": "p", "solution": "s", "answer": " $ "}), "empty"),
    (json.dumps(["problem", "solution"]), "not a JSON object"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, reason):
  path = tmp_path / "train.jsonl"
  lines = [json.dumps(r) for r in TRAIN_RECORDS[:2]] + [bad_line, json.dumps(TRAIN_RECORDS[2])]
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=f"{path}, line 3: malformed MATH record: .*{reason}"):
    math_problems.parse_file(str(path))


def test_read_jsonl_skips_blank_lines_and_rejects_empty_files(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text('\n{"x": 1}\n  \n{"x": 2}\n')
  assert builders.read_jsonl(str(path), lambda obj: obj["x"], what="X") == [1, 2]
  path.write_text("\n\n")
  with pytest.raises(ValueError, match=f"{path}: no X records"):
    builders.read_jsonl(str(path), lambda obj: obj, what="X")


# ---- Template, rewards and correctness ---------------------------------------------------


def test_reference_responses_are_correct_and_earn_the_full_reward(math_examples):
  examples = math_examples["test"] + math_examples["train"]
  full = sum(term.max_value for term in MATH.reward_terms)
  for ex in examples:
    response = MATH.response(ex)
    assert MATH.prompt(ex) == ex["problem"] + "\n"
    assert layout.answer_block(response) == f"\\boxed{{{ex['answer']}}}"
    assert math_problems.math_correct(response, ex["answer"])
    assert MATH.is_correct(response, ex)
    assert MATH.reward(response, ex) == full
  # A response is correct for its own problem only (the answers here all differ).
  for ex in examples:
    others = [other for other in examples if other is not ex]
    assert not any(MATH.is_correct(MATH.response(ex), other)
                   for other in others)


@pytest.mark.parametrize("completion, correct", [
    ("<answer>\n\\boxed{\\dfrac{3}{4}}\n</answer>", True),  # \dfrac == \frac.
    ("<reasoning>\n...\n</reasoning>\n<answer>\n\\boxed{0.75}\n</answer>", True),  # Same value.
    ("I think $\\boxed{\\frac34}$.", True),  # No tags: the last \boxed{} still counts.
    ("<answer>\n\\frac{3}{4}\n</answer>", True),  # No \boxed{}: the <answer> block.
    ("<answer>\n\\boxed{\\frac{4}{3}}\n</answer>", False),
    ("\\boxed{\\frac{3}{4}} then \\boxed{1}", False),  # The last \boxed{} is the answer.
    ("", False),
])
def test_is_correct_for_math(completion, correct):
  example = {"task": "math", "problem": "p", "solution": "s", "answer": "\\frac{3}{4}"}
  assert MATH.is_correct(completion, example) is correct
  # Correct exactly when the correctness reward is paid.
  assert (MATH.score_terms(completion, example)["correctness"]
          == answers.CORRECT_REWARD) is correct


# ---- The evaluate CLI --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
  """A run directory trained on sudoku: config.json and random parameters (a tiny
  character-level masked-diffusion model), nothing trained or compiled."""
  return toy_models.write_random_run(str(tmp_path_factory.mktemp("run")))


def _evaluate_cli(*args):
  result = subprocess.run(
      [sys.executable, "-m", "diffusionlm.evaluate", *args], capture_output=True, text=True,
      timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return result.returncode, result.stderr + result.stdout


def test_cli_evaluates_math_and_writes_the_result_file(sudoku_run, math_dir, tmp_path):
  common = [f"--workdir={sudoku_run}", "--task=math", "--split=test", "--gen_length=8",
            "--block_length=4", "--steps=4", "--batch_size=8", f"--data_dir={tmp_path}"]
  code, output = _evaluate_cli(*common)  # The run's source_path is not a MATH folder.
  assert code != 0 and "--source_path" in output, output
  code, output = _evaluate_cli(*common, f"--source_path={math_dir}", "--num_examples=2")
  assert code == 0, output
  with open(os.path.join(sudoku_run, "eval_math_test.json")) as f:
    saved = json.load(f)
  assert (saved["task"], saved["split"], saved["num_examples"]) == ("math", "test", 2)
  assert saved["settings"]["gen_length"] == 8 and saved["settings"]["block_length"] == 4
  examples = [{**r, "task": "math"} for r in TEST_RECORDS[:2]]
  assert [e["prompt"] for e in saved["examples"]] == [MATH.prompt(ex) for ex in examples]
  # The saved scores are those of the saved completions.
  for entry, ex in zip(saved["examples"], examples, strict=True):
    assert entry["correct"] == MATH.is_correct(entry["completion"], ex)
    assert entry["reward"] == pytest.approx(MATH.reward(entry["completion"], ex))
  assert saved["accuracy"] == pytest.approx(np.mean([e["correct"] for e in saved["examples"]]))
  assert saved["mean_reward"] == pytest.approx(np.mean([e["reward"]
                                                        for e in saved["examples"]]))


# ---- d1 configs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
  """A stand-in for a converted LLaDA-8B-Instruct run: only its config.json."""
  path = str(tmp_path_factory.mktemp("llada_8b_instruct"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(llada_8b.get_config(path).to_dict(), f)
  return path


@pytest.mark.parametrize("name, task, mu", [
    ("d1_gsm8k", "gsm8k", 12), ("d1_math", "math", 12), ("d1_countdown", "countdown", 8),
    ("d1_sudoku", "sudoku", 8)])
def test_d1_configs_validate_and_hold_the_papers_settings(converted_dir, name, task, mu):
  config = importlib.import_module(f"configs.{name}").get_config(converted_dir)
  c = rl_setup.resolve_config(config)  # What rl_setup.build checks, without the 8B model.
  validation.validate_run_config(c, num_devices=8)
  rl_setup.validate_rl_config(c, data_parallel=8)
  rollout.sampler_kwargs(c.rl, mask_id=c.model.vocab_size)
  rl = c.rl
  assert (c.init_from, c.data.dataset, rl.task) == (converted_dir, task, task)
  assert (rl.num_generations, rl.num_iterations) == (6, mu)
  assert (rl.beta, rl.clip_eps, rl.p_mask_prompt) == (0.04, 0.5, 0.15)
  assert (rl.gen_length, rl.block_length, rl.steps) == (256, 32, 128)
  assert (c.optimizer.lr, c.optimizer.decay) == (3e-6, "constant")
  assert (c.model.num_layers, c.model.d_model) == (32, 4096)  # LLaDA-8B.


def test_llada_8b_rl_is_d1_gsm8k(converted_dir):
  d1_gsm8k = importlib.import_module("configs.d1_gsm8k")
  assert (llada_8b_rl.get_config(converted_dir).to_dict()
          == d1_gsm8k.get_config(converted_dir).to_dict())
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    llada_8b_rl.d1_config(converted_dir, task="chess")
