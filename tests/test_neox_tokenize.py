"""tokenize with a HF tokenizer.json (Pythia ships only that): rows are the tokenizer's own
encoding, added tokens included, BOS/EOS = its <|endoftext|>."""
import os

import numpy as np

from tests.test_data_store import make_config, write_jsonl
from tests.test_neox_parity import _write_tokenizer_json
from ucore.models import tokenizer as tokmod
from ucore.data import build


def test_store_from_tokenizer_json_dir(tmp_path):
  tdir = tmp_path / "tok"
  os.makedirs(tdir)
  tj = _write_tokenizer_json(str(tdir))
  docs = [{"text": "hello world,  hello there and hello world again", "l": "x"}]
  src = write_jsonl(tmp_path / "d.jsonl", docs)
  cfg = make_config(src, label_field="l", ctx=6, min_chars=5, shuffle=False, num_tokens=0,
                    tokenizer=str(tdir), model_vocab_size=300)
  s = build.build_store(cfg, str(tmp_path / "store"))
  from tokenizers import Tokenizer
  ids = Tokenizer.from_file(tj).encode(docs[0]["text"]).ids
  eos = Tokenizer.from_file(tj).token_to_id("<|endoftext|>")
  assert Tokenizer.from_file(tj).token_to_id("  ") in ids   # the added whitespace token
  want = [[eos] + ids[i:i + 5] for i in range(0, len(ids) - 4, 5)]
  np.testing.assert_array_equal(s.read_rows(0, s.num_rows), np.array(want, np.int32))
  files = tokmod.files_in_dir(os.path.join(str(tmp_path / "store"), "tokenizer"))
  assert files.tokenizer_json and files.sha256() == tokmod.TokenizerFiles(None, None, tj).sha256()
  s.check_tokenizer(files.sha256())
