"""The stage table: every `config.stage` the trainer runs, with its pure step, the step's options, its loop settings and
its batch source (docs/spec/recipe.md §6 for the three stages). The CLI, the loop (a1jax/train/loop.py) and the
planner (a1jax/plan.py) read a stage from here, through the `Experiment` that `validate` returns (`exp.stage`).

This module sits above both a1jax/train (stage 1 and the loop) and a1jax/distill (stages 2-3), so neither imports
the other's stages: model <- train <- distill <- stages.
"""
from __future__ import annotations

import ml_collections

from a1jax.data import pipeline
from a1jax.distill import opd, settings, steps as distill_steps, teacher_training
from a1jax.train import config_schema, experiment, loop, steps
from a1jax.train.experiment import Stage


# The sections of the rollout stages; every stage accepts them (an SFT config may carry a distill section unused).
_ROLLOUT_SECTIONS = {
    "envs": config_schema.dataclass_fields(settings.Envs),
    "rollout": config_schema.dataclass_fields(settings.Rollout),
    "teachers": [config_schema.dataclass_fields(settings.TeacherSpec)],
    "expert_iteration": config_schema.dataclass_fields(settings.ExpertIteration),
    "gate": config_schema.dataclass_fields(settings.Gate),
    "distill": config_schema.dataclass_fields(distill_steps.OPDOptions),
    "grpo": config_schema.dataclass_fields(distill_steps.GRPOOptions),
}
_ROLLOUT = dict(settings=settings.from_config, sections=_ROLLOUT_SECTIONS,
                domains=lambda exp: {d: i for i, d in enumerate(exp.loop.envs.domains)})

STAGES: dict[str, Stage] = {
    "sft": Stage(steps.sft_step, loop.PipelineSource, trains_mtp=True, sections=_ROLLOUT_SECTIONS,
                 domains=lambda exp: pipeline.domain_table(exp.data)),
    "teacher_sft": Stage(distill_steps.teacher_sft_step, teacher_training.ExpertIterationSource,
                         trains_mtp=True, **_ROLLOUT),
    "grpo": Stage(distill_steps.grpo_step, teacher_training.GRPOSource,
                  options=("grpo", distill_steps.GRPOOptions), **_ROLLOUT),
    "opd": Stage(distill_steps.opd_step, opd.OPDSource, inputs=2, options=("distill", distill_steps.OPDOptions),
                 **_ROLLOUT),
}


def validate(config: ml_collections.ConfigDict, *, check_vocabulary: bool = True) -> experiment.Experiment:
    """The typed experiment of `config` with its stage (a1jax.train.experiment.validate against this table)."""
    return experiment.validate(config, STAGES, check_vocabulary=check_vocabulary)
