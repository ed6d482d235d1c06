"""Tokenizers: round trips, fixed char vocabulary, special ids, spec parsing, errors."""
import json
import random
import time

import numpy as np
import pytest
import tokenizers as hf_tokenizers

from diffusionlm.data import tokenizers

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge "
          "boxing matches and sphinx of black quartz hears my vow").split()


def _sentences(n, seed=0):
  rng = random.Random(seed)
  return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
          for _ in range(n)]


# ---- char ------------------------------------------------------------------------


def test_char_vocabulary_is_fixed_and_complete():
  tok = tokenizers.load_tokenizer("char")
  printable = "".join(chr(c) for c in range(32, 127)) + "\n"
  ids = tok.encode(printable)
  # Every printable ASCII character and newline has its own id, none a special one.
  assert len(set(ids)) == len(printable) == tok.vocab_size - 3
  assert min(ids) == 3 and max(ids) == tok.vocab_size - 1
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  # Same ids from a fresh instance: the vocabulary does not depend on data.
  assert tokenizers.CharTokenizer().encode(printable) == ids
  assert tok.decode(ids) == printable


def test_char_round_trip_and_batch_agree():
  tok = tokenizers.CharTokenizer()
  rng = np.random.default_rng(0)
  ids = rng.integers(3, tok.vocab_size, 500).tolist()  # Any non-special ids.
  assert tok.encode(tok.decode(ids)) == ids
  texts = _sentences(20) + [""]
  assert [a.tolist() for a in tok.encode_batch(texts)] == [tok.encode(t) for t in texts]


@pytest.mark.parametrize("bad", ["é", "\t", "\x00", "日"])
def test_char_unknown_character_named(bad):
  with pytest.raises(ValueError, match=repr(bad).strip("'").replace("\\", "\\\\")):
    tokenizers.CharTokenizer().encode(f"ok {bad} ok")


def test_char_tokenizes_a_megabyte_in_seconds():
  lines = [s + "\n" for s in _sentences(25_000)]  # ~1.1 MB, like tinyshakespeare.
  assert sum(map(len, lines)) > 1_000_000
  start = time.perf_counter()
  ids = tokenizers.CharTokenizer().encode_batch(lines)
  assert time.perf_counter() - start < 5.0
  assert sum(a.size for a in ids) == sum(map(len, lines))


# ---- sentencepiece -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sp")
  corpus = folder / "corpus.txt"
  corpus.write_text("\n".join(_sentences(2000)) + "\n")
  return tokenizers.train_sentencepiece([str(corpus)], 80, str(folder / "sp"))


def test_sentencepiece_train_encode_decode_round_trip(sp_model):
  tok = tokenizers.load_tokenizer(f"sentencepiece:{sp_model}")
  sentence = "The lazy dog jumps over the quick brown fox.\n  While wizards judge.\n"
  ids = tok.encode(sentence)
  assert tok.decode(ids) == sentence
  assert len(ids) < len(sentence)  # It learned pieces longer than a character.
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.vocab_size == 80
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
  batch = tok.encode_batch([sentence, "A vow."])
  assert batch[0].tolist() == ids and batch[1].tolist() == tok.encode("A vow.")


def test_sentencepiece_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    tokenizers.load_tokenizer(f"sentencepiece:{tmp_path}/missing.model")
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty.txt.*empty"):
    tokenizers.train_sentencepiece([str(empty)], 50, str(tmp_path / "m"))


# ---- Hugging Face tokenizer.json ---------------------------------------------------


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
  words = sorted(set(w.lower() for w in " ".join(_sentences(200)).replace(".", " .").split()))
  vocab = {tok: i for i, tok in enumerate(["[UNK]", "<|startoftext|>", "<|endoftext|>",
                                           "<|mdm_mask|>"] + words)}
  tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = hf_tokenizers.decoders.WordPiece()  # Joins words with spaces.
  tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"])
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  tok.save(str(path))
  return path, vocab


def test_hf_special_ids_looked_up_and_overridable(hf_json):
  path, vocab = hf_json
  tok = tokenizers.load_tokenizer(f"hf:{path}")
  assert tok.eos_id == vocab["<|endoftext|>"] and tok.bos_id == vocab["<|startoftext|>"]
  assert tok.pad_id == tok.eos_id  # No pad token: LLaDA pads with EOS.
  assert tok.vocab_size == len(vocab)
  text = "the quick brown fox jumps over a lazy dog"
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode_batch([text])[0].tolist() == tok.encode(text)
  over = tokenizers.load_tokenizer(f"hf:{path}?eos_id=7&pad_id=8&vocab_size={len(vocab) + 5}")
  assert (over.eos_id, over.pad_id, over.vocab_size) == (7, 8, len(vocab) + 5)
  assert over.fingerprint != tok.fingerprint


def test_hf_tokenizer_config_names_special_tokens(hf_json, tmp_path):
  path, vocab = hf_json
  (tmp_path / "tokenizer.json").write_text(path.read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|mdm_mask|>", "pad_token": {"content": "[UNK]"}}))
  tok = tokenizers.load_tokenizer(f"hf:{tmp_path}")  # A folder works too.
  assert tok.eos_id == vocab["<|mdm_mask|>"] and tok.pad_id == vocab["[UNK]"]


@pytest.mark.parametrize("spec, message", [
    ("bpe", "unknown tokenizer spec"),
    ("sentencepiece:", "unknown tokenizer spec"),
    ("hf:/nonexistent/tokenizer.json", "does not exist"),
])
def test_bad_specs_raise(spec, message):
  with pytest.raises(ValueError, match=message):
    tokenizers.load_tokenizer(spec)


def test_hf_bad_override_raises(hf_json):
  path, _ = hf_json
  with pytest.raises(ValueError, match="unknown option 'mask_id=3'"):
    tokenizers.load_tokenizer(f"hf:{path}?mask_id=3")
  with pytest.raises(ValueError, match="eos_id must be an integer"):
    tokenizers.load_tokenizer(f"hf:{path}?eos_id=x")
