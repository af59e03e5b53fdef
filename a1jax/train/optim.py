"""optax: AdamW with linear warmup then cosine or constant, global-norm clipping, and a weight-decay mask."""
from __future__ import annotations

import jax
import optax

from a1jax.model.params import Param, is_param

SCHEDULES = ("cosine", "constant", "linear")
# Leaves that never decay: norms, biases, the DeltaNet decay parameters and the router.
NO_DECAY = ("norm", "bias", "A_log", "dt_bias", "router", "shared_expert_gate")


def learning_rate_schedule(opt) -> optax.Schedule:
    # starts at lr / warmup_steps, not 0: the first update is not wasted
    warmup_steps = max(int(opt.warmup_steps), 1)
    warmup = optax.linear_schedule(opt.learning_rate / warmup_steps, opt.learning_rate, warmup_steps)
    decay_steps = max(int(opt.total_steps) - int(opt.warmup_steps), 1)
    if opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(opt.learning_rate, decay_steps, alpha=opt.min_lr_ratio)
    elif opt.schedule == "linear":
        main = optax.linear_schedule(opt.learning_rate, opt.learning_rate * opt.min_lr_ratio, decay_steps)
    elif opt.schedule == "constant":
        main = optax.constant_schedule(opt.learning_rate)
    else:
        raise ValueError(f"config.optimizer.schedule must be one of {SCHEDULES}, got {opt.schedule!r}")
    return optax.join_schedules([warmup, main], [int(opt.warmup_steps)])


def decay_mask(params):
    """True where weight decay applies; same structure as `params` (boxed or not)."""
    def decide(path, leaf):
        name = jax.tree_util.keystr(path)
        decay = not any(tag in name for tag in NO_DECAY)
        return Param(decay, leaf.axes) if is_param(leaf) else decay
    return jax.tree_util.tree_map_with_path(decide, params, is_leaf=is_param)


def make_optimizer(opt) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(opt)
    tx = optax.chain(
        optax.clip_by_global_norm(opt.clip_norm) if opt.clip_norm > 0 else optax.identity(),
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask),
    )
    return tx, schedule
