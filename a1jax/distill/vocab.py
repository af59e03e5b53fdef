"""Cross-tokenizer alignment for distillation (docs/spec/recipe.md §3.2, §6.3): host-side numpy, never jitted.

A teacher with another tokenizer scores the student's rollout re-tokenised as its own ids; its top-k predictions are
then carried back to the student's positions and vocabulary:

  token_bytes          every vocabulary entry as the bytes it stands for; special/control tokens flagged (bytes None)
  build_vocab_map      teacher id -> student id by exact byte string; special tokens by role (`DEFAULT_SPECIAL_ROLES`)
  token_byte_spans     [start, end) byte offsets of a token sequence (special tokens: zero width)
  align_groups         two-pointer over byte offsets (TRL GOLD `_align_by_byte_offsets`): a group closes where both
                       sides end on the same byte; 1:1 groups are clean, k:m groups are merged or masked
  project_teacher_topk teacher top-k at teacher positions -> `TeacherSparse` arrays at student positions
  Aligner              the above, precomputed for one (teacher, student) pair, with the identity fast path

Which student position a teacher prediction lands on. Student position i predicts token i+1; teacher position j
predicts teacher token j+1. A group pairs student tokens [a, b) with teacher tokens [c, d) covering the same bytes, so
both models saw the same bytes before it: student position a-1 and teacher position c-1 predict the group's first
token from the same text. For a 1:1 group that prediction is the whole group, so the teacher's top-k at c-1 (mapped)
becomes the target of student position a-1. The student's last position is paired with the teacher's last position
(both have read the whole text; their target lies beyond the sequence). Positions predicting a token of a k:m group
get valid=0, or with kxm="chain" a 1:m group becomes a two-outcome target by the chain rule (`project_teacher_topk`).

SentencePiece teachers prepend a dummy '▁' to every encoded text run: the first token of a run ('▁system') spells a
space the text does not have. Its byte span leaves that space out, and the teacher row predicting it is mapped with
the space stripped (`VocabMap.ids_strip_space`), so '▁system' lands on the student's 'system', not ' system'.

Limits: the teacher reads the student's text (its own special tokens only where a role matches), not a transcript
re-rendered with its own chat template; k:m groups with several student tokens are always masked.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sentencepiece
import tokenizers

from a1jax.data.tokenizers import Tokenizer
from a1jax.data.tokenizers.bpe import CHAR_TO_BYTE

# Special tokens matched across tokenizers by the role they play; a special token with no role here is matched by its
# literal text (so `<|vision_start|>` in Qwen3 and Qwen3.5 match). Keyed by `Tokenizer.name`; token text -> role.
_QWEN_ROLES = {
    "<|endoftext|>": "end_of_text", "<|im_start|>": "turn_start", "<|im_end|>": "end_of_turn",
    "<tool_call>": "tool_call_start", "</tool_call>": "tool_call_end",
    "<tool_response>": "tool_response_start", "</tool_response>": "tool_response_end",
    "<think>": "think_start", "</think>": "think_end",
}
DEFAULT_SPECIAL_ROLES: dict[str, dict[str, str]] = {
    "qwen3": _QWEN_ROLES,
    "qwen3_5": _QWEN_ROLES,
    # Mistral ends an assistant turn with </s>: that is the stop decision Qwen makes with <|im_end|>.
    "mistral_v3": {
        "<unk>": "unk", "<s>": "bos", "</s>": "end_of_turn", "[INST]": "user_start", "[/INST]": "user_end",
        "[TOOL_CALLS]": "tool_call_start", "[TOOL_RESULTS]": "tool_response_start",
        "[/TOOL_RESULTS]": "tool_response_end", "[AVAILABLE_TOOLS]": "tools_start", "[/AVAILABLE_TOOLS]": "tools_end",
    },
}
KXM_MODES = ("mask", "chain")
_SPM_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# ---------------------------------------------------------------------------------------------------------------
# (a) Vocabulary entries as bytes
# ---------------------------------------------------------------------------------------------------------------

def byte_level_piece_bytes(piece: str) -> bytes:
    """A byte-level BPE vocabulary string as bytes: invert GPT-2's byte -> printable-character table ('Ġworld')."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in piece)
    except KeyError as e:
        raise ValueError(f"{piece!r} is not a byte-level BPE piece: {e.args[0]!r} is outside GPT-2's byte alphabet") from None


def sentencepiece_piece_bytes(piece: str) -> bytes:
    """A SentencePiece piece as bytes: '▁' is a space, a byte-fallback piece '<0xE6>' is that one byte."""
    m = _SPM_BYTE_PIECE.fullmatch(piece)
    return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()


def _vocab(tokenizer: Any) -> tuple[list[bytes | None], dict[int, str]]:
    """(bytes per id with None for special ids, special id -> literal text) for the three supported kinds."""
    if isinstance(tokenizer, Tokenizer):  # the wrapper applies the same two rules (a1jax/data/tokenizers)
        special = {i: s for s, i in tokenizer.special_tokens.items()}
        return [None if i in special else b for i, b in enumerate(tokenizer.token_bytes_table)], special
    if isinstance(tokenizer, tokenizers.Tokenizer):
        if not isinstance(tokenizer.decoder, tokenizers.decoders.ByteLevel):
            raise ValueError(f"only byte-level BPE `tokenizers.Tokenizer`s are supported (decoder: {tokenizer.decoder})")
        special = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        table: list[bytes | None] = [None] * tokenizer.get_vocab_size(with_added_tokens=True)
        for piece, i in tokenizer.get_vocab(with_added_tokens=False).items():
            if i not in special:
                table[i] = byte_level_piece_bytes(piece)
        special.update({i: f"<unused_{i}>" for i, b in enumerate(table) if b is None and i not in special})
        return table, special
    if isinstance(tokenizer, sentencepiece.SentencePieceProcessor):
        sp = tokenizer
        special = {i: sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}
        return [None if i in special else sentencepiece_piece_bytes(sp.id_to_piece(i))
                for i in range(sp.get_piece_size())], special
    raise TypeError(f"token_bytes: expected an a1jax Tokenizer, a tokenizers.Tokenizer or a SentencePieceProcessor, "
                    f"got {type(tokenizer).__name__}")


def token_bytes(tokenizer: Any) -> tuple[list[bytes | None], np.ndarray]:
    """(bytes of every id, bool[V] is_special): the byte-level normal form both vocabularies are compared in.

    Byte-level BPE 'Ġworld' -> b' world'; SentencePiece '▁world' -> b' world', '<0xE6>' -> b'\\xe6'. Special/control
    (and unused) ids get None. Accepts an a1jax `Tokenizer`, a byte-level `tokenizers.Tokenizer` or a
    `sentencepiece.SentencePieceProcessor`.
    """
    table, special = _vocab(tokenizer)
    is_special = np.zeros(len(table), bool)
    is_special[list(special)] = True
    return table, is_special


# ---------------------------------------------------------------------------------------------------------------
# (b) Vocabulary map
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class VocabMap:
    """Teacher id -> student id (docs/spec/recipe.md §6.1). ids int32[V_teacher] (-1 = unmapped); is_special
    bool[V_teacher]."""
    ids: np.ndarray
    is_special: np.ndarray
    n_student: int
    identity: bool  # identical vocabularies: ids == arange, and alignment is skipped altogether
    # teacher id -> student id of its bytes less one leading space (specials: as `ids`): the map for a teacher row
    # whose next token starts with SentencePiece's dummy-prefix '▁', a space the text does not have
    ids_strip_space: np.ndarray | None = None

    @property
    def mapped_fraction(self) -> float:
        return float(np.mean(self.ids >= 0))


def _roles(tokenizer: Any, special: dict[int, str], tables: Mapping[str, Mapping[str, str]]) -> dict[int, str]:
    name = getattr(tokenizer, "name", None)
    table = dict(tables.get(name, {})) if name is not None else {}
    by_text = {s: i for i, s in special.items()}
    unknown = sorted(set(table) - set(by_text))
    if unknown:
        raise ValueError(f"special_roles[{name!r}] names {unknown}, which are not special tokens of {name}")
    return {i: table.get(s, "literal:" + s) for i, s in special.items()}


def build_vocab_map(teacher_tok: Any, student_tok: Any,
                    special_roles: Mapping[str, Mapping[str, str]] | None = None) -> VocabMap:
    """Exact byte-string matches; special tokens by role (`special_roles`: tokenizer name -> {token text: role},
    default `DEFAULT_SPECIAL_ROLES`; a special token without a role matches the one with the same text).

    Where several student ids share one byte string (SentencePiece: '<0x41>' and 'A') the highest id wins:
    SentencePiece lists its byte-fallback pieces first, so this is the piece its encoder emits. Identical
    vocabularies (same bytes, same special texts) give the identity map, detected up front.
    """
    tb_t, special_t = _vocab(teacher_tok)
    tb_s, special_s = _vocab(student_tok)
    if tb_t == tb_s and special_t == special_s:
        n = len(tb_t)
        return VocabMap(np.arange(n, dtype=np.int32), _flags(n, special_t), n, identity=True)
    index = {b: i for i, b in enumerate(tb_s) if b is not None}  # later ids overwrite earlier ones
    ids = np.fromiter((-1 if b is None else index.get(b, -1) for b in tb_t), np.int32, len(tb_t))
    tables = DEFAULT_SPECIAL_ROLES if special_roles is None else special_roles
    student_by_role: dict[str, int] = {}
    for i, role in sorted(_roles(student_tok, special_s, tables).items()):
        student_by_role.setdefault(role, i)
    for i, role in _roles(teacher_tok, special_t, tables).items():
        ids[i] = student_by_role.get(role, -1)
    strip = np.fromiter((index.get(b[1:], -1) if b is not None and b[:1] == b" " else -1 for b in tb_t),
                        np.int32, len(tb_t))
    strip[list(special_t)] = ids[list(special_t)]
    return VocabMap(ids, _flags(len(tb_t), special_t), len(tb_s), identity=False, ids_strip_space=strip)


def _flags(n: int, special: dict[int, str]) -> np.ndarray:
    flags = np.zeros(n, bool)
    flags[list(special)] = True
    return flags


# ---------------------------------------------------------------------------------------------------------------
# (c) Sequence alignment
# ---------------------------------------------------------------------------------------------------------------

def token_byte_spans(token_ids: Sequence[int] | np.ndarray, tok_bytes: Sequence[bytes | None]) -> np.ndarray:
    """int32[N, 2] [start, end) byte offsets of each token in the concatenated text; special tokens are zero width."""
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    bad = np.nonzero((ids < 0) | (ids >= len(tok_bytes)))[0]
    if len(bad):
        raise ValueError(f"token_ids[{bad[0]}]={ids[bad[0]]} is outside the vocabulary [0, {len(tok_bytes)})")
    lengths = [0 if tok_bytes[i] is None else len(tok_bytes[i]) for i in ids.tolist()]
    return _spans(lengths)


def _spans(lengths: Sequence[int]) -> np.ndarray:
    ends = np.cumsum(np.asarray(lengths, np.int64))
    return np.stack([ends - np.asarray(lengths, np.int64), ends], axis=-1).astype(np.int32).reshape(-1, 2)


def _check_spans(spans: np.ndarray, side: str) -> np.ndarray:
    spans = np.asarray(spans, np.int64)
    if spans.ndim != 2 or spans.shape[1] != 2:
        raise ValueError(f"spans_{side}: expected shape [N, 2], got {spans.shape}")
    if len(spans) and (np.any(spans[:, 1] < spans[:, 0]) or np.any(spans[1:, 0] != spans[:-1, 1])):
        raise ValueError(f"spans_{side}: spans must be contiguous [start, end) offsets with end >= start")
    return spans


def align_groups(spans_s: np.ndarray, spans_t: np.ndarray, *, text: bytes | None = None,
                 pair: Callable[[int, int], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group student and teacher tokens covering the same bytes: (groups_s, groups_t), int32[G, 2] index ranges.

    Two-pointer (GOLD): advance the side whose current token ends earlier; close the group when both end on the same
    byte. With `text` (the bytes both sides spell), a group also never closes inside a multi-byte UTF-8 character.
    Zero-width tokens (special tokens, a BOS on one side) at a group boundary form their own group: paired 1:1 with a
    zero-width token of the other side when `pair(i_student, j_teacher)` allows it (default: in order), otherwise alone
    (an empty range on the other side). Zero-width tokens inside a group belong to it.
    """
    s, t = _check_spans(spans_s, "s"), _check_spans(spans_t, "t")
    ns, nt = len(s), len(t)
    start_s = s[0, 0] if ns else 0
    start_t = t[0, 0] if nt else 0
    end_s = s[-1, 1] if ns else start_s
    end_t = t[-1, 1] if nt else start_t
    if (start_s, end_s) != (start_t, end_t):
        raise ValueError(f"student tokens cover bytes [{start_s}, {end_s}), teacher tokens [{start_t}, {end_t}): "
                         "both must spell the same text")
    if text is not None and len(text) != end_s - start_s:
        raise ValueError(f"text has {len(text)} bytes, the tokens cover {end_s - start_s}")
    pair = pair or (lambda i, j: True)
    zs, zt = (s[:, 1] == s[:, 0]).tolist(), (t[:, 1] == t[:, 0]).tolist()
    s, t = s.tolist(), t.tolist()  # python ints: this loop runs once per token

    def inside_char(pos: int) -> bool:  # a UTF-8 continuation byte starts at pos
        k = pos - start_s
        return text is not None and k < len(text) and (text[k] & 0xC0) == 0x80

    groups: list[tuple[int, int, int, int]] = []  # (student start, stop, teacher start, stop)
    i = j = 0
    while i < ns or j < nt:
        at_s, at_t = i < ns and zs[i], j < nt and zt[j]
        if at_s or at_t:  # zero-width tokens at a group boundary
            if at_s and at_t and pair(i, j):
                groups.append((i, i + 1, j, j + 1))
                i, j = i + 1, j + 1
            elif at_s and not (at_t and _later_partner(i, j, zt, pair)):
                groups.append((i, i + 1, j, j))
                i += 1
            else:
                groups.append((i, i, j, j + 1))
                j += 1
            continue
        assert i < ns and j < nt, "equal, contiguous spans leave bytes on both sides"
        i0, j0 = i, j
        es, et = s[i][1], t[j][1]
        i, j = i + 1, j + 1
        while es != et or inside_char(es):
            if es < et or (es == et and i < ns):  # the student side ends earlier (or both inside one character)
                if i >= ns:
                    raise ValueError(f"student tokens end at byte {es} inside the teacher's token ending at {et}")
                es, i = s[i][1], i + 1
            elif j < nt:
                et, j = t[j][1], j + 1
            else:
                raise ValueError(f"teacher tokens end at byte {et} inside the student's token ending at {es}")
        groups.append((i0, i, j0, j))
    g = np.asarray(groups, np.int32).reshape(-1, 4)
    return g[:, :2], g[:, 2:]


def _later_partner(i: int, j: int, zt: list[bool], pair: Callable[[int, int], bool]) -> bool:
    """Whether student zero-width token i pairs with a later teacher zero-width token in the run starting at j."""
    k = j + 1
    while k < len(zt) and zt[k]:
        if pair(i, k):
            return True
        k += 1
    return False


# ---------------------------------------------------------------------------------------------------------------
# (d) Teacher top-k -> TeacherSparse in student space
# ---------------------------------------------------------------------------------------------------------------

def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - m), axis=-1)) + m[..., 0]


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - e^x); -inf where x >= 0 (rounding can push a full top-k's mass just past 1)."""
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x < 0, np.log(-np.expm1(np.minimum(x, 0.0))), -np.inf)


def _empty_sparse(n: int, k: int) -> dict[str, np.ndarray]:
    """valid=0 everywhere, with finite neutral values (all mass in the tail) so masked positions cannot make NaNs."""
    return dict(topk_ids=np.full((n, k), -1, np.int32), topk_logp=np.full((n, k), -np.inf, np.float32),
                sampled_logp=np.zeros(n, np.float32), tail_logp=np.zeros(n, np.float32), valid=np.zeros(n, np.float32))


def _map_rows(t_ids: np.ndarray, t_logp: np.ndarray, vocab_map: VocabMap, strip_rows: np.ndarray):
    """Map teacher top-k rows [P, K] to student ids: (ids, logp, tail_logp); tail = unmapped top-k + the rest."""
    present = t_ids >= 0
    if np.any(t_ids >= len(vocab_map.ids)):
        raise ValueError(f"teacher top-k id {int(t_ids.max())} is outside the teacher vocabulary ({len(vocab_map.ids)})")
    lp = np.where(present, t_logp.astype(np.float64), -np.inf)
    safe = np.where(present, t_ids, 0)
    ids = np.where(present, vocab_map.ids[safe], -1)
    if strip_rows.any():
        ids[strip_rows] = np.where(present[strip_rows], vocab_map.ids_strip_space[safe[strip_rows]], -1)
    mapped = ids >= 0
    rest = _log1mexp(_logsumexp(lp))  # teacher mass outside its own top-k (t_logp are normalised log-probs)
    tail = np.logaddexp(_logsumexp(np.where(mapped, -np.inf, lp)), rest)
    lp = np.where(mapped, lp, -np.inf)
    srt = np.sort(ids, axis=-1)  # several teacher ids -> one student id: merge their mass into the first slot
    for r in np.nonzero(np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0), axis=-1))[0]:
        first: dict[int, int] = {}
        for k, v in enumerate(ids[r].tolist()):
            if v >= 0 and v in first:
                lp[r, first[v]] = np.logaddexp(lp[r, first[v]], lp[r, k])
                ids[r, k], lp[r, k] = -1, -np.inf
            elif v >= 0:
                first[v] = k
    return ids.astype(np.int32), lp, tail


def identity_sparse(t_ids: np.ndarray, t_logp: np.ndarray, t_sampled_logp: np.ndarray) -> dict[str, np.ndarray]:
    """Identical tokenizers: teacher position i is student position i; ids and log-probs are returned as they are."""
    lp = np.where(np.asarray(t_ids) >= 0, np.asarray(t_logp, np.float64), -np.inf)
    return dict(topk_ids=t_ids, topk_logp=t_logp, sampled_logp=t_sampled_logp,
                tail_logp=_log1mexp(_logsumexp(lp)).astype(np.float32), valid=np.ones(len(t_ids), np.float32))


def project_teacher_topk(t_ids: np.ndarray, t_logp: np.ndarray, t_sampled_logp: np.ndarray | None,
                         vocab_map: VocabMap, groups: tuple[np.ndarray, np.ndarray] | None, n_student: int, *,
                         kxm: str = "mask", student_ids: np.ndarray | None = None,
                         space_prefix_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The teacher's top-k at its own positions as `TeacherSparse` arrays ([n_student, K] / [n_student]).

    t_ids int[N_t, K] teacher ids (-1 = pad), t_logp [N_t, K] their normalised log-probs, t_sampled_logp [N_t] the
    teacher's log-prob of its own next token (teacher position j scores teacher token j+1). `groups` from
    `align_groups`; None only with an identity map (then position i is position i: `identity_sparse`).

    Clean 1:1 group (student a <-> teacher c, a, c >= 1): student position a-1 gets the teacher's row c-1, ids mapped
    through `vocab_map`; unmapped ids move their mass to the tail, so mapped + tail = 1 (up to rounding); teacher ids
    mapping to the same student id are merged. sampled_logp = t_sampled_logp[c-1] (the teacher's log-prob of the
    token spelling the same bytes as the student's target); when None, the student target's mapped top-k log-prob,
    or the tail (an upper bound) when it is outside the top-k -- this needs `student_ids`.
    space_prefix_rows bool[N_t]: teacher rows whose next token's leading '▁' is SentencePiece's dummy prefix, not
    text (`Alignment.space_prefix_rows`); they are mapped with `vocab_map.ids_strip_space` ('▁system' -> 'system').
    k:m groups, kxm="mask": every student position predicting a token of the group has valid=0.
    kxm="chain": a 1:m group (one student token spelled by m >= 2 teacher tokens) is merged by the chain rule:
      log p_T(student token) = Σ_{j=c}^{d-1} t_sampled_logp[j-1], the teacher's probability of those bytes along its
      own tokenisation (a lower bound on its marginal probability of the bytes); student position a-1 gets the
      two-outcome support {student token, rest}: topk_ids[0] = student_ids[a], topk_logp[0] = sampled_logp = that
      sum, tail = log(1 - p). Groups with k >= 2 student tokens stay masked: the teacher's conditional probability
      of a student sub-piece is not defined by its own tokens.
    """
    if kxm not in KXM_MODES:
        raise ValueError(f"kxm={kxm!r}: expected one of {KXM_MODES}")
    t_ids, t_logp = np.asarray(t_ids), np.asarray(t_logp)
    if t_ids.ndim != 2 or t_logp.shape != t_ids.shape:
        raise ValueError(f"t_ids and t_logp must both be [N_t, K]; got {t_ids.shape} and {t_logp.shape}")
    nt = len(t_ids)
    if t_sampled_logp is not None:
        t_sampled_logp = np.asarray(t_sampled_logp)
        if t_sampled_logp.shape != (nt,):
            raise ValueError(f"t_sampled_logp must be [N_t]=[{nt}], got {t_sampled_logp.shape}")
    if student_ids is not None and np.shape(student_ids) != (n_student,):
        raise ValueError(f"student_ids must be [n_student]=[{n_student}], got {np.shape(student_ids)}")
    if groups is None:
        if not vocab_map.identity or nt != n_student:
            raise ValueError("groups=None is the identity path: it needs an identity vocab map and N_t == n_student")
        if t_sampled_logp is None:
            raise ValueError("the identity path needs t_sampled_logp")
        return identity_sparse(t_ids, t_logp, t_sampled_logp)
    gs, gt = (np.asarray(g, np.int64).reshape(-1, 2) for g in groups)
    if len(gs) != len(gt) or (len(gs) and (gs[-1, 1] != n_student or gt[-1, 1] != nt)):
        raise ValueError(f"groups must pair ranges covering all {n_student} student and {nt} teacher tokens")
    ks, kt = gs[:, 1] - gs[:, 0], gt[:, 1] - gt[:, 0]
    one = (ks == 1) & (kt == 1) & (gs[:, 0] >= 1) & (gt[:, 0] >= 1)
    si, tj = gs[one, 0] - 1, gt[one, 0] - 1
    if len(gs) and n_student and nt and ks[-1] > 0 and kt[-1] > 0:  # last positions: both read the whole text
        si, tj = np.append(si, n_student - 1), np.append(tj, nt - 1)

    strip = np.zeros(nt, bool) if space_prefix_rows is None else np.asarray(space_prefix_rows, bool)
    if strip.shape != (nt,) or (strip.any() and vocab_map.ids_strip_space is None):
        raise ValueError(f"space_prefix_rows must be bool[N_t]=[{nt}] and needs vocab_map.ids_strip_space")
    out = _empty_sparse(n_student, t_ids.shape[1])
    ids, lp, tail = _map_rows(t_ids[tj], t_logp[tj], vocab_map, strip[tj])
    out["topk_ids"][si], out["topk_logp"][si], out["tail_logp"][si] = ids, lp, tail
    out["valid"][si] = 1.0
    if t_sampled_logp is not None:
        out["sampled_logp"][si] = t_sampled_logp[tj]
    elif student_ids is not None:
        target = np.asarray(student_ids)[np.minimum(si + 1, n_student - 1)]
        hit = ids == target[:, None]
        out["sampled_logp"][si] = np.where(hit.any(-1), np.max(np.where(hit, lp, -np.inf), axis=-1), tail)
    else:
        raise ValueError("pass t_sampled_logp (teacher log-prob of its next token) or student_ids")

    if kxm == "chain":
        if t_sampled_logp is None or student_ids is None:
            raise ValueError('kxm="chain" needs t_sampled_logp and student_ids')
        for g in np.nonzero((ks == 1) & (kt >= 2) & (gs[:, 0] >= 1) & (gt[:, 0] >= 1))[0]:
            (a, _), (c, d) = gs[g], gt[g]
            logp = float(np.sum(t_sampled_logp[c - 1:d - 1], dtype=np.float64))
            if not np.isfinite(logp):
                continue
            i = a - 1
            out["topk_ids"][i], out["topk_logp"][i] = -1, -np.inf
            out["topk_ids"][i, 0], out["topk_logp"][i, 0] = student_ids[a], logp
            out["sampled_logp"][i], out["tail_logp"][i], out["valid"][i] = logp, _log1mexp(logp), 1.0
    return out


# ---------------------------------------------------------------------------------------------------------------
# The whole path for one (teacher, student) pair
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Alignment:
    """A student sequence re-tokenised for the teacher. groups/spans are None on the identity path (i <-> i)."""
    student_ids: np.ndarray  # int32[N_s]
    teacher_ids: np.ndarray  # int32[N_t]: what the teacher scores
    groups: tuple[np.ndarray, np.ndarray] | None  # (groups_s, groups_t) int32[G, 2] index ranges
    spans_s: np.ndarray | None  # int32[N_s, 2] byte spans in `text`
    spans_t: np.ndarray | None  # int32[N_t, 2]; a SentencePiece dummy-prefix space is not counted
    text: bytes | None  # the bytes both sides spell (special tokens excluded)
    space_prefix_rows: np.ndarray | None = None  # bool[N_t]: row j predicts a token whose leading '▁' is not text


_SURROGATES = re.compile("([\udc80-\udcff]+)")  # bytes that are not UTF-8, after decode(errors="surrogateescape")
_WORDS = re.compile(r"\s+|\w+|[^\w\s]+")


class Aligner:
    """Precomputed vocab map and byte tables for one (teacher, student) pair of a1jax `Tokenizer`s.

    `teacher_ids_for(student_ids)` re-tokenises the student's text for the teacher and aligns the two; `project`
    turns the teacher's top-k on those ids into `TeacherSparse` arrays at the student's positions. Identical
    tokenizers are detected once: the teacher then scores the student's own ids and nothing is aligned.
    """

    def __init__(self, teacher_tok: Tokenizer, student_tok: Tokenizer, *,
                 special_roles: Mapping[str, Mapping[str, str]] | None = None, add_teacher_bos: bool | None = None):
        self.teacher, self.student = teacher_tok, student_tok
        self.vocab_map = build_vocab_map(teacher_tok, student_tok, special_roles)
        self.identity = self.vocab_map.identity
        if self.identity:
            return
        self._tb_s, _ = token_bytes(student_tok)
        self._tb_t, _ = token_bytes(teacher_tok)
        vm = self.vocab_map
        self._special_s2t: dict[int, int] = {}
        for t in np.nonzero(vm.is_special & (vm.ids >= 0))[0].tolist():
            self._special_s2t.setdefault(int(vm.ids[t]), t)
        self._byte_id = {b[0]: i for i, b in enumerate(self._tb_t) if b is not None and len(b) == 1}
        if add_teacher_bos and teacher_tok.bos_id is None:
            raise ValueError(f"add_teacher_bos=True but teacher {teacher_tok.name} has no BOS token")
        self._bos = teacher_tok.bos_id if add_teacher_bos in (None, True) else None
        # SentencePiece's dummy prefix: every encode() starts with a '▁' that is not in the text.
        self._dummy_prefix = b"".join(self._tb_t[i] or b"" for i in teacher_tok.encode("a")) == b" a"

    def teacher_ids_for(self, student_ids: Sequence[int] | np.ndarray) -> Alignment:
        """Decode the student ids, re-encode the text with the teacher tokenizer, and align the two sequences.

        Text runs between special tokens are encoded separately; each student special token becomes its
        role-matched teacher token, or nothing; a teacher BOS is prepended if the teacher has one (unless
        add_teacher_bos=False). Bytes that are not valid UTF-8, or text the teacher would normalise (NFC) or parse as a
        special token, are spelled with the teacher's single-byte tokens, so the teacher's tokens always spell exactly
        the student's bytes.
        """
        s_ids = np.asarray(student_ids, np.int32)
        if s_ids.ndim != 1:
            raise ValueError(f"student_ids must be 1-D, got shape {s_ids.shape}")
        if self.identity:
            return Alignment(s_ids, s_ids, None, None, None, None)
        spans_s = token_byte_spans(s_ids, self._tb_s)
        t_ids, t_len = ([self._bos], [0]) if self._bos is not None else ([], [])
        parts: list[bytes] = []
        run: list[bytes] = []
        for i in s_ids.tolist() + [None]:
            piece = None if i is None else self._tb_s[i]
            if piece is not None:
                run.append(piece)
                continue
            if run:
                data = b"".join(run)
                ids, lens = self._encode_bytes(data)
                t_ids += ids
                t_len += lens
                parts.append(data)
                run = []
            if i is not None and i in self._special_s2t:
                t_ids.append(self._special_s2t[i])
                t_len.append(0)
        t_arr = np.asarray(t_ids, np.int32)
        spans_t, text, vm = _spans(t_len), b"".join(parts), self.vocab_map.ids
        groups = align_groups(spans_s, spans_t, text=text, pair=lambda i, j: vm[t_arr[j]] == s_ids[i])
        full = np.fromiter((len(self._tb_t[i] or b"") for i in t_ids), np.int64, len(t_ids))
        space_prefix_rows = np.append(full[1:] > np.asarray(t_len[1:]), False)  # row j predicts token j+1
        return Alignment(s_ids, t_arr, groups, spans_s, spans_t, text, space_prefix_rows)

    def project(self, alignment: Alignment, t_ids: np.ndarray, t_logp: np.ndarray,
                t_sampled_logp: np.ndarray | None = None, *, kxm: str = "mask") -> dict[str, np.ndarray]:
        """`TeacherSparse` arrays for the student positions of `alignment` from the teacher's top-k on its ids.

        Without t_sampled_logp, the teacher's log-prob of its own next token is read from its top-k (or bounded by its
        remaining mass when the token is outside it).
        """
        if t_sampled_logp is None:
            t_sampled_logp = teacher_sampled_from_topk(alignment.teacher_ids, t_ids, t_logp)
        return project_teacher_topk(t_ids, t_logp, t_sampled_logp, self.vocab_map, alignment.groups,
                                    len(alignment.student_ids), kxm=kxm, student_ids=alignment.student_ids,
                                    space_prefix_rows=alignment.space_prefix_rows)

    def _encode_bytes(self, data: bytes) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        lens: list[int] = []
        for piece in _SURROGATES.split(data.decode("utf-8", "surrogateescape")):
            if piece and "\udc80" <= piece[0] <= "\udcff":
                got = self._as_bytes(bytes(ord(c) - 0xDC00 for c in piece))
            elif piece:
                got = self._try_encode(piece)
                if got is None:  # normalisation or a special-token string changed the bytes: word by word
                    got = ([], [])
                    for word in _WORDS.findall(piece):
                        w_ids, w_lens = self._try_encode(word) or self._as_bytes(word.encode())
                        got[0].extend(w_ids)
                        got[1].extend(w_lens)
            else:
                continue
            ids += got[0]
            lens += got[1]
        return ids, lens

    def _try_encode(self, text: str) -> tuple[list[int], list[int]] | None:
        ids = self.teacher.encode(text)
        pieces = [self._tb_t[i] for i in ids]
        if any(p is None for p in pieces):
            return None
        lens, spelled, want = [len(p) for p in pieces], b"".join(pieces), text.encode()
        if self._dummy_prefix and spelled == b" " + want and lens:
            lens[0] -= 1  # the dummy '▁' is the teacher's view of a text start, not a byte of the text
            return ids, lens
        return (ids, lens) if spelled == want else None

    def _as_bytes(self, data: bytes) -> tuple[list[int], list[int]]:
        missing = sorted({b for b in data if b not in self._byte_id})
        if missing:
            raise ValueError(f"teacher {self.teacher.name} has no single-byte tokens for bytes {missing}")
        return [self._byte_id[b] for b in data], [1] * len(data)


def teacher_sampled_from_topk(teacher_ids: np.ndarray, t_ids: np.ndarray, t_logp: np.ndarray) -> np.ndarray:
    """f32[N_t]: log-prob of teacher token j+1 in row j of the top-k; where it is outside the top-k (and at the last
    position, which has no next token), the log of the mass outside the top-k, an upper bound."""
    t_ids, t_logp = np.asarray(t_ids), np.asarray(t_logp, np.float64)
    nxt = np.append(np.asarray(teacher_ids)[1:], -2)[:, None]
    rest = _log1mexp(_logsumexp(np.where(t_ids >= 0, t_logp, -np.inf)))
    hit = t_ids == nxt
    return np.where(hit.any(-1), np.max(np.where(hit, t_logp, -np.inf), axis=-1), rest).astype(np.float32)
