"""Knowledge-action environments with verifiers: procedurally generated tasks with a horizon knob,
deterministic tools, scripted experts, and an evaluation harness. See base.py for the protocol, registry.py for the
domains, demos.py for expert demonstrations and evaluate.py for `a1jax eval`."""
from a1jax.envs.base import Environment, Session, StepResult, Task, Verdict, final_answer
from a1jax.envs.registry import get, names, register

__all__ = ["Environment", "Session", "StepResult", "Task", "Verdict", "final_answer", "get", "names", "register"]
