"""Batched generation on the model's KV / DeltaNet cache, with per-row prefix extension across turns.

The model's cache shares one write index across the batch, and a segment-id change resets a row's DeltaNet state, so
a row cannot hold pad tokens in the middle of its history (tests/test_model.py pins both). The engine therefore
never pads inside a row: every call advances all rows by the same number of slots, and a row with nothing to add in
that call is *frozen*. It is fed pad tokens with segment id 0 (attention masks those slots forever), and afterwards
its DeltaNet conv history, recurrent state and last segment id are restored from before the call. RoPE positions
are per row (each row's own length), so the holes cost cache slots but never change a logit. Appended chunks of
different lengths are fed in fixed bucket sizes (e.g. 256, 32, 4, 1 tokens), so nothing recompiles per turn.

A row that starts a new task takes a fresh segment id: attention never sees its old slots and its DeltaNet state
resets at the new segment, so rows are refilled without touching the others. Slots are reclaimed only by
`reset()` (the whole cache); the rollout loop does that, re-prefilling live rows from their token ids, when full.

The cache starts at `min_slots` slots and doubles (up to `max_len`) just before a call would need more, so a call
costs what the slots in use cost, not `max_len`: every call reads and rewrites the whole K/V buffer, and on a 2-core
CPU (the tiny recipe's model, 24 rows) a decode step took 8.2 ms at 512 slots against 48 ms at 4,096. Masked slots
add exact zeros, and a row still stops for context only at `max_len`, so growing changes no token.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model import forward, init_cache, logits_from_hidden, unbox
from a1jax.model.config import ModelConfig
from a1jax.rollout.sampling import SamplingParams, sample

STOP, LENGTH, CONTEXT = 0, 1, 2  # per-row finish reasons of one `generate` call
FINISH_REASONS = ("stop", "length", "context")
_FROZEN_KEYS = ("conv_q", "conv_k", "conv_v", "conv_segment_ids", "state")  # DeltaNet leaves, row axis 1


def _freeze(new: dict, old: dict, active):
    """`new` cache with inactive rows' DeltaNet state and last segment id taken from `old` (K/V holes stay masked)."""
    def pick(n, o):
        a = active.reshape((1, -1) + (1,) * (n.ndim - 2))
        return jnp.where(a, n, o)
    blocks = [{k: (pick(v, ob[k]) if k in _FROZEN_KEYS else v) for k, v in nb.items()}
              for nb, ob in zip(new["blocks"], old["blocks"])]
    return {**new, "last_segment_ids": jnp.where(active, new["last_segment_ids"], old["last_segment_ids"]),
            "blocks": blocks}


def _step(params, cfg, cache, tokens, positions, row_seg, active):
    """Appends tokens [B,T] for active rows; returns (cache, last logits [B,V] fp32)."""
    seg = jnp.where(active[:, None], row_seg[:, None], 0) * jnp.ones_like(tokens)
    out = forward(params, tokens, cfg, positions=positions, segment_ids=seg, cache=cache, return_logits=False)
    logits = logits_from_hidden(unbox(params), out.hidden[:, -1:], cfg)[:, 0].astype(jnp.float32)
    return _freeze(out.cache, cache, active), logits


@functools.partial(jax.jit, static_argnums=(1,), donate_argnums=(2,))
def _extend(params, cfg, cache, tokens, positions, row_seg, active, last_logits):
    cache, logits = _step(params, cfg, cache, tokens, positions, row_seg, active)
    return cache, jnp.where(active[:, None], logits, last_logits)


def _ends_with(tokens, col, n, seq):
    """[B] bool: the row's tokens (columns 0..n-1, last at `col`) end with the token sequence `seq`."""
    L = len(seq)
    tail = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(col - L + 1, 0), L, axis=1)
    return (n >= L) & jnp.all(tail == jnp.asarray(seq, jnp.int32)[None], axis=1)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4), donate_argnums=(5,))
def _generate(params, cfg, sp: SamplingParams, max_new: int, stop_sequences: tuple, cache, last_logits, pos,
              row_seg, active, budget, context, stop_ids, key):
    """lax.while_loop decode: sample from the current logits, feed the token, repeat until every row stopped.

    budget [B]: new tokens allowed per row (<= max_new). The stop token (or the last token of a stop sequence) is
    kept and fed to the cache, since the next turn's prompt continues after it."""
    B, V = last_logits.shape
    S = cache["segment_ids"].shape[1]
    zeros = jnp.zeros((B, max_new), jnp.float32)
    init = dict(i=jnp.int32(0), cache=cache, logits=last_logits, pos=pos, live=active & (cache["index"] < S),
                reason=jnp.full((B,), LENGTH, jnp.int32), n=jnp.zeros((B,), jnp.int32),
                tokens=jnp.zeros((B, max_new), jnp.int32), logp=zeros, logp_t1=zeros,
                generated=jnp.zeros((B, V), bool), context=context, key=key)

    def cond(c):
        return jnp.any(c["live"]) & (c["i"] < max_new)

    def body(c):
        key, sub = jax.random.split(c["key"])
        tok, lp, lp1 = sample(sub, c["logits"], c["generated"], c["context"], sp)
        live = c["live"]
        col = c["i"]
        tokens = c["tokens"].at[:, col].set(jnp.where(live, tok, 0))
        logp = c["logp"].at[:, col].set(jnp.where(live, lp, 0.0))
        logp_t1 = c["logp_t1"].at[:, col].set(jnp.where(live, lp1, 0.0))
        onehot = jax.nn.one_hot(tok, V, dtype=bool) & live[:, None]
        cache, logits = _step(params, cfg, c["cache"], tok[:, None], c["pos"][:, None], row_seg, live)
        n = c["n"] + live
        stopped = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        for seq in stop_sequences:
            stopped |= _ends_with(tokens, col, n, seq)
        full = cache["index"] >= S
        reason = jnp.where(live & stopped, STOP, jnp.where(live & full, CONTEXT, c["reason"]))
        new_live = live & ~stopped & (n < budget) & ~full
        return dict(i=col + 1, cache=cache, logits=jnp.where(live[:, None], logits, c["logits"]),
                    pos=c["pos"] + live, live=new_live, reason=reason, n=n, tokens=tokens, logp=logp,
                    logp_t1=logp_t1, generated=c["generated"] | onehot, context=c["context"] | onehot, key=key)

    c = jax.lax.while_loop(cond, body, init)
    return c["cache"], c["logits"], c["pos"], c["tokens"], c["logp"], c["logp_t1"], c["n"], c["reason"]


def _grow(cache: dict, slots: int) -> dict:
    """`cache` with its slot axis (attention K/V and segment ids) padded with empty slots (segment 0) to `slots`."""
    def pad(x, axis):
        width = [(0, 0)] * x.ndim
        width[axis] = (0, slots - x.shape[axis])
        return jnp.pad(x, width)
    blocks = [{k: (pad(v, 2) if k in ("k", "v") else v) for k, v in b.items()} for b in cache["blocks"]]
    return {**cache, "segment_ids": pad(cache["segment_ids"], 1), "blocks": blocks}


def _snapshot(host):
    """A device copy of a host array the engine keeps mutating: on CPU, jax may alias numpy memory and read it only
    when the (asynchronous) computation runs, after a later `start_row` or `extend` has written to it."""
    return jnp.asarray(np.array(host, copy=True))


class Engine:
    """A fixed batch of rows, each one conversation, on one shared cache of at most `max_len` slots.

    Row lifecycle: `start_row(r)` (new conversation) -> `extend({r: ids})` -> `generate(...)` -> `extend` ...
    Compiled shapes: one `_extend` per chunk bucket and one `_generate` per cache size (`min_slots` doubled up to
    `max_len`: log2(max_len / min_slots) + 1 sizes), for the whole life of the engine.
    """

    def __init__(self, params, cfg: ModelConfig, *, batch_size: int, max_len: int, stop_ids, pad_id: int = 0,
                 sampling: SamplingParams = SamplingParams(), max_new_tokens: int = 1024,
                 chunk_sizes=(256, 32, 4, 1), stop_sequences=(), seed: int = 0, min_slots: int = 512):
        if sorted(chunk_sizes, reverse=True) != list(chunk_sizes) or chunk_sizes[-1] != 1:
            raise ValueError(f"chunk_sizes={chunk_sizes} must be descending and end with 1")
        if min_slots < 1:
            raise ValueError(f"min_slots={min_slots}: expected a positive number of cache slots")
        self.params, self.cfg, self.B, self.max_len = params, cfg, batch_size, max_len
        self.min_slots = min_slots
        self.sampling, self.max_new_tokens, self.chunk_sizes = sampling, max_new_tokens, tuple(chunk_sizes)
        self.stop_ids = jnp.asarray(list(stop_ids), jnp.int32)
        # Stop strings, as token-id sequences (the caller tokenizes them): a row stops once its output ends with one.
        self.stop_sequences = tuple(tuple(int(t) for t in seq) for seq in stop_sequences if len(seq))
        if any(len(seq) > max_new_tokens for seq in self.stop_sequences):
            raise ValueError(f"a stop sequence is longer than max_new_tokens={max_new_tokens}")
        self.pad_id = pad_id
        self.key = jax.random.PRNGKey(seed)
        self._next_segment = 1
        self.reset()

    def reset(self):
        """Empties the cache (back to `min_slots` slots): every row must `start_row` again."""
        self.cache = init_cache(self.cfg, self.B, min(self.max_len, self.min_slots))
        self.index = 0
        self.pos = np.zeros(self.B, np.int32)
        self.row_seg = np.zeros(self.B, np.int32)
        self.context = np.zeros((self.B, self.cfg.vocab_size), bool)
        self.last_logits = jnp.zeros((self.B, self.cfg.vocab_size), jnp.float32)

    def start_row(self, r: int):
        """Row r begins a new conversation: a fresh segment id isolates it from its previous slots."""
        self.row_seg[r] = self._next_segment
        self._next_segment += 1
        self.pos[r] = 0
        self.context[r] = False

    def plan(self, lengths: dict[int, int]) -> list[tuple[int, np.ndarray]]:
        """The chunk calls that append `lengths[r]` tokens to each row: [(chunk size, active rows [B] bool)]."""
        remaining = np.zeros(self.B, np.int64)
        for r, n in lengths.items():
            remaining[r] = n
        steps = []
        for c in self.chunk_sizes:
            while remaining.max() >= c:
                active = remaining >= c
                steps.append((c, active))
                remaining -= c * active
        return steps

    def slots_needed(self, lengths: dict[int, int]) -> int:
        return sum(c for c, _ in self.plan(lengths))

    @property
    def slots(self) -> int:
        """The cache's current size (it grows up to `max_len`)."""
        return int(self.cache["segment_ids"].shape[1])

    def _reserve(self, n: int):
        """Grows the cache by doublings so that it holds `n` more slots (or up to `max_len`)."""
        need, slots = min(self.max_len, self.index + n), self.slots
        if need <= slots:
            return
        while slots < need:
            slots *= 2
        self.cache = _grow(self.cache, min(slots, self.max_len))

    def extend(self, chunks: dict[int, list[int]]):
        """Appends each row's token ids to its cache (multi-turn prefix reuse: nothing is recomputed)."""
        need = self.slots_needed({r: len(ids) for r, ids in chunks.items()})
        if self.index + need > self.max_len:
            raise ValueError(f"cache full: {self.index} + {need} slots > max_len={self.max_len}")
        self._reserve(need)
        offset = np.zeros(self.B, np.int64)
        for c, active in self.plan({r: len(ids) for r, ids in chunks.items()}):
            tokens = np.full((self.B, c), self.pad_id, np.int32)
            for r in np.nonzero(active)[0]:
                tokens[r] = chunks[r][offset[r]:offset[r] + c]
                self.context[r, tokens[r]] = True
            positions = self.pos[:, None] + np.arange(c, dtype=np.int32)[None]
            self.cache, self.last_logits = _extend(self.params, self.cfg, self.cache, jnp.asarray(tokens),
                                                   jnp.asarray(positions), _snapshot(self.row_seg),
                                                   jnp.asarray(active), self.last_logits)
            self.pos = self.pos + c * active.astype(np.int32)
            offset += c * active
            self.index += c

    def generate(self, rows, budget=None) -> dict[int, dict]:
        """Decodes `rows` (a list of row ids) until each stops; budget: {row: max new tokens} (default
        max_new_tokens). Returns {row: {tokens, logprobs, logprobs_t1, finish_reason}} as Python lists."""
        active = np.zeros(self.B, bool)
        active[list(rows)] = True
        limit = np.full(self.B, self.max_new_tokens, np.int32)
        for r, b in (budget or {}).items():
            limit[r] = min(b, self.max_new_tokens)
        active &= limit > 0
        if active.any():  # the rows decode in lockstep: the longest budget bounds the slots used
            self._reserve(int(limit[active].max()))
        self.key, key = jax.random.split(self.key)
        (self.cache, self.last_logits, pos, tokens, logp, logp_t1, n, reason) = _generate(
            self.params, self.cfg, self.sampling, self.max_new_tokens, self.stop_sequences, self.cache,
            self.last_logits,
            _snapshot(self.pos), _snapshot(self.row_seg), jnp.asarray(active), jnp.asarray(limit),
            _snapshot(self.context), self.stop_ids, key)
        self.index = int(self.cache["index"])
        self.pos = np.array(pos)
        tokens, logp, logp_t1, n, reason = (np.asarray(x) for x in (tokens, logp, logp_t1, n, reason))
        out = {}
        for r in rows:
            k = int(n[r])
            self.context[r, tokens[r, :k]] = True
            out[r] = {"tokens": tokens[r, :k].tolist(), "logprobs": logp[r, :k].tolist(),
                      "logprobs_t1": logp_t1[r, :k].tolist(),
                      "finish_reason": FINISH_REASONS[int(reason[r])] if k else "length"}
        return out


def make_engine(cfg, params, tok, *, sampling: SamplingParams, batch_size: int, max_len: int, max_new_tokens: int,
                stop=(), seed: int = 0):
    """The engine; `stop` strings become token sequences (as the tokenizer writes them on their own)."""
    if max_len > cfg.max_position_embeddings:
        raise ValueError(f"--max-len={max_len} exceeds the model's max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    return Engine(params, cfg, batch_size=batch_size, max_len=max_len, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                  sampling=sampling, max_new_tokens=max_new_tokens, seed=seed,
                  stop_sequences=[tok.encode(s) for s in stop or ()])
