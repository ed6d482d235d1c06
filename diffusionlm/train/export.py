"""Export a run directory as a Hugging Face checkpoint: the inverse of train/convert.py.

A bidirectional (masked-diffusion) run becomes a LLaDA checkpoint (`LLaDAModelLM`, names
`model.transformer.*`), a causal run a `LlamaForCausalLM`. Both use the importer's table
(`convert.TENSOR_NAMES`) and its layouts run backwards (`convert.Target.to_theirs`), so
`convert_checkpoint(export_run(run))` gives the run's parameters back exactly (for a causal
run all but the unused mask row, which the importer sets to the mean embedding).

The mask token. Ours is the extra id V; in the LLaDA checkpoint it becomes the in-vocabulary
`mask_token_id = V` with `embedding_size = V + 1`: the embedding is ours unchanged, the head
gets a zero row for it (logit 0; LLaDA's samplers should pass `mask_id=V`, as they pass
126336 for LLaDA-8B). The tokenizer keeps its V ids (it never emits the mask token).

The output directory holds config.json, `model-0000k-of-0000n.safetensors` shards with
`model.safetensors.index.json`, and the tokenizer as `tokenizer.json` +
`tokenizer_config.json` + `special_tokens_map.json` (a Hugging Face run's tokenizer is copied;
the char tokenizer is written as an equivalent `tokenizers` BPE without merges; a
sentencepiece model cannot be exported). LLaDA's modeling code is not included: copy
`configuration_llada.py` and `modeling_llada.py` from GSAI-ML/LLaDA-8B-Base next to it to load
it with `trust_remote_code=True` (config.json's `auto_map` names them).
"""
import json
import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from diffusionlm.data import tokenizers
from diffusionlm.train import convert, load

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30  # Hugging Face's default shard size.
_LLADA_AUTO_MAP = {"AutoConfig": "configuration_llada.LLaDAConfig",
                   "AutoModel": "modeling_llada.LLaDAModelLM",
                   "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}
SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_dim",
                "rope_theta", "norm_eps", "tie_embeddings")


def hf_config_of(model_config: ml_collections.ConfigDict) -> convert.HFConfig:
  """The exported checkpoint in the importer's terms (LLaDA if bidirectional, else LLaMA)."""
  model = {key: model_config[key] for key in SHAPE_FIELDS}
  model["num_kv_heads"] = model["num_kv_heads"] or model["num_heads"]
  V = model["vocab_size"]
  if model_config.causal:
    return convert.HFConfig(convert.LLAMA, model, V, None)
  return convert.HFConfig(convert.LLADA, model, V + 1, V)


def config_json(hf: convert.HFConfig, tokenizer, *, seq_len: int, dtype: str) -> dict:
  """config.json in LLaDA's (configuration_llada.py) or transformers' LlamaConfig fields."""
  m = hf.model
  special = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
             "bos_token_id": tokenizer.bos_id}
  if hf.family == convert.LLADA:
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "auto_map": _LLADA_AUTO_MAP,
        "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "bias_for_layer_norm": False, "rope": True,
        "rope_full_precision": True, "alibi": False, "include_bias": False,
        "include_qkv_bias": False, "scale_logits": False, "input_emb_norm": False,
        "attention_layer_norm": False, "block_group_size": 1, "multi_query_attention": None,
        "flash_attention": False, "weight_tying": m["tie_embeddings"], "d_model": m["d_model"],
        "n_heads": m["num_heads"], "n_kv_heads": m["num_kv_heads"], "n_layers": m["num_layers"],
        "mlp_hidden_size": m["mlp_dim"], "mlp_ratio": m["mlp_dim"] // m["d_model"],
        "vocab_size": m["vocab_size"], "embedding_size": hf.embedding_rows,
        "mask_token_id": hf.mask_token_id, "rope_theta": m["rope_theta"],
        "rms_norm_eps": m["norm_eps"], "max_sequence_length": seq_len, "use_cache": False,
        "torch_dtype": dtype, **special}
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
      "hidden_size": m["d_model"], "intermediate_size": m["mlp_dim"],
      "num_hidden_layers": m["num_layers"], "num_attention_heads": m["num_heads"],
      "num_key_value_heads": m["num_kv_heads"], "head_dim": m["d_model"] // m["num_heads"],
      "rms_norm_eps": m["norm_eps"], "rope_theta": m["rope_theta"],
      "rope_parameters": {"rope_type": "default", "rope_theta": m["rope_theta"]},
      "vocab_size": m["vocab_size"], "tie_word_embeddings": m["tie_embeddings"],
      "max_position_embeddings": seq_len, "attention_bias": False, "mlp_bias": False,
      "torch_dtype": dtype, **special}


# ---- The tokenizer ---------------------------------------------------------------------


def _char_tokenizer_json(tok: tokenizers.CharTokenizer) -> str:
  """The char vocabulary as a `tokenizers` BPE without merges: every character one id, the
  same ids as CharTokenizer, decoded by concatenation (Fuse)."""
  import tokenizers as hf_tokenizers  # pylint: disable=g-import-not-at-top
  specials = [tok.PAD, tok.BOS, tok.EOS]
  vocab = {piece: i for i, piece in enumerate(specials + list(tok.CHARS))}
  out = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE(vocab=vocab, merges=[]))
  out.decoder = hf_tokenizers.decoders.Fuse()
  out.add_special_tokens([hf_tokenizers.AddedToken(s, special=True, normalized=False)
                          for s in specials])
  return out.to_str()


def check_exportable(spec: str) -> None:
  """A ValueError unless the tokenizer spec (config.data.tokenizer) has a tokenizer.json form."""
  if spec != "char" and not spec.startswith("hf:"):
    raise ValueError(
        f"The run's tokenizer {spec!r} cannot be exported: Hugging Face checkpoints need a "
        "tokenizer.json, which only the 'char' and 'hf:' tokenizers have (a sentencepiece "
        ".model has no faithful conversion here). Train with data.tokenizer='char' or an "
        "'hf:PATH' tokenizer to export.")


def write_tokenizer(tokenizer, spec: str, out_dir: str, *, seq_len: int) -> None:
  """tokenizer.json, tokenizer_config.json and special_tokens_map.json naming eos/bos/pad, so
  that both transformers and our HFTokenizer read the run's ids back."""
  check_exportable(spec)
  if isinstance(tokenizer, tokenizers.CharTokenizer):
    text = _char_tokenizer_json(tokenizer)
  else:
    with open(tokenizer.path) as f:
      text = f.read()
  with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
    f.write(text)
  special = {f"{name}_token": tokenizer.id_to_token(getattr(tokenizer, f"{name}_id"))
             for name in ("eos", "bos", "pad") if getattr(tokenizer, f"{name}_id") is not None}
  for name, content in (
      ("tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                 "model_max_length": seq_len, "clean_up_tokenization_spaces":
                                 False, **special}),
      ("special_tokens_map.json", special)):
    with open(os.path.join(out_dir, name), "w") as f:
      json.dump(content, f, indent=2)


# ---- The weights -----------------------------------------------------------------------


def _host(x) -> np.ndarray:
  """A (sharded) parameter's full value on every process."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _leaf(params, path):
  for key in path:
    params = params[key]
  return params


def write_weights(params, hf: convert.HFConfig, out_dir: str, *,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> int:
  """The parameters as safetensors shards of at most `max_shard_bytes` (a tensor larger
  than that gets a shard of its own) plus the index; one shard's tensors are on the host at
  a time. Every process takes part (the gathers); process 0 writes. Returns the shards."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  plan = convert.tensor_plan(hf)
  # Group the tensors into shards first (from shapes), so files are named k-of-n.
  groups, size = [[]], 0
  for name, target in plan.items():
    nbytes = int(np.prod(target.shape)) * np.dtype(_leaf(params, target.path).dtype).itemsize
    if groups[-1] and size + nbytes > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += nbytes
  files = [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
  weight_map, total = {}, 0
  for file, names in zip(files, groups):
    shard = {}
    for name in names:
      target = plan[name]
      shard[name] = np.ascontiguousarray(target.to_theirs(_host(_leaf(params, target.path))))
      assert shard[name].shape == target.shape, (name, shard[name].shape, target.shape)
      total += shard[name].nbytes
    if jax.process_index() == 0:
      save_file(shard, os.path.join(out_dir, file), metadata={"format": "pt"})
    weight_map.update({name: file for name in names})
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, convert.INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return len(files)


def export_run(workdir: str, out_dir: str, *,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> dict:
  """Writes WORKDIR's newest parameters, config and tokenizer to OUT_DIR (module docstring).

  Returns {"family", "num_shards", "num_params"}. Errors name the problem: a directory that
  is not a run or has no checkpoint (load_run), an unexportable tokenizer, an OUT_DIR that
  already holds a checkpoint.
  """
  config = load.read_run_config(workdir)  # Fails fast, before the parameters load.
  check_exportable(config.data.tokenizer)
  if os.path.isfile(os.path.join(out_dir, "config.json")):
    raise ValueError(f"--out={out_dir!r} already holds a config.json; export into a new "
                     "directory.")
  run = load.load_run(workdir)
  hf = hf_config_of(run.config.model)
  os.makedirs(out_dir, exist_ok=True)
  num_shards = write_weights(run.params, hf, out_dir, max_shard_bytes=max_shard_bytes)
  if jax.process_index() == 0:
    seq_len = int(run.config.data.seq_len)
    write_tokenizer(run.tokenizer, run.config.data.tokenizer, out_dir, seq_len=seq_len)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(config_json(hf, run.tokenizer, seq_len=seq_len,
                            dtype=run.config.model.param_dtype), f, indent=2)
  multihost_utils.sync_global_devices("export-done")
  return {"family": hf.family, "num_shards": num_shards,
          "num_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.params))}
