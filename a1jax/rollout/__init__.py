"""Generation engine and multi-turn agent rollouts: sampler, tool-call parser, environments, rollout loop."""
from a1jax.rollout.agent import Rollout, RolloutConfig
from a1jax.rollout.engine import Engine
from a1jax.rollout.environment import Environment, ScriptedEnvironment
from a1jax.rollout.sampling import SamplingParams, apply_penalties, filter_logits, sample
from a1jax.rollout.toolcalls import ToolCall, ToolCallError, parse_tool_calls

__all__ = ["Engine", "Environment", "Rollout", "RolloutConfig", "SamplingParams", "ScriptedEnvironment", "ToolCall",
           "ToolCallError", "apply_penalties", "filter_logits", "parse_tool_calls", "sample"]
