"""Import Hugging Face LLaDA and LLaMA-family checkpoints into our parameters.

A checkpoint directory holds `config.json`, the weights as `model.safetensors` or as shards
listed in `model.safetensors.index.json`, and `tokenizer.json`. Two families are read:

  llada  LLaDA (Nie et al. 2025; GSAI-ML/LLaDA-8B-Base / -Instruct): `LLaDAModelLM` with
         `block_type: llama`, names `model.transformer.{wte, blocks.{i}.*, ln_f, ff_out}`.
         Bidirectional: it becomes a masked-diffusion model (`causal=False`).
  llama  `LlamaForCausalLM` (and Mistral without sliding window), names
         `model.{embed_tokens, layers.{i}.*, norm}`, `lm_head`. Causal (`objective="ar"`).

Both are pre-norm RMSNorm / SwiGLU / RoPE transformers without biases, like ours. Layouts
(torch `Linear.weight` is (out, in); ours are (in, ...); D model, N / K query / kv heads,
H head dim, F mlp, E stored embedding rows >= V vocabulary):

  q, k, v (N*H or K*H, D) -> (D, N or K, H)       o (D, N*H) -> (N, H, D)
  gate, up (F, D)        -> (D, F)                down (D, F) -> (F, D)
  embedding (E, D)       -> (V + 1, D)            head (E, D) -> (D, V)
  norms (D,)             -> (D,)

Both families store q and k in the rotate-half RoPE layout (dimension i pairs with i + H/2;
Hugging Face permutes Meta's interleaved LLaMA weights into it, LLaDA's own rotate_half uses
it), which is ours, so no permutation is needed; inv_freq = theta^(-2i/H) in both.

The mask token. Our model's mask is always the extra id V = vocab_size (embedding row V),
while LLaDA keeps its mask token inside its vocabulary (LLaDA-8B: id 126336 of V = 126464).
The converter copies LLaDA's embedding row `mask_token_id` into row V, so feeding our mask id
reproduces LLaDA's mask embedding exactly (and row 126336 stays, so feeding 126336 gives the
same result). The head keeps LLaDA's logit for id 126336: LLaDA was trained never to predict
it, our tokenizer never emits it (unless a text spells `<|mdm_mask|>` literally), and our
samplers unmask with our id V, so 126336 is an ordinary, practically never sampled id. LLaMA
checkpoints have no mask token; their row V is the mean of the V embedding rows.

Loading is streamed: tensor names and shapes are checked from the safetensors headers first
(unknown, missing or mis-shaped tensors are errors naming the tensor), then one tensor at a
time is read, laid out, and placed on the mesh in its sharding, so no host copy of the whole
model is made. `convert_checkpoint` writes a run directory that `config.init_from` and
`diffusionlm.train.load.load_run` read: WORKDIR/config.json, WORKDIR/tokenizer/ and an orbax
checkpoint WORKDIR/checkpoints/0 whose "state" item holds {"params": ...}.
"""
import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping

from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from diffusionlm import config_defaults
from diffusionlm.data import tokenizers
from diffusionlm.models import layer_layout, transformer
from diffusionlm.train import checkpoint, sharding

LLADA, LLAMA = "llada", "llama"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Stored buffers that are not parameters (old LLaMA checkpoints keep RoPE's inv_freq).
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")

# Our parameter (a path in the params tree; "{i}" = layer) -> the checkpoint's tensor name.
TENSOR_NAMES = {
    LLADA: {
        "embedding": "model.transformer.wte.weight",
        "head": "model.transformer.ff_out.weight",
        "final_norm/scale": "model.transformer.ln_f.weight",
        "block_{i}/attn/query": "model.transformer.blocks.{i}.q_proj.weight",
        "block_{i}/attn/key": "model.transformer.blocks.{i}.k_proj.weight",
        "block_{i}/attn/value": "model.transformer.blocks.{i}.v_proj.weight",
        "block_{i}/attn/out": "model.transformer.blocks.{i}.attn_out.weight",
        "block_{i}/mlp/gate": "model.transformer.blocks.{i}.ff_proj.weight",
        "block_{i}/mlp/up": "model.transformer.blocks.{i}.up_proj.weight",
        "block_{i}/mlp/down": "model.transformer.blocks.{i}.ff_out.weight",
        "block_{i}/attn_norm/scale": "model.transformer.blocks.{i}.attn_norm.weight",
        "block_{i}/mlp_norm/scale": "model.transformer.blocks.{i}.ff_norm.weight",
    },
    LLAMA: {
        "embedding": "model.embed_tokens.weight",
        "head": "lm_head.weight",
        "final_norm/scale": "model.norm.weight",
        "block_{i}/attn/query": "model.layers.{i}.self_attn.q_proj.weight",
        "block_{i}/attn/key": "model.layers.{i}.self_attn.k_proj.weight",
        "block_{i}/attn/value": "model.layers.{i}.self_attn.v_proj.weight",
        "block_{i}/attn/out": "model.layers.{i}.self_attn.o_proj.weight",
        "block_{i}/mlp/gate": "model.layers.{i}.mlp.gate_proj.weight",
        "block_{i}/mlp/up": "model.layers.{i}.mlp.up_proj.weight",
        "block_{i}/mlp/down": "model.layers.{i}.mlp.down_proj.weight",
        "block_{i}/attn_norm/scale": "model.layers.{i}.input_layernorm.weight",
        "block_{i}/mlp_norm/scale": "model.layers.{i}.post_attention_layernorm.weight",
    },
}


@dataclasses.dataclass(frozen=True)
class HFConfig:
  """A checkpoint's config.json in our terms."""
  family: str  # LLADA | LLAMA
  model: dict  # The config.model shape fields (vocab_size, d_model, ..., tie_embeddings).
  embedding_rows: int  # E: rows of the stored embedding and head (>= vocab_size).
  mask_token_id: int | None  # LLaDA's in-vocabulary mask id; None for LLaMA.

  @property
  def causal(self) -> bool:
    return self.family == LLAMA


def _settings_error(path: str, key: str, value, allowed) -> ValueError:
  return ValueError(f"{path}: {key}={value!r} is not supported (this architecture needs "
                    f"{' or '.join(repr(a) for a in allowed)}).")


def _check_settings(cfg: Mapping, path: str, required: Mapping, optional: Mapping) -> None:
  """`required` keys must be present with an allowed value; `optional` ones may be absent."""
  for key, allowed in required.items():
    if key not in cfg:
      raise ValueError(f"{path}: missing field {key!r} (this architecture needs "
                       f"{' or '.join(repr(a) for a in allowed)}).")
  for key, allowed in {**required, **optional}.items():
    if key in cfg and cfg[key] not in allowed:
      raise _settings_error(path, key, cfg[key], allowed)


def _field(cfg: Mapping, path: str, key: str):
  if cfg.get(key) is None:
    raise ValueError(f"{path}: missing field {key!r}.")
  return cfg[key]


def _llada_config(cfg: Mapping, path: str) -> HFConfig:
  """LLaDA's `ModelConfig` fields (configuration_llada.py) -> our shape."""
  _check_settings(cfg, path, required={
      "block_type": ("llama",), "activation_type": ("silu",), "layer_norm_type": ("rms",),
      "rope": (True,), "include_bias": (False,),
  }, optional={
      "alibi": (False, None), "include_qkv_bias": (False, None),
      "scale_logits": (False, None), "input_emb_norm": (False, None),
      "attention_layer_norm": (False, None), "block_group_size": (1, None),
      "layer_norm_with_affine": (True, None), "bias_for_layer_norm": (False, None),
      "yarn": (False, None), "multi_query_attention": (False, None),
  })
  d_model, num_heads = _field(cfg, path, "d_model"), _field(cfg, path, "n_heads")
  vocab_size = _field(cfg, path, "vocab_size")
  rows = cfg.get("embedding_size") or vocab_size
  mask_token_id = _field(cfg, path, "mask_token_id")
  if rows < vocab_size or not 0 <= mask_token_id < rows:
    raise ValueError(f"{path}: embedding_size={rows}, vocab_size={vocab_size} and "
                     f"mask_token_id={mask_token_id} need vocab_size <= embedding_size and "
                     "mask_token_id < embedding_size.")
  model = dict(
      vocab_size=vocab_size, d_model=d_model, num_layers=_field(cfg, path, "n_layers"),
      num_heads=num_heads, num_kv_heads=cfg.get("n_kv_heads") or num_heads,
      mlp_dim=cfg.get("mlp_hidden_size") or _field(cfg, path, "mlp_ratio") * d_model,
      rope_theta=float(_field(cfg, path, "rope_theta")),
      norm_eps=float(_field(cfg, path, "rms_norm_eps")),
      tie_embeddings=bool(cfg.get("weight_tying", False)))
  return HFConfig(LLADA, model, rows, mask_token_id)


def _llama_config(cfg: Mapping, path: str) -> HFConfig:
  """`LlamaConfig` fields (transformers) -> our shape; RoPE scaling is not supported."""
  _check_settings(cfg, path, required={}, optional={
      "hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,),
      "rope_scaling": (None,), "sliding_window": (None,), "pretraining_tp": (1, None),
  })
  rope_theta = cfg.get("rope_theta")
  rope = cfg.get("rope_parameters")  # transformers >= 5 keeps rope_theta in here.
  if isinstance(rope, Mapping):
    if rope.get("rope_type", "default") != "default":
      raise _settings_error(path, "rope_parameters.rope_type", rope["rope_type"], ("default",))
    rope_theta = rope.get("rope_theta", rope_theta)
  d_model, num_heads = _field(cfg, path, "hidden_size"), _field(cfg, path, "num_attention_heads")
  if cfg.get("head_dim") not in (None, d_model // num_heads):
    raise _settings_error(path, "head_dim", cfg["head_dim"], (d_model // num_heads,))
  vocab_size = _field(cfg, path, "vocab_size")
  model = dict(
      vocab_size=vocab_size, d_model=d_model,
      num_layers=_field(cfg, path, "num_hidden_layers"), num_heads=num_heads,
      num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
      mlp_dim=_field(cfg, path, "intermediate_size"),
      rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
      norm_eps=float(_field(cfg, path, "rms_norm_eps")),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)))
  return HFConfig(LLAMA, model, vocab_size, None)


def read_hf_config(hf_dir: str) -> HFConfig:
  """Reads HF_DIR/config.json; ValueError names any setting our model cannot represent."""
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist: is {hf_dir!r} a Hugging Face checkpoint?")
  with open(path) as f:
    cfg = json.load(f)
  model_type = cfg.get("model_type")
  if model_type == "llada" or "LLaDAModelLM" in cfg.get("architectures", ()):
    return _llada_config(cfg, path)
  if model_type in ("llama", "mistral"):
    return _llama_config(cfg, path)
  raise ValueError(f"{path}: model_type={model_type!r} is not supported (expected 'llada', "
                   "'llama' or 'mistral').")


# ---- Layouts: checkpoint tensor <-> our parameter ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  """Where one checkpoint tensor goes: our parameter path, its stored shape, its layout
  (`to_ours`) and the inverse layout (`to_theirs`, which the exporter uses)."""
  path: tuple[str, ...]
  shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_theirs: Callable[[np.ndarray], np.ndarray]


def _heads_in(num_heads: int):
  """(heads*H, D) -> (D, heads, H), and back."""
  return (lambda w: w.T.reshape(w.shape[1], num_heads, -1),
          lambda w: w.reshape(w.shape[0], -1).T)


def _heads_out(num_heads: int):
  """(D, N*H) -> (N, H, D), and back."""
  return (lambda w: w.T.reshape(num_heads, -1, w.shape[0]),
          lambda w: w.reshape(-1, w.shape[-1]).T)


def _embedding(hf: HFConfig):
  """(E, D) -> (V + 1, D): the V real rows, then the mask row (module docstring); back:
  the V real rows, our mask row at `mask_token_id` (LLaDA), other rows zero."""
  V, E = hf.model["vocab_size"], hf.embedding_rows

  def to_ours(w_ExD):
    if hf.mask_token_id is not None:
      mask_row_D = w_ExD[hf.mask_token_id]
    else:
      mask_row_D = w_ExD[:V].astype(np.float32).mean(axis=0).astype(w_ExD.dtype)
    return np.concatenate([w_ExD[:V], mask_row_D[None]], axis=0)

  def to_theirs(w_V1xD):
    w_ExD = np.zeros((E, w_V1xD.shape[1]), w_V1xD.dtype)
    w_ExD[:V] = w_V1xD[:V]
    if hf.mask_token_id is not None:
      w_ExD[hf.mask_token_id] = w_V1xD[V]
    return w_ExD

  return to_ours, to_theirs


def _head(hf: HFConfig):
  """(E, D) -> (D, V): the rows of the V real ids; back: rows beyond V are zero."""
  V, E = hf.model["vocab_size"], hf.embedding_rows
  return (lambda w: w[:V].T,
          lambda w: np.concatenate([w.T, np.zeros((E - V, w.shape[0]), w.dtype)]))


def tensor_plan(hf: HFConfig) -> dict[str, Target]:
  """Every tensor the checkpoint must hold, by name, with its shape and our layout."""
  m = hf.model
  D, N, K, F = m["d_model"], m["num_heads"], m["num_kv_heads"], m["mlp_dim"]
  H, E = D // N, hf.embedding_rows
  transpose = (lambda w: w.T,) * 2
  same = (lambda w: w,) * 2
  layouts = {  # our parameter -> (stored shape, (layout, inverse layout))
      "embedding": ((E, D), _embedding(hf)),
      "head": ((E, D), _head(hf)),
      "final_norm/scale": ((D,), same),
      "attn/query": ((N * H, D), _heads_in(N)),
      "attn/key": ((K * H, D), _heads_in(K)),
      "attn/value": ((K * H, D), _heads_in(K)),
      "attn/out": ((D, N * H), _heads_out(N)),
      "mlp/gate": ((F, D), transpose),
      "mlp/up": ((F, D), transpose),
      "mlp/down": ((D, F), transpose),
      "attn_norm/scale": ((D,), same),
      "mlp_norm/scale": ((D,), same),
  }
  plan = {}
  for ours, theirs in TENSOR_NAMES[hf.family].items():
    if ours == "head" and m["tie_embeddings"]:
      continue
    shape, (to_ours, to_theirs) = layouts[ours.removeprefix("block_{i}/")]
    layers = range(m["num_layers"]) if "{i}" in ours else (None,)
    for i in layers:
      path = tuple(ours.format(i=i).split("/"))
      plan[theirs.format(i=i)] = Target(path, shape, to_ours, to_theirs)
  return plan


# ---- Reading -------------------------------------------------------------------------


def tensor_files(hf_dir: str) -> dict[str, str]:
  """Tensor name -> the safetensors file holding it (from the index, or the single file)."""
  index_path = os.path.join(hf_dir, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index_path} has no 'weight_map' of tensor names to files.")
    files = {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
    for file in sorted(set(files.values())):
      if not os.path.isfile(file):
        raise ValueError(f"{index_path} lists {os.path.basename(file)!r}, which does not exist.")
    return files
  single = os.path.join(hf_dir, SINGLE_FILE)
  if not os.path.isfile(single):
    raise ValueError(f"{hf_dir!r} has neither {INDEX_FILE} nor {SINGLE_FILE}.")
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(single, framework="numpy") as f:
    return {name: single for name in f.keys()}


def _by_file(names, files: Mapping[str, str]) -> dict[str, list[str]]:
  grouped = {}
  for name in names:
    grouped.setdefault(files[name], []).append(name)
  return grouped


def check_tensors(hf_dir: str, hf: HFConfig) -> tuple[dict[str, Target], dict[str, str]]:
  """(plan, files) after checking names and shapes against the safetensors headers only.

  ValueError names every unknown tensor, every missing one, and the first mis-shaped one.
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  plan, files = tensor_plan(hf), tensor_files(hf_dir)
  unknown = sorted(n for n in files if n not in plan and not _IGNORED.match(n))
  missing = sorted(n for n in plan if n not in files)
  if unknown or missing:
    raise ValueError(
        f"{hf_dir}: the checkpoint does not match its config.json ({hf.family}, "
        f"{hf.model['num_layers']} layers, tie_embeddings={hf.model['tie_embeddings']}): "
        f"unknown tensors {unknown}, missing tensors {missing}.")
  for file, names in _by_file(plan, files).items():
    with safe_open(file, framework="numpy") as f:
      for name in names:
        shape = tuple(f.get_slice(name).get_shape())
        if shape != plan[name].shape:
          raise ValueError(f"{file}: tensor {name!r} has shape {shape}, expected "
                           f"{plan[name].shape} from config.json.")
  return plan, files


def load_params(hf_dir: str, hf: HFConfig, abstract_params):
  """The checkpoint's weights as our params tree, each leaf placed in its sharding.

  abstract_params: our params as `jax.ShapeDtypeStruct`s with shardings (e.g.
  `sharding.abstract_params(model, mesh)`); leaves are cast to their dtype. One tensor
  is on the host at a time; each process keeps only its addressable shards. Scanned
  params (scan_layers) are read per block and then stacked.
  """
  layout = layer_layout.layout_of(abstract_params)
  if layout == layer_layout.SCANNED:
    unrolled = load_params(hf_dir, hf, layer_layout.to_layout(abstract_params,
                                                              layer_layout.UNROLLED))
    stack = jax.jit(functools.partial(layer_layout.to_layout, layout=layout),
                    out_shardings=jax.tree.map(lambda a: a.sharding, abstract_params))
    return stack(unrolled)
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  plan, files = check_tensors(hf_dir, hf)
  abstract = flax.traverse_util.flatten_dict(abstract_params)
  planned = {t.path for t in plan.values()}
  if planned != set(abstract):
    raise ValueError(f"The model's parameters {sorted('/'.join(p) for p in abstract)} differ "
                     f"from the converted ones {sorted('/'.join(p) for p in planned)}.")
  params = {}
  for file, names in _by_file(plan, files).items():
    with safe_open(file, framework="numpy") as f:
      for name in names:
        target = plan[name]
        want = abstract[target.path]
        value = np.ascontiguousarray(target.to_ours(f.get_tensor(name)).astype(want.dtype))
        assert value.shape == want.shape, (name, value.shape, want.shape)
        params[target.path] = jax.make_array_from_callback(
            want.shape, want.sharding, lambda index, value=value: value[index])
        del value
  return flax.traverse_util.unflatten_dict(params)


# ---- Writing a run directory -----------------------------------------------------------


def run_config(hf: HFConfig, out_dir: str,
               config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The run config of the converted checkpoint.

  The shape comes from the checkpoint; `config` (default: config_defaults.get_config())
  supplies the rest (dtype, remat, mesh, ...), and any shape field it sets must agree with
  the checkpoint. Objective: `config`'s, else "mdm" for LLaDA and "ar" for LLaMA; model.causal
  follows it (a LLaMA checkpoint may become a bidirectional model; LLaDA cannot be causal).
  """
  given = config is not None
  c = ml_collections.ConfigDict(
      config.to_dict() if given else config_defaults.get_config().to_dict())
  for key, value in hf.model.items():
    if given and c.model[key] != value and not (key == "vocab_size" and c.model[key] == 0):
      raise ValueError(f"config.model.{key}={c.model[key]!r} disagrees with the checkpoint's "
                       f"{value!r}.")
    c.model[key] = value
  if not given:
    c.objective = "ar" if hf.causal else "mdm"
  c.model.causal = config_defaults.is_causal(c)
  if c.model.causal and not hf.causal:
    raise ValueError(f"config.objective={c.objective!r}, config.model.causal=True: a LLaDA "
                     "checkpoint is bidirectional; use 'mdm' or 'sft'.")
  c.data.tokenizer = config_defaults.converted_tokenizer(out_dir, hf.model["vocab_size"])
  c.init_from = ""
  return c


def _copy_tokenizer(hf_dir: str, out_dir: str) -> None:
  source = os.path.join(hf_dir, "tokenizer.json")
  if not os.path.isfile(source):
    raise ValueError(f"{source} does not exist: the converted run needs the checkpoint's "
                     "Hugging Face tokenizer.")
  target_dir = os.path.join(out_dir, config_defaults.CONVERTED_TOKENIZER_DIR)
  os.makedirs(target_dir, exist_ok=True)
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(hf_dir, name)):
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(target_dir, name))


def save_params(out_dir: str, params, config_dict: dict) -> None:
  """Writes {"params": params} as step 0 of an orbax checkpoint that `checkpoint.restore_params`
  (config.init_from, load_run) reads: the same CheckpointManager item names as the trainer's,
  without a data-iterator item. It holds no optimizer state, so it starts runs, never resumes."""
  manager = ocp.CheckpointManager(
      epath.Path(checkpoint.checkpoint_dir(out_dir)).absolute(),
      item_names=(checkpoint.STATE, checkpoint.DATA, checkpoint.CONFIG),
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
  manager.save(0, args=ocp.args.Composite(**{
      checkpoint.STATE: ocp.args.PyTreeSave({"params": params}),
      checkpoint.CONFIG: ocp.args.JsonSave(config_dict)}))
  manager.wait_until_finished()
  manager.close()


def convert_checkpoint(hf_dir: str, out_dir: str,
                       config: ml_collections.ConfigDict | None = None,
                       devices=None) -> ml_collections.ConfigDict:
  """Converts HF_DIR into the run directory OUT_DIR (module docstring); returns its config.

  `config` as in `run_config`; its mesh places the parameters while they load (any later
  run may restore them onto another mesh).
  """
  hf = read_hf_config(hf_dir)
  check_tensors(hf_dir, hf)  # Fail on names and shapes before anything is written.
  if os.path.isdir(checkpoint.checkpoint_dir(out_dir)) and os.listdir(
      checkpoint.checkpoint_dir(out_dir)):
    raise ValueError(f"{out_dir} already holds checkpoints; convert into a new directory.")
  c = run_config(hf, out_dir, config)
  if jax.process_index() == 0:
    _copy_tokenizer(hf_dir, out_dir)
  multihost_utils.sync_global_devices("convert-tokenizer")
  # The copied tokenizer's size must fit V (config_from_dict checks it).
  vocab_size = tokenizers.load_tokenizer(c.data.tokenizer).vocab_size
  model = transformer.Transformer(
      transformer.config_from_dict(c.model, vocab_size=vocab_size, causal=c.model.causal))
  mesh = sharding.make_mesh(c.mesh, devices)
  params = load_params(hf_dir, hf, sharding.abstract_params(model, mesh))
  resolved = c.to_dict()
  save_params(out_dir, params, resolved)
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(resolved, f, indent=2, sort_keys=True)
  multihost_utils.sync_global_devices("convert-done")
  return c
