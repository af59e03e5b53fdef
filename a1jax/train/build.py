"""From a validated experiment to jitted, sharded step functions: the part of set-up that the trainer and the
planner (`a1jax plan`) share. Nothing here allocates parameters: the state is abstract until the caller initialises
or restores it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax

from a1jax import sharding
from a1jax.model.parallel import Parallel
from a1jax.train import optim, steps
from a1jax.train.experiment import Experiment
from a1jax.train.state import init_state, state_shardings


@dataclasses.dataclass
class Built:
    mesh: Any
    rules: dict
    ctx: steps.StepContext
    tx: Any
    schedule: Any
    abstract_state: Any  # TrainState of ShapeDtypeStructs
    state_shardings: Any
    batch_sharding: Any
    stage: Any  # the experiment's Stage (a1jax.train.experiment): its pure step and how many inputs follow the state
    eval_fn: Any  # jit(eval_step)(params, batch) -> sums

    def init_state(self, rng):
        """The initial state, placed as the step expects. On CPU the init program is compiled without LLVM's
        optimisation passes: it runs once, and its few hundred random-number fusions otherwise take ~25 s to compile
        (the smoke-test model; 4 s at -O0, and 1.5 s instead of 0.3 s to run)."""
        lowered = jax.jit(functools.partial(init_state, self.ctx.model, self.tx),
                          out_shardings=self.state_shardings).lower(rng)
        cpu = self.mesh.devices.flat[0].platform == "cpu"
        return lowered.compile(compiler_options={"xla_backend_optimization_level": 0} if cpu else None)(rng)

    def jit_step(self, input_shardings: Sequence):
        """The one jit of the stage's step, shared by the trainer (`loop.Run.step_fn`) and `step_fn` (the planner,
        aot, tests): jit(step)(state, *inputs) -> (state, metrics), the state donated and laid out by
        state_shardings in and out. `input_shardings`: one per input after the state (a sharding, or a dict of them
        by key)."""
        return jax.jit(functools.partial(self.stage.step, self.ctx),
                       in_shardings=(self.state_shardings, *input_shardings),
                       out_shardings=(self.state_shardings, None), donate_argnums=0)

    @functools.cached_property
    def step_fn(self):
        """`jit_step` with every input laid out by batch_sharding: (state, batch[, teacher targets]) -> (state,
        metrics)."""
        return self.jit_step((self.batch_sharding,) * self.stage.inputs)


def build(exp: Experiment, *, num_domains: int = 1, devices: Sequence | None = None) -> Built:
    """Checks that the model and batch fit the mesh (before anything compiles), then builds the step functions."""
    config, cfg = exp.config, exp.model
    mesh = sharding.make_mesh(dict(config.mesh), devices, dict(config.get("mesh_dcn", None) or {}))
    sharding.check_model_fits_mesh(cfg, mesh)
    sharding.check_sequence_fits_mesh(exp.data.seq_len, cfg, mesh)
    rules = sharding.merged_rules(dict(config.get("sharding_rules", {}) or {}))
    sharding.check_batch_fits_mesh(exp.data.batch_size, mesh, rules)
    if exp.eval_data is not None:
        sharding.check_batch_fits_mesh(exp.eval_data.batch_size, mesh, rules, "data.eval_batch_size")
    opt = config.optimizer.copy_and_resolve_references()
    opt.total_steps = config.train.steps
    tx, schedule = optim.make_optimizer(opt)
    ctx = steps.StepContext(model=cfg, tx=tx, schedule=schedule, num_domains=max(num_domains, 1),
                            microbatches=config.train.microbatches, z_loss_coef=config.train.z_loss_coef,
                            mtp_loss_coef=config.train.mtp_loss_coef,
                            parallel=Parallel.from_mesh(mesh, rules, config.get("ep_transport", "auto")),
                            options=exp.options)
    abstract = jax.eval_shape(functools.partial(init_state, cfg, tx), jax.random.key(config.seed))
    state_sh = state_shardings(abstract, mesh, rules)
    batch_sh = sharding.batch_sharding(mesh, rules)
    eval_fn = jax.jit(functools.partial(steps.eval_step, ctx), in_shardings=(state_sh.params, batch_sh))
    return Built(mesh=mesh, rules=rules, ctx=ctx, tx=tx, schedule=schedule, abstract_state=abstract,
                 state_shardings=state_sh, batch_sharding=batch_sh, stage=exp.stage, eval_fn=eval_fn)
