"""Cross-tokenizer alignment (docs/spec/recipe.md §3.2, §6.3, §6.5 items 10-11): bytes, vocab map, groups,
projection."""
import json

import numpy as np
import pytest
import sentencepiece
import tokenizers as hf

from a1jax.data import tokenizers
from a1jax.data.chat import render
from a1jax.distill.vocab import (Aligner, align_groups, build_vocab_map, byte_level_piece_bytes,
                                 project_teacher_topk, sentencepiece_piece_bytes, token_byte_spans, token_bytes)


@pytest.fixture(scope="module")
def toks():
    return {name: tokenizers.load(name) for name in ("qwen3_5", "qwen3", "mistral_v3")}


def _chat_text() -> str:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in 東京?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京"}}}]},
        {"role": "tool", "content": json.dumps({"temp": 21.5, "sky": "☀️"})},
        {"role": "assistant", "content": "It is 21.5°C ☀️."},
    ]
    return render(messages, tools)


TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n# done\t\t",
    '{"name": "search", "arguments": {"query": "naïve Bayes", "top_k": 10, "filters": [null, true, 3.14e-2]}}',
    "教我做红烧鱼。東京タワーは333メートルです。한국어 텍스트도 있습니다.",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇯🇵🇫🇷 ok",
    "numbers 1234567890 3.14159 -42 1e-9 0x1F 2026-11-25 19:30:00",
    "   leading spaces,\n\n\n  blank lines,\t tabs,    runs of   spaces   ",
    "math: ∑_{i=1}^{n} x_i² ≤ √(n·∑ x_i⁴) — “quotes” ‘and’ «guillemets»",
]


def _groups_as_lists(groups):
    return [[list(range(a, b)) for a, b in g] for g in groups]


# ----------------------------------------------------------------------------------------------------------------
# token_bytes (§6.5 item 11)
# ----------------------------------------------------------------------------------------------------------------

def test_token_bytes_invert_byte_level_and_sentencepiece_pieces():
    assert byte_level_piece_bytes("Ġworld") == b" world"
    assert byte_level_piece_bytes("ĊĠĠ") == b"\n  "
    assert sentencepiece_piece_bytes("▁world") == b" world"
    assert sentencepiece_piece_bytes("<0xE6>") == b"\xe6"
    assert sentencepiece_piece_bytes("東") == "東".encode()
    with pytest.raises(ValueError, match="byte alphabet"):
        byte_level_piece_bytes("東")


def test_token_bytes_flags_special_tokens_for_every_tokenizer_kind(toks):
    vocab = {"H": 0, "i": 1, "Ġ": 2, "w": 3, "Ġworld": 4}
    raw = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=[]))
    raw.decoder = hf.decoders.ByteLevel()
    raw.add_special_tokens(["<|im_end|>"])
    table, special = token_bytes(raw)
    assert table[4] == b" world" and table[5] is None and special.tolist() == [False] * 5 + [True]

    mistral = toks["mistral_v3"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(next(tokenizers.asset_dir("mistral_v3").glob("*.model*"))))
    raw_table, raw_special = token_bytes(sp)
    table, special = token_bytes(mistral)
    assert raw_table == table and np.array_equal(raw_special, special)  # our rules == the wrapper's, on all 32,768
    assert table[sp.piece_to_id("▁world")] == b" world" and table[sp.piece_to_id("<0xE6>")] == b"\xe6"
    assert special[[0, 1, 2, 5]].all() and table[1] is None and not special[sp.piece_to_id("▁world")]

    qwen = toks["qwen3_5"]
    table, special = token_bytes(qwen)
    (world,) = qwen.encode(" world")
    assert table[world] == b" world" and not special[world]
    im_end = qwen.token_id("<|im_end|>")
    assert table[im_end] is None and special[im_end] and special.sum() == len(qwen.special_tokens)
    with pytest.raises(TypeError, match="expected an a1jax Tokenizer"):
        token_bytes({"a": 0})


# ----------------------------------------------------------------------------------------------------------------
# Vocab map
# ----------------------------------------------------------------------------------------------------------------

def test_identical_tokenizers_give_the_identity_map(toks):
    for name in ("qwen3_5", "mistral_v3"):  # mistral has duplicate byte strings ('<0x41>' and 'A'): still identity
        vm = build_vocab_map(toks[name], toks[name])
        assert vm.identity and np.array_equal(vm.ids, np.arange(toks[name].vocab_size))
        assert vm.is_special.sum() == len(toks[name].special_tokens)


def test_vocab_map_matches_bytes_exactly_and_special_tokens_by_role(toks):
    q35, q3, mistral = toks["qwen3_5"], toks["qwen3"], toks["mistral_v3"]
    vm = build_vocab_map(q3, q35)
    tb_t, _ = token_bytes(q3)
    tb_s, _ = token_bytes(q35)
    ok = vm.ids >= 0
    assert not vm.identity and vm.n_student == q35.vocab_size
    assert all(tb_t[t] == tb_s[s] for t, s in zip(np.nonzero(ok & ~vm.is_special)[0], vm.ids[ok & ~vm.is_special]))
    for text, t in q3.special_tokens.items():  # every Qwen3 added token exists in Qwen3.5 under the same text
        assert vm.ids[t] == q35.token_id(text)

    vm = build_vocab_map(mistral, q35)
    assert vm.ids[mistral.token_id("</s>")] == q35.token_id("<|im_end|>")
    assert vm.ids[mistral.token_id("[TOOL_CALLS]")] == q35.token_id("<tool_call>")
    assert vm.ids[mistral.token_id("[/TOOL_RESULTS]")] == q35.token_id("</tool_response>")
    assert vm.ids[mistral.token_id("<s>")] == -1 and vm.ids[mistral.token_id("[control_12]")] == -1
    # '<0x41>' and 'A' both spell b'A': both map to Qwen's 'A'
    sp = mistral._sp
    assert vm.ids[sp.piece_to_id("<0x41>")] == vm.ids[sp.piece_to_id("A")] == q35.encode("A")[0]

    custom = build_vocab_map(mistral, q35, {"mistral_v3": {"<s>": "eod"}, "qwen3_5": {"<|endoftext|>": "eod"}})
    assert custom.ids[mistral.token_id("<s>")] == q35.token_id("<|endoftext|>")
    assert custom.ids[mistral.token_id("</s>")] == -1  # role tables replace the defaults
    with pytest.raises(ValueError, match=r"special_roles\['mistral_v3'\] names \['<nope>'\]"):
        build_vocab_map(mistral, q35, {"mistral_v3": {"<nope>": "bos"}})


# ----------------------------------------------------------------------------------------------------------------
# Groups (§6.5 item 10)
# ----------------------------------------------------------------------------------------------------------------

def test_hello_world_toy_bpe_groups():
    student = [b"Hel", b"lo", b",", b" wor", b"ld"]
    teacher = [b"Hello", b",", b" world"]
    groups = align_groups(token_byte_spans(range(5), student), token_byte_spans(range(3), teacher),
                          text=b"Hello, world")
    assert _groups_as_lists(groups) == [[[0, 1], [2], [3, 4]], [[0], [1], [2]]]


def test_bos_on_one_side_is_a_zero_width_group_of_its_own():
    teacher = [None, b"Hello", b",", b" world"]  # id 0: a BOS
    student = [b"Hel", b"lo", b",", b" wor", b"ld"]
    spans_t = token_byte_spans(range(4), teacher)
    assert spans_t[0].tolist() == [0, 0]
    groups = align_groups(token_byte_spans(range(5), student), spans_t)
    assert _groups_as_lists(groups) == [[[], [0, 1], [2], [3, 4]], [[0], [1], [2], [3]]]
    groups = align_groups(spans_t, token_byte_spans(range(5), student))  # BOS on the student side
    assert _groups_as_lists(groups) == [[[0], [1], [2], [3]], [[], [0, 1], [2], [3, 4]]]


def test_zero_width_tokens_pair_by_the_given_rule():
    s = [None, None, b"ab"]  # student: <|im_end|> <|im_start|> "ab"
    t = [None, b"ab"]  # teacher: </s> "ab"
    spans_s, spans_t = token_byte_spans(range(3), s), token_byte_spans(range(2), t)
    in_order = align_groups(spans_s, spans_t)
    assert _groups_as_lists(in_order) == [[[0], [1], [2]], [[0], [], [1]]]
    by_role = align_groups(spans_s, spans_t, pair=lambda i, j: i == 1)  # only <|im_start|> matches the teacher token
    assert _groups_as_lists(by_role) == [[[0], [1], [2]], [[], [0], [1]]]


def test_a_group_never_splits_a_multibyte_character():
    text = "naïve 東京".encode()
    # both sides split 'ï' (c3 af) and '東' (e6 9d b1) at the same byte, so bytes alone would close groups there
    student = [b"na\xc3", b"\xafve", b" \xe6\x9d", b"\xb1", "京".encode()]
    teacher = [b"n", b"a\xc3", b"\xaf", b"ve \xe6\x9d", b"\xb1\xe4", b"\xba\xac"]
    spans_s, spans_t = token_byte_spans(range(5), student), token_byte_spans(range(6), teacher)
    blind = align_groups(spans_s, spans_t)
    assert any(0x80 <= text[e] < 0xC0 for e in spans_s[blind[0][:-1, 1] - 1, 1])  # the property can fail...
    groups_s, groups_t = align_groups(spans_s, spans_t, text=text)
    ends = spans_s[groups_s[:, 1] - 1, 1]
    assert not any(0x80 <= text[e] < 0xC0 for e in ends[:-1])  # ...and with `text` it holds
    assert _groups_as_lists((groups_s, groups_t)) == [[[0, 1, 2, 3, 4]], [[0, 1, 2, 3, 4, 5]]]


def test_align_groups_rejects_sequences_that_spell_different_texts():
    with pytest.raises(ValueError, match="both must spell the same text"):
        align_groups(token_byte_spans([0], [b"ab"]), token_byte_spans([0], [b"abc"]))
    with pytest.raises(ValueError, match="contiguous"):
        align_groups(np.array([[0, 2], [3, 4]]), np.array([[0, 4]]))
    with pytest.raises(ValueError, match=r"token_ids\[1\]=7 is outside the vocabulary \[0, 2\)"):
        token_byte_spans([0, 7], [b"a", b"b"])


def _check_alignment(aligner, alignment, student, teacher):
    """Both sides spell the text group by group; no group ends inside a character; specials are zero width."""
    gs, gt = alignment.groups
    text = alignment.text
    tb_s, _ = token_bytes(student)
    assert text == b"".join(tb_s[i] or b"" for i in alignment.student_ids)
    pieces_s = [text[alignment.spans_s[a, 0]:alignment.spans_s[b - 1, 1]] if b > a else b"" for a, b in gs]
    pieces_t = [text[alignment.spans_t[a, 0]:alignment.spans_t[b - 1, 1]] if b > a else b"" for a, b in gt]
    assert pieces_s == pieces_t and b"".join(pieces_s) == text
    for (a, b), piece in zip(gs, pieces_s):  # each group's student tokens spell exactly its piece
        assert b"".join(tb_s[i] or b"" for i in alignment.student_ids[a:b]) == piece
    ends = [alignment.spans_s[b - 1, 1] for a, b in gs if b > a]
    assert all(e == len(text) or not 0x80 <= text[e] < 0xC0 for e in ends)
    assert gs[-1, 1] == len(alignment.student_ids) and gt[-1, 1] == len(alignment.teacher_ids)


@pytest.mark.parametrize("teacher_name", ["qwen3", "mistral_v3"])
def test_real_tokenizers_round_trip_and_report_alignment_rates(toks, teacher_name):
    student, teacher = toks["qwen3_5"], toks[teacher_name]
    aligner = Aligner(teacher, student)
    n_one = n_groups = 0
    for text in TEXTS + [_chat_text()]:
        alignment = aligner.teacher_ids_for(student.encode(text))
        _check_alignment(aligner, alignment, student, teacher)
        if teacher_name == "qwen3":  # same special texts: the teacher's ids decode to the student's text
            assert teacher.decode(alignment.teacher_ids) == text
        gs, gt = alignment.groups
        n_one += int(np.sum((gs[:, 1] - gs[:, 0] == 1) & (gt[:, 1] - gt[:, 0] == 1)))
        n_groups += len(gs)
    mapped = aligner.vocab_map.mapped_fraction
    print(f"\n{teacher_name} -> qwen3_5: 1:1 groups {n_one}/{n_groups} = {n_one / n_groups:.3f}, "
          f"teacher vocab mapped {mapped:.4f}")
    assert n_one / n_groups > 0.5 and mapped > 0.5


def test_bytes_the_teacher_would_normalise_or_cannot_decode_are_spelled_exactly(toks):
    student, teacher = toks["qwen3_5"], toks["qwen3"]
    tb_s, _ = token_bytes(student)
    byte_id = {b[0]: i for i, b in enumerate(tb_s) if b is not None and len(b) == 1}
    # "e" + combining acute (NFC would make it 'é'), a lone 0xE6 (not UTF-8), the text "<|im_end|>" as plain bytes
    data = b"cafe\xcc\x81 \xe6 <|im_end|>!"
    ids = [byte_id[b] for b in data]
    for name in ("qwen3", "mistral_v3"):
        aligner = Aligner(toks[name], student)
        alignment = aligner.teacher_ids_for(ids)
        _check_alignment(aligner, alignment, student, toks[name])
        assert alignment.text == data
    assert toks["qwen3"].token_id("<|im_end|>") not in Aligner(teacher, student).teacher_ids_for(ids).teacher_ids


# ----------------------------------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------------------------------

def _oracle_topk(teacher_ids, vocab_size, k, rng, p_next=0.6):
    """Teacher rows whose top-1 is the teacher's actual next token (prob p_next), then random ids."""
    n = len(teacher_ids)
    ids = rng.integers(0, vocab_size, size=(n, k))
    ids[:, 0] = np.append(teacher_ids[1:], teacher_ids[-1])
    probs = rng.dirichlet(np.ones(k - 1), size=n) * (1 - p_next) * 0.9  # 10% of the mass stays outside the top-k
    logp = np.log(np.concatenate([np.full((n, 1), p_next), probs], axis=1))
    return ids, logp


@pytest.mark.parametrize("teacher_name", ["qwen3", "mistral_v3"])
def test_teacher_predictions_land_on_the_student_position_whose_target_they_predict(toks, teacher_name):
    student, teacher = toks["qwen3_5"], toks[teacher_name]
    aligner = Aligner(teacher, student)
    rng = np.random.default_rng(0)
    text = _chat_text() + TEXTS[1] + TEXTS[3]
    alignment = aligner.teacher_ids_for(student.encode(text))
    t_ids, t_logp = _oracle_topk(alignment.teacher_ids, teacher.vocab_size, 8, rng)
    out = aligner.project(alignment, t_ids, t_logp)
    s_ids, valid = alignment.student_ids, out["valid"] > 0
    pos = np.nonzero(valid[:-1])[0]
    assert len(pos) > 0.5 * len(s_ids)
    top1 = out["topk_ids"][pos, 0]
    # the teacher's top-1 is its next token; it must be the student's next token (the target), never the input
    assert np.array_equal(top1, s_ids[pos + 1])
    np.testing.assert_allclose(out["sampled_logp"][pos], np.log(0.6), rtol=1e-6)
    # masked positions are exactly those whose target is not a clean 1:1 group
    gs, gt = alignment.groups
    clean = (gs[:, 1] - gs[:, 0] == 1) & (gt[:, 1] - gt[:, 0] == 1) & (gs[:, 0] >= 1) & (gt[:, 0] >= 1)
    assert set(pos.tolist()) == set((gs[clean, 0] - 1).tolist())
    if teacher_name == "mistral_v3":  # <|im_end|> targets are predicted by the teacher's </s>
        im_end = np.nonzero(s_ids[1:] == student.token_id("<|im_end|>"))[0]
        assert len(im_end) and valid[im_end].all()
    # chain: 1:m groups become {target, rest} with p = Π of the teacher's m token probabilities (0.6 each here)
    chain = aligner.project(alignment, t_ids, t_logp, kxm="chain")
    new = np.nonzero((chain["valid"] > 0) & ~valid)[0]
    assert np.all(chain["valid"][valid] > 0) and len(new) > 0
    one_to_m = {a - 1: d - c for (a, b), (c, d) in zip(gs, gt) if b - a == 1 and d - c >= 2 and a >= 1 and c >= 1}
    assert set(new.tolist()) == set(one_to_m)
    assert np.array_equal(chain["topk_ids"][new, 0], s_ids[new + 1]) and np.all(chain["topk_ids"][new, 1:] == -1)
    np.testing.assert_allclose(chain["topk_logp"][new, 0], [one_to_m[i] * np.log(0.6) for i in new], rtol=1e-5)
    np.testing.assert_allclose(np.exp(chain["topk_logp"][new, 0]) + np.exp(chain["tail_logp"][new]), 1.0, rtol=1e-5)
    print(f"\n{teacher_name} -> qwen3_5: valid positions, mask {valid.mean():.3f}, chain {chain['valid'].mean():.3f}")


def _random_teacher(rng, n, k, v):
    logits = rng.normal(size=(n, v)) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :k]
    return ids, np.take_along_axis(logp, ids, -1), logp


def test_projection_conserves_mass_and_moves_unmapped_ids_to_the_tail():
    rng = np.random.default_rng(1)
    v_t, v_s, n, k = 40, 30, 12, 8
    tb_t = [bytes([65 + i]) for i in range(v_t)]  # 1-byte tokens: every group is 1:1
    ids_map = rng.integers(-1, v_s, size=v_t).astype(np.int32)
    ids_map[[3, 4]] = 7  # two teacher ids -> one student id
    from a1jax.distill.vocab import VocabMap
    vm = VocabMap(ids_map, np.zeros(v_t, bool), v_s, identity=False)
    t_ids, t_logp, full = _random_teacher(rng, n, k, v_t)

    def put_first(row, first):  # row's top-k starts with `first`, the rest by rank, no id twice
        t_ids[row] = first + [x for x in np.argsort(-full[row]) if x not in first][:k - len(first)]
        t_logp[row] = full[row, t_ids[row]]

    put_first(2, [3, 4])
    put_first(5, [int(np.nonzero(ids_map < 0)[0][0])])  # an unmapped id at the top
    t_ids[6, -1] = -1  # a padded slot
    t_logp[6, -1] = 0.0
    seq = np.arange(n) % v_t
    spans = token_byte_spans(seq, tb_t)
    groups = align_groups(spans, spans)
    out = project_teacher_topk(t_ids, t_logp, full[np.arange(n - 1), seq[1:]].tolist() + [0.0], vm, groups, n,
                               student_ids=seq)
    assert out["valid"].tolist() == [1.0] * n
    for i in range(n):
        ok = out["topk_ids"][i] >= 0
        present = t_ids[i] >= 0
        mapped_mass = np.exp(out["topk_logp"][i][ok].astype(np.float64)).sum()
        teacher_mapped = np.exp(t_logp[i][present & (ids_map[np.maximum(t_ids[i], 0)] >= 0)]).sum()
        np.testing.assert_allclose(mapped_mass, teacher_mapped, rtol=1e-5)
        np.testing.assert_allclose(mapped_mass + np.exp(out["tail_logp"][i]), 1.0, rtol=1e-5)
        unmapped = np.exp(t_logp[i][present & (ids_map[np.maximum(t_ids[i], 0)] < 0)]).sum()
        rest = 1.0 - np.exp(t_logp[i][present]).sum()
        np.testing.assert_allclose(np.exp(out["tail_logp"][i]), unmapped + rest, rtol=1e-4)
        assert len(set(out["topk_ids"][i][ok].tolist())) == ok.sum()  # no student id twice
        assert set(out["topk_ids"][i][ok].tolist()) == set(ids_map[t_ids[i][present]].tolist()) - {-1}
    merged = out["topk_logp"][2][out["topk_ids"][2] == 7]
    np.testing.assert_allclose(np.exp(merged), np.exp(full[2, 3]) + np.exp(full[2, 4]), rtol=1e-5)
    assert ids_map[t_ids[5, 0]] == -1 and out["topk_ids"][5, 0] == -1
    assert np.exp(out["tail_logp"][5]) >= np.exp(t_logp[5, 0])


def test_k_to_m_groups_are_masked_or_chain_merged():
    from a1jax.distill.vocab import VocabMap
    # student ["Hello", ",", " world", "!"] (ids 0-3); teacher ["Hel", "lo", ",", " wor", "ld", "!"] (ids 0-5)
    tb_s, tb_t = [b"Hello", b",", b" world", b"!"], [b"Hel", b"lo", b",", b" wor", b"ld", b"!"]
    vm = VocabMap(np.array([-1, -1, 1, -1, -1, 3], np.int32), np.zeros(6, bool), 4, identity=False)
    s_seq, t_seq = np.arange(4), np.arange(6)
    groups = align_groups(token_byte_spans(s_seq, tb_s), token_byte_spans(t_seq, tb_t))
    assert _groups_as_lists(groups) == [[[0], [1], [2], [3]], [[0, 1], [2], [3, 4], [5]]]
    rng = np.random.default_rng(2)
    t_ids, t_logp, _ = _random_teacher(rng, 6, 3, 6)
    t_sampled = np.log(np.array([0.5, 0.9, 0.4, 0.8, 0.7, 0.3]))  # teacher log p of token j+1 at position j
    mask = project_teacher_topk(t_ids, t_logp, t_sampled, vm, groups, 4, kxm="mask", student_ids=s_seq)
    # position 0 predicts "," (1:1 with teacher position 1); 1 predicts " world" (1:2); 2 predicts "!" (teacher 4)
    assert mask["valid"].tolist() == [1.0, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(mask["sampled_logp"][[0, 2]], t_sampled[[1, 4]], rtol=1e-6)
    chain = project_teacher_topk(t_ids, t_logp, t_sampled, vm, groups, 4, kxm="chain", student_ids=s_seq)
    assert chain["valid"].tolist() == [1.0, 1.0, 1.0, 1.0]
    p_world = 0.4 * 0.8  # teacher positions 2, 3 predict " wor" then "ld"
    assert chain["topk_ids"][1].tolist() == [2, -1, -1]
    np.testing.assert_allclose(np.exp(chain["topk_logp"][1, 0]), p_world, rtol=1e-6)
    np.testing.assert_allclose(np.exp(chain["sampled_logp"][1]), p_world, rtol=1e-6)
    np.testing.assert_allclose(np.exp(chain["tail_logp"][1]), 1 - p_world, rtol=1e-6)
    for key in ("topk_ids", "topk_logp", "tail_logp"):
        np.testing.assert_array_equal(chain[key][[0, 2, 3]], mask[key][[0, 2, 3]])
    # student finer than teacher (k >= 2 student tokens): masked even with "chain"
    vm_rev = VocabMap(np.array([-1, 1, -1, 3], np.int32), np.zeros(4, bool), 6, identity=False)
    rev = align_groups(token_byte_spans(t_seq, tb_t), token_byte_spans(s_seq, tb_s))
    t_ids2, t_logp2, _ = _random_teacher(rng, 4, 3, 4)
    out = project_teacher_topk(t_ids2, t_logp2, np.log([0.5, 0.5, 0.5, 0.5]), vm_rev, rev, 6, kxm="chain",
                               student_ids=t_seq)
    assert out["valid"].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="kxm='both'"):
        project_teacher_topk(t_ids, t_logp, t_sampled, vm, groups, 4, kxm="both")
    with pytest.raises(ValueError, match=r"t_ids and t_logp must both be \[N_t, K\]"):
        project_teacher_topk(t_ids[:, 0], t_logp, t_sampled, vm, groups, 4)


def test_identity_fast_path_returns_the_inputs_and_equals_the_general_path(toks):
    student = toks["qwen3_5"]
    aligner = Aligner(student, student)
    ids = student.encode(_chat_text())
    alignment = aligner.teacher_ids_for(ids)
    assert aligner.identity and alignment.groups is None and alignment.teacher_ids is alignment.student_ids
    t_ids, t_logp, = _oracle_topk(alignment.teacher_ids, student.vocab_size, 4, np.random.default_rng(3))
    t_sampled = np.full(len(ids), np.log(0.6), np.float32)
    fast = aligner.project(alignment, t_ids, t_logp, t_sampled)
    assert fast["topk_ids"] is t_ids and fast["topk_logp"] is t_logp and fast["sampled_logp"] is t_sampled
    # the general path over identical tokenisations: only 1:1 groups, and the same arrays
    tb, _ = token_bytes(student)
    spans = token_byte_spans(ids, tb)
    groups = align_groups(spans, spans, pair=lambda i, j: i == j)
    assert np.all(groups[0][:, 1] - groups[0][:, 0] == 1) and np.array_equal(groups[0], groups[1])
    slow = project_teacher_topk(t_ids, t_logp, t_sampled, aligner.vocab_map, groups, len(ids))
    for key in fast:
        np.testing.assert_allclose(np.asarray(slow[key], np.float64), np.asarray(fast[key], np.float64), rtol=1e-6)
