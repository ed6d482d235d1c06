"""Tokenizers: one small interface over sentencepiece, HF tokenizer.json and characters.

Every backend has `vocab_size`, `eos_id`, `pad_id`, `bos_id` (None if it has none),
`encode(text) -> list[int]`, `decode(ids) -> str`, and a fast
`encode_batch(texts) -> list[np.ndarray]` that the data pipeline uses. The mask token
of a diffusion model is NOT a vocabulary id: the model adds it as id `vocab_size`.

`load_tokenizer(spec)` reads the `data.tokenizer` config string:
  "char"                     fixed character vocabulary (synthetic tasks)
  "sentencepiece:PATH"       a sentencepiece `.model`
  "hf:PATH[?key=value&...]"  a Hugging Face `tokenizer.json` (e.g. LLaDA's); keys
                             eos_id, pad_id, bos_id, vocab_size override what is
                             looked up from its special tokens.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

# Special tokens tried, in order, when a tokenizer.json names none in a
# tokenizer_config.json beside it. LLaDA uses <|startoftext|> / <|endoftext|>.
_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "[SEP]")
_BOS_CANDIDATES = ("<|startoftext|>", "<|begin_of_text|>", "<s>", "<bos>", "[CLS]")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")


class Tokenizer(Protocol):
  """What the trainer, sampler and RL stage need from a tokenizer."""
  vocab_size: int
  eos_id: int
  pad_id: int
  bos_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids) -> str: ...

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

  @property
  def fingerprint(self) -> str:
    """A short hash naming this vocabulary; keys caches of tokenized data."""


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


class CharTokenizer:
  """Characters as tokens, with a vocabulary fixed across datasets and runs.

  Ids: 0 = pad, 1 = bos, 2 = eos, 3 = newline, then printable ASCII (space .. '~').
  """
  PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
  CHARS = "\n" + "".join(chr(c) for c in range(32, 127))

  def __init__(self):
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.vocab_size = 3 + len(self.CHARS)
    self._id_of_byte = np.full(256, -1, np.int32)
    for i, ch in enumerate(self.CHARS):
      self._id_of_byte[ord(ch)] = 3 + i
    self._pieces = np.array([self.PAD, self.BOS, self.EOS, *self.CHARS], dtype=object)

  @property
  def fingerprint(self) -> str:
    return "char-" + hashlib.sha256(self.CHARS.encode()).hexdigest()[:8]

  def _unknown(self, text: str) -> ValueError:
    bad = next(ch for ch in text if ch not in self.CHARS)
    return ValueError(
        f"CharTokenizer: character {bad!r} (U+{ord(bad):04X}) is not in the vocabulary "
        "(printable ASCII and newline only)")

  def encode_array(self, text: str) -> np.ndarray:
    try:
      bytes_T = np.frombuffer(text.encode("ascii"), np.uint8)
    except UnicodeEncodeError:
      raise self._unknown(text) from None
    ids_T = self._id_of_byte[bytes_T]
    if ids_T.size and ids_T.min() < 0:
      raise self._unknown(text)
    return ids_T

  def encode(self, text: str) -> list[int]:
    return self.encode_array(text).tolist()

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """One vectorised lookup over the joined texts, split back (1 char = 1 id)."""
    ids_T = self.encode_array("".join(texts))
    return np.split(ids_T, np.cumsum([len(t) for t in texts])[:-1]) if texts else []

  def id_to_token(self, token_id: int) -> str:
    return str(self._pieces[token_id])

  def decode(self, ids) -> str:
    """Inverse of encode; special tokens print as <pad>, <bos>, <eos>."""
    ids_T = np.asarray(ids, np.int64).reshape(-1)
    if ids_T.size and (ids_T.min() < 0 or ids_T.max() >= self.vocab_size):
      raise ValueError(f"CharTokenizer.decode: ids must be in [0, {self.vocab_size})")
    return "".join(self._pieces[ids_T])


class SentencePieceTokenizer:
  """A trained sentencepiece `.model`; pad falls back to eos if the model has none."""

  def __init__(self, model_path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(model_path):
      raise ValueError(f"sentencepiece model file {model_path!r} does not exist")
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"sentencepiece model {model_path!r} has no eos piece")
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self._fingerprint = "sp-" + _file_digest(model_path)

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32)
            for ids in self._sp.encode(list(texts), out_type=int, num_threads=os.cpu_count())]

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])


class HFTokenizer:
  """A Hugging Face `tokenizer.json` read with the `tokenizers` package (e.g. LLaDA's).

  eos / bos / pad ids come from a `tokenizer_config.json` beside the file when there is
  one, else from well-known special tokens; each can be overridden. pad defaults to eos
  (as in LLaDA SFT).
  """

  def __init__(self, path: str, *, eos_id: int | None = None, pad_id: int | None = None,
               bos_id: int | None = None, vocab_size: int | None = None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise ValueError(f"tokenizer file {path!r} does not exist")
    self.path = path
    self._tok = tokenizers.Tokenizer.from_file(path)
    named = self._named_special_tokens(os.path.dirname(path))
    self.eos_id = eos_id if eos_id is not None else self._lookup(named.get("eos_token"),
                                                                  _EOS_CANDIDATES)
    if self.eos_id is None:
      raise ValueError(f"{path}: no eos token found; pass one as 'hf:{path}?eos_id=ID'")
    self.bos_id = bos_id if bos_id is not None else self._lookup(named.get("bos_token"),
                                                                  _BOS_CANDIDATES)
    found_pad = self._lookup(named.get("pad_token"), _PAD_CANDIDATES)
    self.pad_id = pad_id if pad_id is not None else (
        found_pad if found_pad is not None else self.eos_id)
    real_size = self._tok.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and vocab_size < real_size:
      raise ValueError(f"{path}: vocab_size={vocab_size} override is smaller than the "
                       f"tokenizer's {real_size} ids")
    self.vocab_size = vocab_size or real_size
    overrides = json.dumps([eos_id, pad_id, bos_id, vocab_size])
    self._fingerprint = "hf-" + hashlib.sha256(
        (_file_digest(path) + overrides).encode()).hexdigest()[:16]

  @staticmethod
  def _named_special_tokens(folder: str) -> dict[str, str]:
    config_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(config_path):
      return {}
    with open(config_path) as f:
      config = json.load(f)
    named = {}
    for key in ("eos_token", "bos_token", "pad_token"):
      value = config.get(key)
      if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        value = value.get("content")
      if isinstance(value, str):
        named[key] = value
    return named

  def _lookup(self, preferred: str | None, candidates: Sequence[str]) -> int | None:
    for token in ((preferred,) if preferred else ()) + tuple(candidates):
      token_id = self._tok.token_to_id(token)
      if token_id is not None:
        return token_id
    return None

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def id_to_token(self, token_id: int) -> str | None:
    return self._tok.id_to_token(token_id)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, np.int32)
            for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=False)


def _parse_hf_spec(rest: str) -> HFTokenizer:
  path, _, query = rest.partition("?")
  overrides = {}
  for item in filter(None, query.split("&")):
    key, sep, value = item.partition("=")
    if not sep or key not in ("eos_id", "pad_id", "bos_id", "vocab_size"):
      raise ValueError(f"tokenizer spec 'hf:{rest}': unknown option {item!r} "
                       "(expected eos_id=, pad_id=, bos_id=, vocab_size=)")
    try:
      overrides[key] = int(value)
    except ValueError:
      raise ValueError(f"tokenizer spec 'hf:{rest}': {key} must be an integer, "
                       f"got {value!r}") from None
  return HFTokenizer(path, **overrides)


def load_tokenizer(spec: str, *, data_config=None) -> Tokenizer:
  """Builds the tokenizer named by `spec` ("char", "sentencepiece:PATH", "hf:PATH").

  `data_config` is accepted for interface symmetry; relative paths are resolved
  against the current directory.
  """
  del data_config
  kind, sep, rest = spec.partition(":")
  if spec == "char":
    return CharTokenizer()
  if kind == "sentencepiece" and sep and rest:
    return SentencePieceTokenizer(os.path.expanduser(rest))
  if kind == "hf" and sep and rest:
    return _parse_hf_spec(os.path.expanduser(rest))
  raise ValueError(f"unknown tokenizer spec {spec!r}: expected 'char', "
                   "'sentencepiece:PATH' or 'hf:PATH'")


def train_sentencepiece(text_files: Sequence[str] | str, vocab_size: int, out_prefix: str,
                        *, model_type: str = "unigram", byte_fallback: bool = False,
                        input_sentence_size: int = 2_000_000) -> str:
  """Trains a sentencepiece model on text files (one sentence per line).

  Ids: 0 = unk, 1 = bos, 2 = eos, 3 = pad, 4 = newline. No normalisation, so decoding
  gives back the text exactly (characters outside the corpus become unk, unless
  `byte_fallback`). Returns the path of `out_prefix.model`.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if isinstance(text_files, str):
    text_files = [p for p in text_files.split(",") if p]
  if not text_files:
    raise ValueError("train_sentencepiece: no text files given")
  for path in text_files:
    if not os.path.isfile(path):
      raise ValueError(f"train_sentencepiece: text file {path!r} does not exist")
    if os.path.getsize(path) == 0:
      raise ValueError(f"train_sentencepiece: text file {path!r} is empty")
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      input=list(text_files), model_prefix=out_prefix, vocab_size=vocab_size,
      model_type=model_type, character_coverage=1.0, byte_fallback=byte_fallback,
      unk_id=0, bos_id=1, eos_id=2, pad_id=3,
      # Keep text as it is (newlines, runs of spaces) so decode(encode(text)) == text.
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      user_defined_symbols=["\n"], allow_whitespace_only_pieces=True,
      input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
      num_threads=os.cpu_count() or 1, minloglevel=2)
  return out_prefix + ".model"
