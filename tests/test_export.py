"""Checkpoint export: a run written as a Hugging Face LLaDA / LLaMA checkpoint and imported
back is the same model, and transformers' Llama computes its logits.

Default suite (needs only safetensors + tokenizers): import(export(run)) gives identical
parameters and logits (a masked-diffusion run through LLaDA's format, a causal run through
LLaMA's), the exported tokenizer.json encodes and decodes as the run's char tokenizer, and bad
input is named. `-m convert` (torch + transformers): transformers' Llama made bidirectional
reproduces the exported LLaDA checkpoint's logits; `LlamaForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load the causal export as it is.
"""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors.numpy")

import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-order
import toy_models  # pylint: disable=g-import-not-at-top,wrong-import-order
from diffusionlm.data import tokenizers
from diffusionlm.train import convert, export, load

TEXT = "To be, or not\nto be: ~{x}"
MODELS = {  # GQA and two layers for the diffusion run; tied embeddings for the causal one.
    "mdm": dict(num_layers=2, num_heads=4, num_kv_heads=2, d_model=16, mlp_dim=24),
    "ar": dict(tie_embeddings=True, rope_theta=500.0, norm_eps=1e-6),
}


@pytest.fixture(scope="module", params=["mdm", "ar"])
def exported(request, tmp_path_factory):
  """(run, hf_dir, reimported run, tokens_BxL): a random run, exported in 2+ shards, imported
  back with the importer (diffusionlm/train/convert.py) and both loaded with load_run."""
  root = tmp_path_factory.mktemp(request.param)
  workdir = toy_models.write_random_run(str(root / "run"), objective=request.param,
                                        model=MODELS[request.param])
  hf_dir = str(root / "hf")
  out = export.export_run(workdir, hf_dir, max_shard_bytes=4096)
  assert out["num_shards"] >= 2 and out["family"] == ("llada" if request.param == "mdm"
                                                      else "llama")
  convert.convert_checkpoint(hf_dir, str(root / "back"), devices=jax.devices()[:1])
  run, back = load.load_run(workdir), load.load_run(str(root / "back"))
  tokens_BxL = np.array([run.tokenizer.encode("To be, or not"),
                         run.tokenizer.encode("that is the q")], np.int32)
  return run, hf_dir, back, tokens_BxL


def test_import_of_export_is_the_same_model(exported):
  run, _, back, tokens_BxL = exported
  heads = run.model_config.num_kv_heads or run.model_config.num_heads  # 0 = num_heads.
  assert back.model_config == dataclasses.replace(run.model_config, num_kv_heads=heads)
  V = run.model_config.vocab_size
  flat = lambda p: {"/".join(map(str, k)): np.asarray(v) for k, v in
                    jax.tree_util.tree_flatten_with_path(p)[0]}
  ours, theirs = flat(run.params), flat(back.params)
  assert ours.keys() == theirs.keys()
  for name, value in ours.items():
    if name.endswith("'embedding']") and run.model_config.causal:
      # LLaMA has no mask row: the importer sets it to the mean; the AR model never reads it.
      np.testing.assert_array_equal(theirs[name][:V], value[:V], err_msg=name)
      np.testing.assert_allclose(theirs[name][V], value[:V].mean(0), rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_array_equal(theirs[name], value, err_msg=name)
  tokens_BxL = np.concatenate([tokens_BxL, np.full((1, tokens_BxL.shape[1]), V)]
                              ) if not run.model_config.causal else tokens_BxL
  np.testing.assert_array_equal(np.asarray(jax.jit(back.apply_fn)(back.params, tokens_BxL)),
                                np.asarray(jax.jit(run.apply_fn)(run.params, tokens_BxL)))


def test_exported_tokenizer_is_the_runs(exported):
  run, hf_dir, back, _ = exported
  hf_tok = tokenizers.HFTokenizer(hf_dir)
  char = tokenizers.CharTokenizer()
  assert hf_tok.encode(TEXT) == char.encode(TEXT)
  ids = char.encode(TEXT) + [char.eos_id, char.pad_id, char.bos_id]
  assert hf_tok.decode(ids) == char.decode(ids) == TEXT + "<eos><pad><bos>"
  assert (hf_tok.eos_id, hf_tok.pad_id, hf_tok.bos_id) == (char.eos_id, char.pad_id, char.bos_id)
  assert back.tokenizer.encode(TEXT) == run.tokenizer.encode(TEXT)
  with open(os.path.join(hf_dir, "config.json")) as f:
    cfg = json.load(f)
  assert cfg["eos_token_id"] == char.eos_id
  if not run.model_config.causal:
    assert cfg["mask_token_id"] == cfg["vocab_size"] == run.model_config.vocab_size


def _export_cli(*args):
  return cli_runs.run_module("diffusionlm.export", *args)


def test_bad_input_is_named(tmp_path):
  """The CLI turns errors into a usage message; the library names each problem."""
  code, output = _export_cli(f"--workdir={tmp_path}", f"--out={tmp_path / 'hf'}")
  assert code != 0 and "has no config.json" in output, output
  workdir = toy_models.write_random_run(str(tmp_path / "run"))
  with pytest.raises(ValueError, match="already holds a config.json"):
    export.export_run(workdir, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  os.makedirs(tmp_path / "bare")
  for tokenizer, error in [("sentencepiece:/tmp/spm.model", "cannot be exported"),
                           ("char", "has no checkpoint yet")]:
    cfg["data"]["tokenizer"] = tokenizer
    with open(tmp_path / "bare" / "config.json", "w") as f:
      json.dump(cfg, f)
    with pytest.raises(ValueError, match=error):
      export.export_run(str(tmp_path / "bare"), str(tmp_path / "hf"))


# ---- Against transformers (pytest -m convert; needs torch + transformers) -----------------


@pytest.mark.convert
def test_transformers_llama_reproduces_the_export(exported):
  """LLaDA export: its tensors renamed to Llama's by the importer's table, in a Llama made
  bidirectional (an all-zeros 4-D mask), give our logits. LLaMA export: from_pretrained."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  run, hf_dir, _, tokens_BxL = exported
  ids = torch.from_numpy(tokens_BxL.astype(np.int64))
  want = np.asarray(jax.jit(run.apply_fn)(run.params, tokens_BxL))
  if run.model_config.causal:
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tokenizer(TEXT, add_special_tokens=False)["input_ids"] == run.tokenizer.encode(TEXT)
    assert tokenizer.eos_token_id == run.tokenizer.eos_id
    with torch.no_grad():
      got = model(input_ids=ids).logits.numpy()
  else:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    with open(os.path.join(hf_dir, convert.INDEX_FILE)) as f:
      files = set(json.load(f)["weight_map"].values())
    tensors = {k: v for file in files for k, v in load_file(os.path.join(hf_dir, file)).items()}
    llama_name = {}  # LLaDA's tensor name -> Llama's, from the importer's one table.
    for ours, llada in convert.TENSOR_NAMES[convert.LLADA].items():
      for i in range(run.model_config.num_layers):
        llama_name[llada.format(i=i)] = convert.TENSOR_NAMES[convert.LLAMA][ours].format(i=i)
    hf = convert.read_hf_config(hf_dir)
    m = hf.model
    config = transformers.LlamaConfig(
        vocab_size=hf.embedding_rows, hidden_size=m["d_model"], intermediate_size=m["mlp_dim"],
        num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"],
        num_key_value_heads=m["num_kv_heads"], rms_norm_eps=m["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": m["rope_theta"]},
        tie_word_embeddings=m["tie_embeddings"], attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict({llama_name[k]: torch.from_numpy(v) for k, v in tensors.items()},
                          strict=True)
    with torch.no_grad():
      no_mask = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
      got = model(input_ids=ids, attention_mask=no_mask).logits.numpy()
    np.testing.assert_array_equal(got[..., run.model_config.vocab_size], 0.0)  # Mask row.
    got = got[..., :run.model_config.vocab_size]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
