"""Sweeps: grid expansion, resume of a finished sweep, collect, and the CLI's fit and plot."""
import json
import math
import os
import shlex
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from configs import scaling_tiny
from diffusionlm.models import flops
from diffusionlm.scaling import fit as fit_lib
from diffusionlm.scaling import plot
from diffusionlm.scaling import sweep
from diffusionlm.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the", "king", "queen", "sword", "night", "love", "death", "crown", "speak", "now")


def _corpus(path) -> str:
  """A seeded text of random 6-word lines: enough for 16-token rows and a validation split."""
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(WORDS, size=6)) + "\n" for _ in range(300)]
  path.write_text("".join(lines))
  return str(path)


def _tiny_sweep(tmp_path):
  c = scaling_tiny.get_config()
  c.source_path = _corpus(tmp_path / "corpus.txt")
  c.data_dir = str(tmp_path / "tfds")
  return c


def test_expand_grid_names_and_run_configs(tmp_path):
  c = _tiny_sweep(tmp_path)
  c.models = ("d16l1,d32l2",)  # An unquoted tuple flag arrives as one "a,b" string.
  c.unique_tokens = (256, 100_000)
  c.epochs = (1, 2.5, 8)
  runs = sweep.expand(c, "root")
  assert len(runs) == 2 * 2 * 2 * 3
  assert len({r.name for r in runs}) == len(runs)
  assert runs[0].name == "mdm-d16l1-U256-E1" and runs[-1].name == "ar-d32l2-U100k-E8"
  assert "mdm-d32l2-U100k-E2.5" in [r.name for r in runs]
  seq_len, batch = 16, 8
  for run in runs:
    objective, model, u_tag, e_tag = run.name.split("-")
    t = run.config
    assert run.workdir == os.path.join("root", run.name)
    assert t.objective == objective
    u, epochs = t.data.unique_tokens, float(e_tag[1:])
    assert u_tag == {256: "U256", 100_000: "U100k"}[u]
    # Steps: epochs over the U // seq_len unique sequences, global_batch_size per step.
    assert t.num_train_steps == max(1, round(epochs * (u // seq_len) / batch))
    assert 2 <= math.ceil(t.num_train_steps / t.eval_every_steps) <= c.evals_per_run
    assert t.optimizer.warmup_steps <= c.max_warmup_fraction * t.num_train_steps
    d_model, layers = {"d16l1": (16, 1), "d32l2": (32, 2)}[model]
    assert (t.model.d_model, t.model.num_layers) == (d_model, layers)
    assert t.model.num_heads * c.head_dim == d_model and t.model.mlp_dim == 2 * d_model
    assert t.data.source_path == c.source_path  # The sweep field reaches every run.
  # When U is a whole number of batches, D = steps * B * seq_len is exactly epochs * U.
  whole = [r for r in runs if r.config.data.unique_tokens == 256]
  for run in whole:
    d = run.config.num_train_steps * batch * seq_len
    assert d == pytest.approx(float(run.name.split("-E")[1]) * 256, abs=batch * seq_len / 2)


def test_expand_total_tokens_and_errors(tmp_path):
  c = _tiny_sweep(tmp_path)
  c.epochs, c.total_tokens = (), (1024, 4096)
  runs = sweep.expand(c, "root")
  assert [r.name for r in runs] == ["mdm-d16l1-U256-D1024", "ar-d16l1-U256-D1024",
                                    "mdm-d16l1-U256-D4096", "ar-d16l1-U256-D4096"]
  assert [r.config.num_train_steps for r in runs] == [8, 8, 32, 32]  # D / (8 * 16).
  c.epochs = (1,)
  with pytest.raises(ValueError, match="exactly one of sweep_config.epochs"):
    sweep.expand(c, "root")
  c.total_tokens = ()
  for field, value, message in (
      ("models", ("64x2",), "expected d<d_model>l<num_layers>"),
      ("models", ("d20l1",), "not a multiple of head_dim=8"),
      ("unique_tokens", (64,), "fewer than global_batch_size=8"),
      ("objectives", ("sft",), "not pretraining objectives"),
      ("epochs", (0,), "must all be positive")):
    bad = _tiny_sweep(tmp_path)
    bad[field] = value
    with pytest.raises(ValueError, match=message):
      sweep.expand(bad, "root")


def test_variants_cross_the_objectives_and_set_their_fields(tmp_path):
  c = _tiny_sweep(tmp_path)
  c.epochs = (1,)
  c.variants = ("drop:model.dropout=0.1", "mask:data.input_mask_rate=0.2;model.dropout=0.05",
                "plain")
  runs = sweep.expand(c, "root")
  assert [r.name for r in runs] == [f"{o}-{v}-d16l1-U256-E1" for o in ("mdm", "ar")
                                    for v in ("drop", "mask", "plain")]
  settings = {"drop": (0.1, 0.0), "mask": (0.05, 0.2), "plain": (0.0, 0.0)}
  for run in runs:
    variant = sweep.variant_of(run.name)
    assert (run.config.model.dropout, run.config.data.input_mask_rate) == settings[variant]
    assert sweep.series({"objective": run.config.objective, "variant": variant}) == (
        f"{run.config.objective}+{variant}")
  assert sweep.variant_of("ar-d16l1-U256-E1") == "" and sweep.series({"objective": "ar"}) == "ar"
  c.variants = ("drop:model.dropout=0.1,mask:data.noise_rate=0.2",)  # As a flag arrives.
  assert [r.config.data.noise_rate for r in sweep.expand(c, "root")] == [0.0, 0.2] * 2
  for variants, message in (
      (("d32l2:model.dropout=0.1",), "not a model name"),
      (("a-b",), "needs a name of letters"),
      (("x:model.drop=0.1",), r"'model.drop=0.1' of 'x' is not FIELD=VALUE"),
      (("x:model.dropout",), "is not FIELD=VALUE"),
      (("x", "x:model.dropout=0.1"), "names repeat")):
    c.variants = variants
    with pytest.raises(ValueError, match=message):
      sweep.expand(c, "root")


def test_launch_command_reproduces_the_run_config(tmp_path, monkeypatch):
  """Parsing a printed command with the trainer's own flag gives back the run's config."""
  for run in sweep.expand(_tiny_sweep(tmp_path), str(tmp_path / "root")):
    argv = shlex.split(sweep.launch_command(run))
    assert argv[:4] == ["python", "-m", "diffusionlm.train", "--config=configs/base.py"]
    assert argv[4] == f"--workdir={run.workdir}"
    argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'base.py')}"] + argv[5:]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from here.
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv)
    fv(argv)
    assert fv.config.to_dict() == run.config.to_dict()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """The tiny sweep trained once, at one epoch: an mdm and an ar run of 2 steps each."""
  tmp = tmp_path_factory.mktemp("sweep")
  c = _tiny_sweep(tmp)
  c.epochs = (1,)
  runs = sweep.expand(c, str(tmp / "root"))
  with pytest.MonkeyPatch.context() as mp:  # MFU's peak matmul is 2 s a run; not needed.
    mp.setattr(metrics, "measure_matmul_peak", lambda: 1e12)
    trained = sweep.run_locally(runs)
  assert trained == [r.name for r in runs]
  return c, runs


def _mtimes(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


def test_rerunning_a_finished_sweep_trains_nothing(finished):
  c, runs = finished
  root = os.path.dirname(runs[0].workdir)
  before = _mtimes(root)
  assert sweep.run_locally(runs) == []  # The real trainer: nothing is touched.
  assert _mtimes(root) == before
  # Only a run that lost its summary is trained again (resuming from its checkpoint).
  calls = []

  def fake_train(config, workdir):
    calls.append((workdir, config.num_train_steps))
    os.replace(os.path.join(workdir, "summary.moved"), os.path.join(workdir, "summary.json"))

  os.replace(os.path.join(runs[1].workdir, "summary.json"),
             os.path.join(runs[1].workdir, "summary.moved"))
  assert sweep.run_locally(runs, train_fn=fake_train) == [runs[1].name]
  assert calls == [(runs[1].workdir, runs[1].config.num_train_steps)]
  # A finished run of a different config is an error, not silently reused.
  c.train.optimizer.lr = 5e-3
  with pytest.raises(ValueError, match=r"different config \(optimizer.lr: 0.001 -> 0.005\)"):
    sweep.run_locally(sweep.expand(c, root))
  c.train.optimizer.lr = 1e-3


def test_collect_reads_every_finished_run(finished, tmp_path):
  _, runs = finished
  rows, missing = sweep.collect([r.workdir for r in runs] + [str(tmp_path / "absent")])
  assert missing == [str(tmp_path / "absent")]
  assert [r["name"] for r in rows] == [r.name for r in runs]
  for row, run in zip(rows, runs):
    t = run.config
    with open(os.path.join(run.workdir, "metrics.jsonl")) as f:
      evals = [json.loads(l)["eval/bits_per_token"] for l in f if "eval/" in l]
    assert row["final_bits_per_token"] == evals[-1] and row["best_bits_per_token"] == min(evals)
    assert row["best_nats"] == pytest.approx(min(evals) * math.log(2), rel=1e-12)
    assert row["num_evals"] == 2
    assert (row["objective"], row["U"], row["steps"]) == (t.objective, 256, t.num_train_steps)
    assert row["D"] == t.num_train_steps * 8 * 16 and row["epochs"] == row["D"] / 256
    with open(os.path.join(run.workdir, "config.json")) as f:
      vocab_size = json.load(f)["model"]["vocab_size"]  # The char tokenizer's.
    model_cfg = type("M", (), {**t.model.to_dict(), "vocab_size": vocab_size})
    assert row["N"] == flops.param_counts(model_cfg)["total"]
    assert row["flops"] == 6 * row["N"] * row["D"] == row["flops_six_n_with_embedding"]
    assert row["flops_exact"] == flops.flops_per_token(model_cfg, 16)["exact"] * row["D"]
  assert [r["epochs"] for r in rows] == [1, 1] and rows[0]["N"] == rows[1]["N"]
  path = sweep.write_csv(rows, str(tmp_path / "runs.csv"))
  assert sweep.read_csv(path) == rows
  # The CLI writes the same table, finding the runs under --root by itself.
  root = os.path.dirname(runs[0].workdir)
  subprocess.run([sys.executable, "-m", "diffusionlm.scaling", "collect", f"--root={root}"],
                 check=True, cwd=REPO, capture_output=True)
  by_name = sorted(rows, key=lambda r: r["name"])  # find_runs lists workdirs by name.
  assert sweep.read_csv(os.path.join(root, "runs.csv")) == by_name
  assert all(r["variant"] == "" and r["noise_rate"] == r["dropout"] == r["input_mask_rate"] == 0
             and r["seed"] == 0 for r in rows)
  # --merge_csv adds an older table's rows of the same (model, U), not those of other cells
  # nor those the root already holds.
  older = tmp_path / "older.csv"
  older.write_text("name,objective,model,N,U,epochs,D,flops,best_bits_per_token\n"
                   f"mdm-d16l1-U256-E9,mdm,d16l1,{rows[0]['N']},256,9,2304,1e9,3.5\n"
                   f"{rows[0]['name']},mdm,d16l1,1,256,1,256,1e9,9.9\n"
                   "ar-d16l1-U512-E1,ar,d16l1,1,512,1,512,1e9,3.0\n")
  subprocess.run([sys.executable, "-m", "diffusionlm.scaling", "collect", f"--root={root}",
                  f"--merge_csv={older}", f"--csv={tmp_path / 'merged.csv'}"],
                 check=True, cwd=REPO, capture_output=True)
  merged = sweep.read_csv(str(tmp_path / "merged.csv"))
  assert merged[:len(rows)] == by_name and len(merged) == len(rows) + 1
  assert merged[-1]["name"] == "mdm-d16l1-U256-E9" and merged[-1]["best_bits_per_token"] == 3.5


# Two laws with the paper's repetition half-lives (AR ~15, diffusion ~500 epochs).
LAWS = {"ar": fit_lib.FitResult(E=1.8, A=400.0, B=400.0, alpha=0.34, beta=0.28, rd_star=15.0),
        "mdm": fit_lib.FitResult(E=1.9, A=450.0, B=450.0, alpha=0.34, beta=0.28,
                                 rd_star=500.0)}


def test_cli_fit_and_plot_on_a_synthetic_table(tmp_path):
  rows = []
  for objective, law in LAWS.items():
    for n in (1e6, 3e6, 1e7):
      for u in (1e8, 1e9):
        for epochs in (0.5, 1, 4, 16, 64, 256):
          d = u * epochs
          loss = float(fit_lib.predict(law, n, d, u))
          rows.append({**dict.fromkeys(sweep.COLUMNS, 0), "name": f"{objective}{n}{u}{epochs}",
                       "objective": objective, "N": n, "U": u, "D": d, "epochs": epochs,
                       "flops": 6 * n * d, "best_bits_per_token": loss})
  sweep.write_csv(rows, str(tmp_path / "runs.csv"))
  cli = [sys.executable, "-m", "diffusionlm.scaling"]
  out = subprocess.run(cli + ["fit", f"--root={tmp_path}", "--fit_rn_star=false",
                              "--num_starts=4", "--num_resamples=3"],
                       check=True, cwd=REPO, capture_output=True, text=True).stdout
  with open(tmp_path / "fit.json") as f:
    saved = json.load(f)
  for objective, law in LAWS.items():
    got = saved["fits"][objective]
    assert got["rd_star"] == pytest.approx(law.rd_star, rel=0.01), objective
    assert got["alpha"] == pytest.approx(law.alpha, abs=0.01)
    assert got["r2"] > 0.999 and got["rn_star"] == "inf" and got["num_points"] == 36
  for u in (1e8, 1e9):  # The crossing of the true laws, found from the fitted ones.
    want = fit_lib.critical_compute(LAWS["ar"], LAWS["mdm"], u)
    assert saved["critical_compute"][f"{u:g}"] == pytest.approx(want, rel=0.05)
  assert "R_D*=" in out and "C_crit(U=1e+08)" in out
  law = saved["critical_compute_law"]  # The true laws' C_crit(U) exponent, found again.
  want = fit_lib.critical_compute_law(LAWS["ar"], LAWS["mdm"], law["unique_tokens"])
  assert law["exponent"] == pytest.approx(want.exponent, rel=0.01)
  lo, hi = saved["intervals"]["ar"]["alpha"]
  assert lo <= saved["fits"]["ar"]["alpha"] <= hi
  # Stage 1: the single-epoch runs not over-parametrised (N = 1e7 is, at U = 1e8).
  below = [r["name"] for r in rows if r["objective"] == "ar" and r["epochs"] <= 1 and
           r["N"] <= fit_lib.unique_params(LAWS["ar"], min(r["U"], r["D"]))]
  assert sorted(saved["stages"]["ar"]["stage1"]) == sorted(below) and len(below) == 10
  subprocess.run(cli + ["plot", f"--root={tmp_path}"], check=True, cwd=REPO, capture_output=True)
  for name in ("loss_vs_epochs", "loss_vs_flops", "fit", "critical_compute"):
    with open(tmp_path / "plots" / f"{name}.png", "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_noise_table_and_plot(tmp_path):
  """Relative increase over the clean run of the same cell, per objective; the CLI's plot
  writes the table and figure when the runs differ in noise rate."""
  rows = [{**dict.fromkeys(sweep.COLUMNS, 0), "name": f"{o}-noise{r}-d32l2-U8k-E1",
           "objective": o, "variant": f"noise{r}", "model": "d32l2", "N": 1, "U": 8192,
           "D": 8192, "epochs": 1, "noise_rate": r, "best_bits_per_token": loss}
          for o, losses in (("ar", (2.0, 2.02, 2.2)), ("mdm", (3.0, 3.0, 3.6)))
          for r, loss in zip((0.0, 0.1, 0.2), losses)]
  table = plot.noise_table([{**r, "loss": r["best_bits_per_token"]} for r in rows])
  increase = {(t["objective"], t["noise_rate"]): t["relative_increase"] for t in table}
  assert increase == pytest.approx({("ar", 0.0): 0.0, ("ar", 0.1): 0.01, ("ar", 0.2): 0.1,
                                    ("mdm", 0.0): 0.0, ("mdm", 0.1): 0.0, ("mdm", 0.2): 0.2})
  sweep.write_csv(rows, str(tmp_path / "runs.csv"))
  out = subprocess.run([sys.executable, "-m", "diffusionlm.scaling", "plot",
                        f"--root={tmp_path}"], check=True, cwd=REPO, capture_output=True,
                       text=True).stdout
  assert "| mdm | d32l2 | 8192 | 1 | 0 | 0.2 | 3.6000 | +20.00% |" in out
  assert (tmp_path / "plots" / "noise_rate.md").read_text() in out
  with open(tmp_path / "plots" / "noise_rate.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_usage_errors(tmp_path):
  res = subprocess.run([sys.executable, "-m", "diffusionlm.scaling", "train",
                        f"--root={tmp_path}"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode != 0 and "sweep|collect|fit|plot" in res.stderr
  with pytest.raises(ValueError, match="no such CSV"):
    sweep.read_csv(str(tmp_path / "runs.csv"))
  (tmp_path / "bad.csv").write_text("objective,N,U,D,epochs\nar,1e6,1e8,x,1\n")
  with pytest.raises(ValueError, match=r"bad.csv, line 2: D='x' is not a number"):
    sweep.read_csv(str(tmp_path / "bad.csv"))
