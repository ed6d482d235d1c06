"""Checkpoint import: converted LLaDA / LLaMA weights give the original models' logits.

Default suite (needs only `safetensors`): bad checkpoints raise errors naming the tensor or
setting; a tiny random LLaDA checkpoint, converted and loaded with `load_run`, matches an
independent numpy implementation of LLaDA's forward pass, and our mask id V reproduces
LLaDA's in-vocabulary mask token. `-m convert` (needs torch + transformers): the same
checkpoint matches `transformers`' Llama made bidirectional, and a LlamaForCausalLM saved by
`save_pretrained` matches itself after conversion, causal.
"""
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")

from configs import base  # pylint: disable=g-import-not-at-top
from diffusionlm.train import convert
from diffusionlm.train import load

# A tiny LLaDA: mask id inside the vocabulary, embedding padded beyond it (E > V), GQA.
V, E, MASK_ID = 24, 28, 21
D, LAYERS, N, K, F, THETA, EPS = 32, 2, 4, 2, 48, 500000.0, 1e-5
H = D // N
TOKENS_BxL = np.array([[3, 7, 21, 0, 12, 19, 5, 21], [1, 2, 3, 4, 5, 6, 7, 8]], np.int32)


def llada_config(**overrides) -> dict:
  """A config.json in LLaDA's format (configuration_llada.py field names)."""
  cfg = {
      "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
      "block_type": "llama", "layer_norm_type": "rms", "rope": True, "alibi": False,
      "include_bias": False, "include_qkv_bias": False, "scale_logits": False,
      "input_emb_norm": False, "attention_layer_norm": False, "block_group_size": 1,
      "weight_tying": False, "d_model": D, "n_heads": N, "n_kv_heads": K, "n_layers": LAYERS,
      "mlp_hidden_size": F, "mlp_ratio": 4, "vocab_size": V, "embedding_size": E,
      "mask_token_id": MASK_ID, "eos_token_id": 20, "rope_theta": THETA,
      "rms_norm_eps": EPS, "max_sequence_length": 64,
  }
  cfg.update(overrides)
  return cfg


def llada_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights under LLaDA's names and torch shapes (modeling_llada.py)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)
  scale = lambda: (1.0 + 0.2 * rng.standard_normal(D)).astype(np.float32)
  t = {"model.transformer.wte.weight": normal(E, D),
       "model.transformer.ff_out.weight": normal(E, D),
       "model.transformer.ln_f.weight": scale()}
  for i in range(LAYERS):
    p = f"model.transformer.blocks.{i}."
    t.update({p + "q_proj.weight": normal(N * H, D), p + "k_proj.weight": normal(K * H, D),
              p + "v_proj.weight": normal(K * H, D), p + "attn_out.weight": normal(D, N * H),
              p + "ff_proj.weight": normal(F, D), p + "up_proj.weight": normal(F, D),
              p + "ff_out.weight": normal(D, F), p + "attn_norm.weight": scale(),
              p + "ff_norm.weight": scale()})
  return t


def write_tokenizer(directory: str) -> None:
  """A word-level tokenizer.json with 22 ids (< V: the converted spec pads it to V)."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  vocab = {f"w{i}": i for i in range(20)}
  vocab.update({"<|endoftext|>": 20, "[UNK]": 21})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(os.path.join(directory, "tokenizer.json"))


def write_llada(directory, cfg=None, tensors=None, num_shards: int = 2) -> str:
  """A LLaDA checkpoint directory: config.json, safetensors shards + index, tokenizer."""
  os.makedirs(directory, exist_ok=True)
  tensors = llada_tensors() if tensors is None else tensors
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(llada_config() if cfg is None else cfg, f)
  names = sorted(tensors)
  weight_map = {}
  for s in range(num_shards):
    file = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
    shard = {n: tensors[n] for n in names[s::num_shards]}
    safetensors_numpy.save_file(shard, os.path.join(directory, file))
    weight_map.update({n: file for n in shard})
  with open(os.path.join(directory, convert.INDEX_FILE), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  write_tokenizer(directory)
  return str(directory)


def tiny_config(hf_dir: str):
  """Base config on a (data=2, fsdp=2, tensor=2) mesh with the checkpoint's shape."""
  hf = convert.read_hf_config(hf_dir)
  c = base.get_config()
  c.model.update(hf.model)
  c.objective = "ar" if hf.causal else "mdm"
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.global_batch_size = 8
  c.data.seq_len = 8
  return c


def converted_logits(hf_dir: str, out_dir: str, tokens_BxL):
  """Converts, reloads with load_run (as init_from / RL would) and runs the model."""
  convert.convert_checkpoint(hf_dir, out_dir, tiny_config(hf_dir))
  run = load.load_run(out_dir)
  apply = jax.jit(run.apply_fn)
  return run, apply, np.asarray(apply(run.params, tokens_BxL))


def numpy_llada_logits(t: dict, tokens_BxL) -> np.ndarray:
  """LLaDA's forward pass (modeling_llada.py, LLaDALlamaBlock, no attention mask) in float64
  numpy, straight from its tensors: an implementation independent of ours."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  B, L = tokens_BxL.shape
  rms = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w
  angle_LxH = np.arange(L)[:, None] * np.tile(THETA ** (-np.arange(0, H, 2) / H), 2)

  def rope(x_BxNxLxH):  # rotate_half: (x1, x2) -> (-x2, x1).
    x1, x2 = np.split(x_BxNxLxH, 2, axis=-1)
    return x_BxNxLxH * np.cos(angle_LxH) + np.concatenate([-x2, x1], -1) * np.sin(angle_LxH)

  heads = lambda y, n: y.reshape(B, L, n, H).transpose(0, 2, 1, 3)
  x = t["model.transformer.wte.weight"][tokens_BxL]
  for i in range(LAYERS):
    w = lambda name: t[f"model.transformer.blocks.{i}.{name}.weight"]
    h = rms(x, w("attn_norm"))
    q = rope(heads(h @ w("q_proj").T, N))
    k = np.repeat(rope(heads(h @ w("k_proj").T, K)), N // K, axis=1)  # repeat_interleave
    v = np.repeat(heads(h @ w("v_proj").T, K), N // K, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(H)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    x = x + (p @ v).transpose(0, 2, 1, 3).reshape(B, L, D) @ w("attn_out").T
    h = rms(x, w("ff_norm"))
    gate = h @ w("ff_proj").T
    x = x + (gate / (1 + np.exp(-gate)) * (h @ w("up_proj").T)) @ w("ff_out").T
  return rms(x, t["model.transformer.ln_f.weight"]) @ t["model.transformer.ff_out.weight"].T


@dataclasses.dataclass
class Converted:
  tensors: dict  # The LLaDA checkpoint's tensors.
  run: load.LoadedRun  # The converted run, reloaded.
  apply: Any  # jax.jit(run.apply_fn), compiled once.
  logits_BxLxV: np.ndarray  # Our logits of TOKENS_BxL.


@pytest.fixture(scope="module")
def llada(tmp_path_factory) -> Converted:
  """The tiny LLaDA checkpoint, converted and reloaded once for the module."""
  root = tmp_path_factory.mktemp("llada")
  tensors = llada_tensors()
  hf_dir = write_llada(str(root / "hf"), tensors=tensors)
  return Converted(tensors, *converted_logits(hf_dir, str(root / "run"), TOKENS_BxL))


def test_llada_matches_numpy_reference(llada):
  """Converted logits over the V real ids == LLaDA's forward pass from the raw tensors."""
  assert llada.logits_BxLxV.shape == (2, 8, V)
  want = numpy_llada_logits(llada.tensors, TOKENS_BxL)[..., :V]
  np.testing.assert_allclose(llada.logits_BxLxV, want, atol=1e-4, rtol=1e-4)
  assert not llada.run.model_config.causal and llada.run.config.objective == "mdm"


def test_our_mask_id_reproduces_llada_mask_token(llada):
  """Feeding our mask id V gives exactly what LLaDA computes for its mask token MASK_ID."""
  run = llada.run
  ours_BxL = np.where(TOKENS_BxL == MASK_ID, run.model_config.mask_id, TOKENS_BxL)
  assert run.model_config.mask_id == V and (ours_BxL == V).any()
  ours = np.asarray(llada.apply(run.params, ours_BxL))
  np.testing.assert_allclose(ours, llada.logits_BxLxV, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(run.params["embedding"])[V],
                                llada.tensors["model.transformer.wte.weight"][MASK_ID])


def test_converted_run_is_a_run_directory(llada):
  """The run's tokenizer is the copied tokenizer.json sized to V; params are sharded."""
  run = llada.run
  assert run.tokenizer.vocab_size == V and run.tokenizer.eos_id == 20
  assert run.tokenizer.encode("w3 w7") == [3, 7]
  query = run.params["block_0"]["attn"]["query"]
  assert query.shape == (D, N, H)
  assert query.sharding.spec == run.setup.abstract_state.params["block_0"]["attn"][
      "query"].sharding.spec
  assert query.addressable_shards[0].data.shape == (D // 2, N // 2, H)  # fsdp=2, tensor=2.


def _error(tmp_path, cfg=None, tensors=None) -> str:
  hf_dir = write_llada(str(tmp_path / "hf"), cfg=cfg, tensors=tensors, num_shards=1)
  with pytest.raises(ValueError) as e:
    convert.check_tensors(hf_dir, convert.read_hf_config(hf_dir))
  return str(e.value)


def test_unknown_tensor_is_named(tmp_path):
  tensors = llada_tensors()
  tensors["model.transformer.blocks.0.q_norm.weight"] = np.ones(D, np.float32)
  assert "model.transformer.blocks.0.q_norm.weight" in _error(tmp_path, tensors=tensors)


def test_missing_tensor_is_named(tmp_path):
  tensors = llada_tensors()
  del tensors["model.transformer.blocks.1.up_proj.weight"]
  message = _error(tmp_path, tensors=tensors)
  assert "missing tensors ['model.transformer.blocks.1.up_proj.weight']" in message


def test_shape_mismatch_is_named(tmp_path):
  tensors = llada_tensors()
  tensors["model.transformer.blocks.1.k_proj.weight"] = np.zeros((N * H, D), np.float32)
  message = _error(tmp_path, tensors=tensors)
  assert "'model.transformer.blocks.1.k_proj.weight' has shape (32, 32)" in message
  assert f"expected ({K * H}, {D})" in message


@pytest.mark.parametrize("key, value", [("include_bias", True), ("block_type", "sequential"),
                                        ("scale_logits", True)])
def test_unsupported_setting_is_named(tmp_path, key, value):
  os.makedirs(tmp_path / "hf")
  with open(tmp_path / "hf" / "config.json", "w") as f:
    json.dump(llada_config(**{key: value}), f)
  with pytest.raises(ValueError, match=f"{key}={value!r} is not supported"):
    convert.read_hf_config(str(tmp_path / "hf"))


def test_config_disagreeing_with_checkpoint_is_an_error(tmp_path):
  hf = convert.read_hf_config(write_llada(str(tmp_path / "hf"), num_shards=1))
  c = base.get_config()
  c.model.update(hf.model)
  c.model.num_layers = 32
  with pytest.raises(ValueError, match="config.model.num_layers=32 disagrees"):
    convert.run_config(hf, str(tmp_path / "out"), c)
  c.model.num_layers, c.objective = LAYERS, "ar"
  with pytest.raises(ValueError, match="bidirectional"):
    convert.run_config(hf, str(tmp_path / "out"), c)


# ---- Against transformers (pytest -m convert; needs torch + transformers) -----------------


def _torch_llama(vocab_size, *, tie: bool = False, seed: int = 0):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=vocab_size, hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
      num_attention_heads=N, num_key_value_heads=K, rms_norm_eps=EPS,
      rope_parameters={"rope_type": "default", "rope_theta": THETA},
      tie_word_embeddings=tie, max_position_embeddings=64, attn_implementation="eager")
  return torch, transformers.LlamaForCausalLM(config).eval()


@pytest.mark.convert
def test_llada_matches_transformers_llama_bidirectional(llada):
  """transformers' Llama loaded with LLaDA's tensors, attention made bidirectional by an
  all-zeros 4-D additive mask, gives our converted logits (and the same mask equivalence)."""
  torch, model = _torch_llama(E)
  names = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head",
           "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
           "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
           "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out_block": "mlp.down_proj",
           "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
  state = {}
  for name, value in llada.tensors.items():
    parts = name.removeprefix("model.transformer.").removesuffix(".weight").split(".")
    if parts[0] == "blocks":
      key = names["ff_out_block" if parts[2] == "ff_out" else parts[2]]
      state[f"model.layers.{parts[1]}.{key}.weight"] = torch.from_numpy(value)
    else:
      state[names[parts[0]] + ".weight"] = torch.from_numpy(value)
  model.load_state_dict(state, strict=True)
  with torch.no_grad():
    ids = torch.from_numpy(TOKENS_BxL.astype(np.int64))
    no_mask = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
    want = model(input_ids=ids, attention_mask=no_mask).logits.numpy()
  np.testing.assert_allclose(llada.logits_BxLxV, want[..., :V], atol=1e-4, rtol=1e-4)


@pytest.mark.convert
@pytest.mark.parametrize("tie", [False, True])
def test_llama_checkpoint_matches_transformers_causal(tmp_path, tie):
  """A LlamaForCausalLM written by save_pretrained (sharded), converted, equals itself."""
  torch, model = _torch_llama(V, tie=tie, seed=1)
  with torch.no_grad():  # Norm scales away from 1, so a mixed-up norm would show.
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.2 * torch.randn_like(p))
  hf_dir = str(tmp_path / "hf")
  model.save_pretrained(hf_dir, max_shard_size="40KB")
  assert os.path.isfile(os.path.join(hf_dir, convert.INDEX_FILE))
  write_tokenizer(hf_dir)
  hf = convert.read_hf_config(hf_dir)
  assert hf.causal and hf.model["tie_embeddings"] == tie
  tokens_BxL = TOKENS_BxL % V
  run, _, logits_BxLxV = converted_logits(hf_dir, str(tmp_path / "run"), tokens_BxL)
  assert run.model_config.causal and run.config.objective == "ar"
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(tokens_BxL.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(logits_BxLxV, want, atol=1e-4, rtol=1e-4)


def test_scanned_model_loads_the_checkpoint_and_gives_the_same_logits(llada, tmp_path):
  """scan_layers=True: the importer stacks the blocks (load_params) and the converted
  (unrolled) checkpoint loads into the scanned model (load_run converts on load)."""
  from diffusionlm.models import layer_layout  # pylint: disable=g-import-not-at-top
  hf_dir = write_llada(str(tmp_path / "hf"), tensors=llada.tensors)
  abstract = layer_layout.to_layout(llada.run.setup.abstract_state.params, layer_layout.SCANNED)
  stacked = convert.load_params(hf_dir, convert.read_hf_config(hf_dir), abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(stacked),
               jax.device_get(layer_layout.to_layout(llada.run.params, layer_layout.SCANNED)))
  out_dir = str(tmp_path / "run")
  convert.convert_checkpoint(hf_dir, out_dir, tiny_config(hf_dir))
  model = llada.run.config.model.to_dict() | {"scan_layers": True}
  scanned = load.load_run(out_dir, model=model)
  assert "blocks" in scanned.params
  np.testing.assert_allclose(np.asarray(jax.jit(scanned.apply_fn)(scanned.params, TOKENS_BxL)),
                             llada.logits_BxLxV, atol=1e-5, rtol=1e-5)
