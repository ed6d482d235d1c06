"""Run-directory helpers: the one reader of config.json, the compatibility rule, jsonl."""
import json

import pytest

from diffusionlm import config_defaults
from diffusionlm.train import run_dir


def _write_config(workdir, config_dict):
  with open(workdir / "config.json", "w") as f:
    json.dump(config_dict, f)


def _resolved(**model):
  c = config_defaults.get_config()
  c.model.update({"vocab_size": 11, "causal": False, **model})
  return c


def test_read_config_fills_defaults_and_derives_causal_of_old_runs(tmp_path):
  """A config.json written before model.causal and logits_chunk_size existed still loads:
  the defaults fill the gaps and the objective says whether the model is causal."""
  saved = config_defaults.get_config().to_dict()
  saved["objective"] = "ar"
  for field in ("causal", "logits_chunk_size"):
    del saved["model"][field]
  _write_config(tmp_path, saved)
  config = run_dir.read_config(str(tmp_path))
  assert config.model.causal is True and config.model.logits_chunk_size == 0
  assert run_dir.read_config(str(tmp_path / "absent")) is None


def test_run_time_fields_may_change_on_resume_the_model_may_not(tmp_path):
  run_dir.write_config(str(tmp_path), run_dir.start(str(tmp_path), _resolved()))
  run_dir.check_compatible(str(tmp_path), _resolved(dtype="bfloat16", remat="full",
                                                    logits_chunk_size=4))
  with pytest.raises(ValueError, match=r"model.d_model: 128 -> 64"):
    run_dir.check_compatible(str(tmp_path), _resolved(d_model=64))
  with pytest.raises(ValueError, match=r"model.causal: False -> True"):
    run_dir.check_compatible(str(tmp_path), _resolved(causal=True))


def test_init_from_a_different_model_names_the_fields(tmp_path):
  run_dir.write_config(str(tmp_path), _resolved().to_dict())
  config = _resolved(d_model=64, dtype="bfloat16")
  config.init_from = str(tmp_path)
  with pytest.raises(ValueError, match=r"init_from=.* holds a different model "
                                       r"\(model.d_model: 128 -> 64\)"):
    run_dir.check_init_from(config)
  config.model.d_model = 128
  run_dir.check_init_from(config)  # Run-time fields (dtype) may differ.


def test_a_changed_num_train_steps_on_resume_is_said(tmp_path):
  config = _resolved()
  run_dir.write_config(str(tmp_path), config.to_dict())
  assert run_dir.schedule_change(str(tmp_path), config, resumed_step=5) is None
  config.num_train_steps *= 2
  message = run_dir.schedule_change(str(tmp_path), config, resumed_step=5)
  assert "from 1000 to 2000" in message and "resumed step 5" in message


def test_read_jsonl_names_a_bad_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  assert run_dir.read_jsonl(str(path)) == []
  path.write_text('{"step": 1}\n\n{"step": 2\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 3: not JSON"):
    run_dir.read_jsonl(str(path))
