"""a1jax against HF transformers (torch eager) on the same weights: one side-by-side table of tokens/s.

    .venv/bin/python -m benchmarks.peers [--quick] [--sides a1jax,hf] [--json OUT] [--xla-single-thread]
                                         [--steps 3] [--repeats 3] [--workdir DIR] [--seed 0] [--interleave]

The script initialises one Qwen3.5-MoE model with a1jax (`model.init`), writes it as a HF checkpoint directory with
`a1jax.convert.write_hf_dir`, draws the token batches, then runs each side in its own process, one after the other
(or, with --interleave, both processes at once, taking turns call by call: each starts and makes its first train step
alone, then every further call of one side runs while the other waits; a slow spell of the host then falls on both
sides alike):
  a1jax  this venv's Python, `benchmarks.peers --run a1jax`: reads the directory with `a1jax.convert.read_hf_dir`;
         the kernels are the platform defaults (`*_impl="auto"`, kernels/backend.py), JAX on CPU;
  hf     the HF oracle venv's Python (.venv-oracle, made by `bash tests/oracle/setup_oracle.sh`; torch CPU,
         transformers): benchmarks/peers_hf.py loads the directory with `AutoModelForCausalLM.from_pretrained`
         (attn_implementation and experts_implementation "eager", float32).
Default model (--quick shrinks every size): hidden 256, 4 layers (3 Gated DeltaNet : 1 gated attention), 16 experts
top-4 of width 128 plus a gated shared expert of width 128, 4 attention heads / 2 KV heads of dim 64, linear
attention 4 key / 8 value heads of dim 64, vocabulary 32,000, untied embeddings, float32 weights and activations,
router aux loss coefficient 0 (HF adds no aux loss either: output_router_logits stays off).

Rows (tokens/s = tokens processed / median wall time; each row runs once untimed first, which also compiles):
  train step 1 x 2048   forward + backward + AdamW update (global-norm clipping 1.0, weight decay 0.01 on the same
                        tensors both sides, constant learning rate), median over --steps steps on one batch;
                        a1jax: the trainer's `sft_step` jitted with donated state; HF: zero_grad, loss.backward,
                        clip_grad_norm_, AdamW.step (torch.optim.AdamW with its default implementation)
  train step 4 x 512    the same, continuing from the state the previous row left
  forward 1 x 8192      one forward without cache, logits of the last position only (HF: logits_to_keep=1)
  prefill 8 x 512       fills a fresh KV / DeltaNet cache of the prompt length, last-position logits
  greedy decode         8 rows, 128 new tokens after a 512-token prompt; new tokens / time of the whole call, prompt
                        included. a1jax: `rollout.engine.Engine` (reset, start_row, extend, generate); HF:
                        generate(do_sample=False, max_new_tokens=128, min_new_tokens=128, use_cache=True). The eos ids
                        lie outside the vocabulary, so no row stops early on either side
  start-up              seconds from the side's process launch (interpreter, imports, reading the checkpoint,
                        compiling) until its first train step 1 x 2048 returns; for a1jax a cold compile unless
                        JAX_COMPILATION_CACHE_DIR is set (the JSON records it)
The timed rows other than training run on the initial weights (both sides keep a copy), as does the sanity block:
first-step losses and gradient global norms of both sides (fp32: they agree to ~1e-5 relative), the loss of the
second step (after one AdamW update) and whether row 0's first 16 greedy tokens are identical. The load average
(os.getloadavg) is read before and after each side, since another job on the machine changes every number.

Threads: by default XLA uses every core the process may run on, and torch's intra-op and inter-op thread counts are
set to the same number (what torch.get_num_threads reports is in the table and the JSON);
--xla-single-thread makes both single-threaded (XLA_FLAGS --xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1; torch 1 intra-op and 1 inter-op thread). The a1jax side always runs with
JAX_PLATFORMS=cpu (the HF side is torch CPU); XLA_FLAGS other than the host device count pass through. --json writes
every figure, the config, the load averages, the versions and thread counts.

Allocator: both sides run in the same environment. By default (--hugepages on) that is the one the `a1jax` command
and the launch scripts give every a1jax process: tcmalloc preloaded where installed, and glibc's malloc.hugetlb=1
tunable, large buffers on transparent huge pages (a1jax/hugepages.py); --hugepages off runs both sides on glibc's
defaults. The table prints GLIBC_TUNABLES and LD_PRELOAD.

Adding MaxText: a third side is one more subprocess, run by a venv holding MaxText and its own JAX, that reads the
workdir (hf/, inputs.npz, spec.json) and writes WORKDIR/maxtext.json with the other sides' keys (startup_s, rows,
first_loss, second_loss, grad_norm, greedy_tokens); it joins SIDES and `_side_command`. MaxText's nearest model is
decoder_block "qwen3_next" (its configs/models/qwen3-next-*.yml: the same 3:1 Gated DeltaNet / gated attention
pattern, MoE with a gated shared expert). It needs (1) the weights: a parameter map from this HF directory (Qwen3.5
names, e.g. separate in_proj_qkv / in_proj_z / in_proj_b / in_proj_a) to MaxText's Qwen3-Next tree, through its
checkpoint conversion utilities; (2) a config matching spec.json: base_emb_dim 256, base_num_decoder_layers 4,
base_num_query_heads 4, base_num_kv_heads 2, head_dim 64, the linear_* heads and dims, num_experts 16,
num_experts_per_tok 4, base_moe_mlp_dim 128, vocab_size 32000, dtype and weight_dtype float32, enable_dropout False,
no load-balance loss, AdamW with spec.json's settings (adam_b1, adam_b2, adam_eps, adam_weight_decay,
gradient_clipping_threshold); (3) MaxText's jitted train step driven on these batches (not its data pipeline) for
the train rows, and its MaxEngine prefill / generate for the inference rows. Where Qwen3-Next and Qwen3.5 differ,
the sanity block's first-step loss shows it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from a1jax import hugepages, model
from a1jax.convert import layout, read_hf_dir, write_hf_dir
from a1jax.model.config import ModelConfig
from a1jax.rollout.engine import Engine
from a1jax.rollout.sampling import SamplingParams
from a1jax.train import optim, steps
from a1jax.train.state import TrainState
from benchmarks.peers_timing import GATE_ENV, GATE_LINE, gate as _gate, row as _row, timed as _timed
from tests.oracle import OracleUnavailable, oracle_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_SCRIPT = os.path.join(ROOT, "benchmarks", "peers_hf.py")
SIDES = ("a1jax", "hf")
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
OPTIMIZER = dict(learning_rate=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip_norm=1.0)
GREEDY_CHECK = 16  # row 0's first greedy tokens must be identical on both sides
LOSS_RTOL = 1e-5  # fp32: the two frameworks' losses and gradient norms agree this closely

# (row key, what it measures, unit, the issue's minimum a1jax/HF ratio or None)
ROWS = (("train_long", "train step {0} x {1}", "tokens/s", 1.0),
        ("train_batch", "train step {0} x {1}", "tokens/s", 1.0),
        ("forward", "forward {0} x {1}", "tokens/s", 1.0),
        ("prefill", "prefill {0} x {1}", "tokens/s", 1.0),
        ("decode", "greedy decode {0} x {2} after {1}", "new tokens/s", 2.0),
        ("startup", "start-up to first train step", "s (lower wins)", None))


def model_config(quick: bool) -> ModelConfig:
    """The issue's model, or (quick) the same structure at smoke-test sizes."""
    sizes = dict(vocab_size=32000, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64, linear_value_head_dim=64,
                 moe_intermediate_size=128, shared_expert_intermediate_size=128)
    if quick:
        sizes = dict(vocab_size=512, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                     linear_value_head_dim=16, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    return ModelConfig(**sizes, num_hidden_layers=4, full_attention_interval=4, num_experts=16, num_experts_per_tok=4,
                       router_aux_loss_coef=0.0, tie_word_embeddings=False, max_position_embeddings=8192,
                       mtp_num_hidden_layers=0, dtype="float32", param_dtype="float32", attention_impl="auto",
                       deltanet_impl="auto", moe_impl="auto")


def shapes(quick: bool) -> dict[str, list[int]]:
    """[batch, length] per row; decode is [rows, prompt length, new tokens]."""
    if quick:
        return dict(train_long=[1, 128], train_batch=[4, 32], forward=[1, 256], prefill=[8, 32], decode=[8, 32, 16])
    return dict(train_long=[1, 2048], train_batch=[4, 512], forward=[1, 8192], prefill=[8, 512], decode=[8, 512, 128])


def _leaf(tree, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def no_decay_names(cfg: ModelConfig, params) -> list[str]:
    """The HF tensor names a1jax's optimizer does not decay (optim.decay_mask: norms, A_log, dt_bias, router, shared
    expert gate), so that the HF side's AdamW decays exactly the same weights."""
    mask = optim.decay_mask(model.unbox(params))
    return [t.name for t in layout.hf_layout(cfg) if not _leaf(mask, t.pieces[0].path)]


def prepare(workdir: str, cfg: ModelConfig, sizes: dict, seed: int, threads: int, n_steps: int,
            repeats: int) -> dict:
    """Writes the shared inputs of both sides: the HF checkpoint (workdir/hf), the token batches (inputs.npz) and
    spec.json (sizes, optimizer, thread count, the tensors without weight decay). Returns the spec."""
    params = model.init(cfg, jax.random.key(seed), include_mtp=False)  # eager: faster than compiling it whole
    hf_dir = os.path.join(workdir, "hf")
    write_hf_dir(hf_dir, cfg, params)
    rng = np.random.default_rng(seed)
    batches = {k: rng.integers(0, cfg.vocab_size, tuple(v[:2])).astype(np.int64) for k, v in sizes.items()}
    np.savez(os.path.join(workdir, "inputs.npz"), **batches)
    spec = dict(model=cfg.to_dict(), hf_dir=hf_dir, shapes=sizes, optimizer=OPTIMIZER, steps=n_steps,
                repeats=repeats, threads=threads, no_decay=no_decay_names(cfg, params))
    with open(os.path.join(workdir, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return spec


# ---- the a1jax side (runs in its own process: `--run a1jax`) -----------------------------------------------------

def _train_batch(ids: np.ndarray) -> dict:
    """The trainer's batch for plain next-token prediction over whole rows (HF's labels=input_ids)."""
    ids = ids.astype(np.int32)
    mask = np.ones(ids.shape, np.float32)
    mask[:, -1] = 0.0  # the last token has no target
    b = dict(tokens=ids, targets=np.roll(ids, -1, axis=1), loss_mask=mask, segment_ids=np.ones_like(ids),
             positions=np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy(),
             domain_ids=np.zeros_like(ids))
    return jax.device_put(b)


def read_spec(workdir: str) -> tuple[dict, dict]:
    """spec.json and the token batches (inputs.npz) that `prepare` wrote."""
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)
    return spec, dict(np.load(os.path.join(workdir, "inputs.npz")))


def a1jax_trainer(spec: dict):
    """(model config, boxed host weights, the trainer's `sft_step` jitted with its state donated, the initial
    TrainState) from the workdir's HF checkpoint and spec.json's optimizer."""
    cfg = ModelConfig.from_dict(spec["model"])
    _, host_params = read_hf_dir(spec["hf_dir"])  # boxed numpy arrays: the initial weights, kept for inference
    o = spec["optimizer"]
    tx, schedule = optim.make_optimizer(argparse.Namespace(
        **o, warmup_steps=0, total_steps=1, schedule="constant", min_lr_ratio=1.0))
    params = jax.tree.map(jnp.array, host_params)  # own buffers: the step donates them
    zero = lambda: jnp.zeros((), jnp.int32)  # one buffer each: the step donates them all
    state = TrainState(step=zero(), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)), skipped_total=zero(), skipped_consecutive=zero())
    step = jax.jit(functools.partial(steps.sft_step, steps.StepContext(model=cfg, tx=tx, schedule=schedule)),
                   donate_argnums=0)
    return cfg, host_params, step, state


def run_a1jax(workdir: str, t0: float) -> dict:
    spec, inputs = read_spec(workdir)
    cfg, host_params, step, state = a1jax_trainer(spec)
    n_steps, repeats = spec["steps"], spec["repeats"]
    out: dict = {"rows": {}}

    def train(batch):
        nonlocal state
        state, metrics = jax.block_until_ready(step(state, batch))
        return metrics

    batch = _train_batch(inputs["train_long"])
    first = train(batch)
    out["startup_s"] = time.time() - t0
    out["first_loss"], out["grad_norm"] = float(first["loss"]), float(first["grad_norm"])
    losses, times = [], []
    for _ in range(n_steps):
        _gate()
        t = time.perf_counter()
        losses.append(float(train(batch)["loss"]))
        times.append(time.perf_counter() - t)
    out["second_loss"] = losses[0]
    out["rows"]["train_long"] = _row(times, inputs["train_long"].size)
    batch = _train_batch(inputs["train_batch"])
    times, _ = _timed(lambda: train(batch), n_steps)
    out["rows"]["train_batch"] = _row(times, inputs["train_batch"].size)
    if int(state.skipped_total):
        raise RuntimeError(f"a1jax skipped {int(state.skipped_total)} update(s): non-finite loss or gradient")

    p = jax.device_put(model.unbox(host_params))

    @jax.jit
    def forward(params, tokens):
        hidden = model.forward(params, tokens, cfg, return_logits=False).hidden
        return model.logits_from_hidden(params, hidden[:, -1], cfg)

    @jax.jit
    def prefill(params, tokens):
        cache = model.init_cache(cfg, tokens.shape[0], tokens.shape[1])
        res, cache = model.prefill(params, tokens, cfg, cache, return_logits=False)
        return model.logits_from_hidden(params, res.hidden[:, -1], cfg), cache

    for key, fn in (("forward", forward), ("prefill", prefill)):
        tokens = jnp.asarray(inputs[key], jnp.int32)
        times, _ = _timed(lambda: jax.block_until_ready(fn(p, tokens)), repeats)
        out["rows"][key] = _row(times, inputs[key].size)

    rows, prompt_len, new = spec["shapes"]["decode"]
    prompts = inputs["decode"].tolist()
    engine = Engine(p, cfg, batch_size=rows, max_len=prompt_len + new, stop_ids=cfg.eos_token_ids,
                    sampling=SamplingParams.greedy(), max_new_tokens=new)

    def decode():
        engine.reset()
        for r in range(rows):
            engine.start_row(r)
        engine.extend(dict(enumerate(prompts)))
        res = engine.generate(list(range(rows)))
        return [res[r]["tokens"] for r in range(rows)]

    times, tokens = _timed(decode, repeats)
    short = [r for r in range(rows) if len(tokens[r]) != new]
    if short:
        raise RuntimeError(f"a1jax decode: rows {short} stopped before {new} new tokens")
    out["rows"]["decode"] = _row(times, rows * new)
    out["greedy_tokens"] = tokens
    out["versions"] = dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                           numpy=np.__version__)
    out["threads"] = dict(xla_flags=os.environ.get("XLA_FLAGS", ""), xla_threads=spec["threads"],
                          device=str(jax.devices()[0]), device_count=jax.device_count(),
                          compilation_cache=os.environ.get("JAX_COMPILATION_CACHE_DIR", ""))
    return out


# ---- the parent: prepare, run the sides one after the other, report ----------------------------------------------

def _side_command(side: str, workdir: str, t0: float) -> list[str]:
    if side == "a1jax":
        return [sys.executable, "-m", "benchmarks.peers", "--run", "a1jax", "--workdir", workdir, "--t0", repr(t0)]
    return [oracle_python(), HF_SCRIPT, "--workdir", workdir, "--t0", repr(t0)]


def _side_env(side: str, single_thread: bool, huge: bool = True) -> dict:
    env = hugepages.environ(on=huge)  # the same allocator environment for both sides
    if side == "a1jax":
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        if single_thread:
            flags += SINGLE_THREAD_XLA_FLAGS.split()
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def _side_result(side: str, workdir: str, returncode: int, output: str, t0: float) -> dict:
    path = os.path.join(workdir, f"{side}.json")
    if returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"the {side} side failed (exit {returncode}; command: "
                           f"{' '.join(_side_command(side, workdir, t0))}):\n{output[-4000:]}")
    with open(path) as f:
        return json.load(f)


def run_side(side: str, workdir: str, single_thread: bool, huge: bool = True) -> dict:
    """Runs one side in its own process; its result JSON plus the load averages around it and its wall time."""
    before = os.getloadavg()
    env = _side_env(side, single_thread, huge)
    t0 = time.time()
    proc = subprocess.run(_side_command(side, workdir, t0), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    after = os.getloadavg()
    res = _side_result(side, workdir, proc.returncode, proc.stdout, t0)
    return dict(res, loadavg_before=list(before), loadavg_after=list(after), wall_s=wall,
                glibc_tunables=env.get("GLIBC_TUNABLES", ""), ld_preload=env.get("LD_PRELOAD", ""))


class _GatedSide:
    """One side's process under --interleave: it stops at every `peers_timing.gate` until `go` lets it on."""

    def __init__(self, side: str, workdir: str, single_thread: bool, huge: bool):
        self.side, self.workdir, self.output = side, workdir, []
        self.env = dict(_side_env(side, single_thread, huge), **{GATE_ENV: "1"})
        self.loadavg_before = os.getloadavg()
        self.t0 = time.time()
        self.proc = subprocess.Popen(_side_command(side, workdir, self.t0), cwd=ROOT, env=self.env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.waiting = self._wait()  # its start-up and first train step run alone, as without --interleave

    def _wait(self) -> bool:
        """Reads the side's output until it stops at its gate (True) or exits (False)."""
        for line in self.proc.stdout:
            if line.rstrip("\n") == GATE_LINE:
                return True
            self.output.append(line)
        self.proc.wait()
        self.wall_s = time.time() - self.t0
        return False

    def go(self) -> None:
        """Lets the side make its next call and waits until it stops at the gate after it (or exits)."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.waiting = self._wait()

    def check(self) -> None:
        """Raises at once (naming the side, with its output) if the side's process failed: the other stops too."""
        if not self.waiting and self.proc.returncode != 0:
            self.result()

    def result(self) -> dict:
        res = _side_result(self.side, self.workdir, self.proc.returncode, "".join(self.output), self.t0)
        return dict(res, loadavg_before=list(self.loadavg_before), wall_s=self.wall_s,
                    glibc_tunables=self.env.get("GLIBC_TUNABLES", ""),
                    ld_preload=self.env.get("LD_PRELOAD", ""))


def run_interleaved(sides: list[str], workdir: str, single_thread: bool, huge: bool = True) -> dict:
    """Runs the sides in their own processes at once, but call by call in turn: side 1 starts and makes its first
    train step alone, then side 2 does, then every further call (timed or not) runs while the other side waits at
    its gate. A slow minute of the host then falls on both sides' calls alike, which sides run one after the other
    do not get (on this 2-core host HF's own 4 x 512 figure spread 784-1,018 tokens/s over six such runs). The
    waiting side must not pay for its pause: on a VM whose host takes freed memory back, only a1jax's default
    allocator (tcmalloc) keeps it from faulting its buffers in again after each turn (benchmarks/allocator.py)."""
    procs: list[_GatedSide] = []
    try:
        for side in sides:
            print(f"peers: starting the {side} side (interleaved) ...", file=sys.stderr, flush=True)
            procs.append(_GatedSide(side, workdir, single_thread, huge))
            procs[-1].check()
        while any(p.waiting for p in procs):
            for p in procs:
                if p.waiting:
                    p.go()
                    p.check()
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
    after = os.getloadavg()
    return {p.side: dict(p.result(), loadavg_after=list(after)) for p in procs}


def _compare(a: float, hf: float) -> dict:
    rel = abs(a - hf) / max(abs(hf), 1e-30)
    return dict(a1jax=a, hf=hf, rel_diff=rel, agree=rel <= LOSS_RTOL)


def cpu_model() -> str:
    """The host's CPU model name (/proc/cpuinfo), which decides absolute figures: hosts of one size differ."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(spec: dict, sides: dict, args: argparse.Namespace) -> dict:
    """Every figure of the run as one JSON-able dict: rows with ratios and targets, the sanity block, context."""
    rows = []
    for key, label, unit, target in ROWS:
        dims = spec["shapes"].get(key, [])
        row = dict(key=key, label=label.format(*dims), unit=unit, target=target)
        for side, res in sides.items():
            row[side] = res["startup_s"] if key == "startup" else res["rows"][key]["tokens_per_s"]
        if len(sides) == 2:
            row["ratio"] = row["a1jax"] / row["hf"]
            row["met"] = None if target is None else row["ratio"] >= target
        rows.append(row)
    out = dict(command=["benchmarks.peers"] + list(args.argv), quick=args.quick, model=spec["model"],
               shapes=spec["shapes"], optimizer=spec["optimizer"], steps=spec["steps"], repeats=spec["repeats"],
               machine=dict(platform=platform.platform(), cpus=len(os.sched_getaffinity(0)), cpu=cpu_model()),
               threads=dict(xla_single_thread=args.xla_single_thread, per_side=spec["threads"]),
               hugepages=args.hugepages == "on", interleave=args.interleave, rows=rows, sides=sides)
    if len(sides) == 2:
        a, h = sides["a1jax"], sides["hf"]
        n = min(GREEDY_CHECK, len(a["greedy_tokens"][0]))
        same = [x == y for ra, rh in zip(a["greedy_tokens"], h["greedy_tokens"]) for x, y in zip(ra, rh)]
        out["sanity"] = dict(
            first_loss=_compare(a["first_loss"], h["first_loss"]),
            second_loss=_compare(a["second_loss"], h["second_loss"]),
            grad_norm=_compare(a["grad_norm"], h["grad_norm"]), rtol=LOSS_RTOL, greedy_checked=n,
            greedy_identical=a["greedy_tokens"][0][:n] == h["greedy_tokens"][0][:n],
            greedy_agreement=sum(same) / len(same))
    return out


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def format_table(rep: dict) -> str:
    """The side-by-side table, the load averages and thread counts, and the sanity block, as aligned text."""
    sides = list(rep["sides"])
    m = rep["model"]
    head = (f"a1jax vs HF transformers (torch eager) on the same weights: Qwen3.5-MoE hidden {m['hidden_size']}, "
            f"{m['num_hidden_layers']} layers, {m['num_experts']} experts top-{m['num_experts_per_tok']}, "
            f"vocab {m['vocab_size']:,}, {m['param_dtype']}, CPU {rep['machine'].get('cpu', '')} "
            f"({rep['machine']['cpus']} cores)")
    cols = ["", "unit"] + sides + (["a1jax/HF", "target", "met"] if len(sides) == 2 else [])
    body = []
    for r in rep["rows"]:
        cells = [r["label"], r["unit"]] + [_num(r[s]) for s in sides]
        if len(sides) == 2:
            cells += [f"{r['ratio']:.2f}x", "-" if r["target"] is None else f">= {r['target']:.1f}x",
                      "-" if r["met"] is None else ("yes" if r["met"] else "no")]
        body.append(cells)
    widths = [max(len(c[i]) for c in [cols] + body) for i in range(len(cols))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [head, fmt(cols)] + [fmt(c) for c in body]
    la = lambda v: " ".join(f"{x:.2f}" for x in v)
    lines.append("load average (1/5/15 min): " + "; ".join(
        f"{s} before {la(res['loadavg_before'])}, after {la(res['loadavg_after'])}"
        for s, res in rep["sides"].items()))
    lines.append("order: " + ("interleaved, the sides take turns call by call (--interleave)" if rep.get("interleave")
                              else "one side after the other"))
    threads = []
    if "a1jax" in rep["sides"]:
        t = rep["sides"]["a1jax"]["threads"]
        threads.append(f"XLA {t['xla_threads']} (XLA_FLAGS={t['xla_flags']!r})")
    if "hf" in rep["sides"]:
        t = rep["sides"]["hf"]["threads"]
        threads.append(f"torch {t['intra_op']} intra-op / {t['inter_op']} inter-op")
    lines.append("threads: " + ", ".join(threads))
    first = next(iter(rep["sides"].values()))
    lines.append(f"allocator (both sides): GLIBC_TUNABLES={first.get('glibc_tunables', '')!r} "
                 f"LD_PRELOAD={first.get('ld_preload', '')!r}")
    lines.append("versions: " + "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v)
                                         for s, res in rep["sides"].items()))
    if "sanity" in rep:
        s = rep["sanity"]
        for key, name in (("first_loss", "first-step loss"), ("second_loss", "loss after one update"),
                          ("grad_norm", "gradient global norm")):
            v = s[key]
            lines.append(f"{name + ':':24s}a1jax {v['a1jax']:.7g}  HF {v['hf']:.7g}  relative difference "
                         f"{v['rel_diff']:.1e} ({'agree' if v['agree'] else 'DIFFER'}, rtol {s['rtol']:.0e})")
        lines.append(f"{'greedy tokens:':24s}row 0's first {s['greedy_checked']} "
                     f"{'identical' if s['greedy_identical'] else 'DIFFER'}; "
                     f"{100 * s['greedy_agreement']:.1f}% of all rows' positions agree")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (hidden 64, vocabulary 512, rows of 32-256 tokens): a smoke test")
    p.add_argument("--sides", default="a1jax,hf", help=f"comma-separated, of {SIDES}, run in this order")
    p.add_argument("--json", default="", help="write every figure to this file")
    p.add_argument("--xla-single-thread", action="store_true",
                   help="one XLA thread for a1jax and one torch thread for HF (default: all cores for both)")
    p.add_argument("--steps", type=int, default=3, help="timed train steps per train row (after one untimed)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per inference row (after one untimed)")
    p.add_argument("--workdir", default="", help="keep the checkpoint, batches and side results here "
                                                 "(default: a temporary directory, removed at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hugepages", choices=("on", "off"), default="on",
                   help="both sides with a1jax's allocator (tcmalloc where installed, glibc's huge-page tunable), as "
                        "a1jax runs (on), or with glibc's defaults (off)")
    p.add_argument("--interleave", action="store_true",
                   help="start both sides at once and let them take turns call by call (one computes while the "
                        "other waits), instead of one whole side after the other")
    p.add_argument("--run", choices=SIDES[:1], help=argparse.SUPPRESS)  # internal: the a1jax side's process
    p.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    from a1jax import distributed
    distributed.pin_host_platforms()  # a CPU host with libtpu installed stays on CPU, as the a1jax CLI does
    if args.run:
        res = run_a1jax(args.workdir, args.t0)
        with open(os.path.join(args.workdir, "a1jax.json"), "w") as f:
            json.dump(res, f)
        return None
    sides = [s for s in args.sides.split(",") if s]
    if not sides or any(s not in SIDES for s in sides) or len(set(sides)) != len(sides):
        p.error(f"--sides={args.sides!r}: expected a comma-separated subset of {SIDES}")
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    if "hf" in sides and not os.path.exists(oracle_python()):
        raise OracleUnavailable(f"the HF side needs the oracle interpreter {oracle_python()}, which does not exist; "
                                "create it with `bash tests/oracle/setup_oracle.sh` (or run --sides a1jax)")
    threads = 1 if args.xla_single_thread else len(os.sched_getaffinity(0))
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    keep = contextlib.nullcontext(os.path.abspath(args.workdir)) if args.workdir else None
    with keep or tempfile.TemporaryDirectory(prefix="peers-") as workdir:
        spec = prepare(workdir, model_config(args.quick), shapes(args.quick), args.seed, threads, args.steps,
                       args.repeats)
        if args.interleave:
            results = run_interleaved(sides, workdir, args.xla_single_thread, args.hugepages == "on")
        else:
            results = {}
            for side in sides:
                print(f"peers: running the {side} side ...", file=sys.stderr, flush=True)
                results[side] = run_side(side, workdir, args.xla_single_thread, args.hugepages == "on")
    rep = report(spec, results, args)
    print(format_table(rep), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
    return rep


if __name__ == "__main__":
    main()
