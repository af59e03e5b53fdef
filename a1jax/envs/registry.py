"""Domain name -> environment factory. Built-in domains are imported lazily, by module path, on first use: a domain
whose module is missing or broken fails alone, with its import error, and never hides the others.

    from a1jax import envs
    env = envs.get("search", backend=MyBackend())     # options go to the domain's factory
    envs.names()                                       # all known domain names

A plug-in registers itself the same way the built-ins do:

    @envs.register("my_domain")
    def make(**options) -> Environment: ...
"""
from __future__ import annotations

import importlib
from typing import Callable

from a1jax.envs.base import Environment

# Built-in domains: registry name -> module that registers it on import.
BUILTINS = {
    "search": "a1jax.envs.search",
    "engineering": "a1jax.envs.engineering",
    "science": "a1jax.envs.science",
    "instruction_following": "a1jax.envs.instruction",
    "tool_calling": "a1jax.envs.tool_calling",
    "scientific_agents": "a1jax.envs.sci_agents",
}
_FACTORIES: dict[str, Callable[..., Environment]] = {}


def register(name: str) -> Callable:
    """Decorator: `@register("name") def factory(**options) -> Environment`. Re-registering replaces."""
    def deco(factory: Callable[..., Environment]):
        _FACTORIES[name] = factory
        return factory
    return deco


def names() -> list[str]:
    """Every domain name: the built-ins (importable or not) and any registered plug-ins."""
    return sorted(set(BUILTINS) | set(_FACTORIES))


def get(name: str, **options) -> Environment:
    """A new environment for domain `name`; options go to its factory (e.g. backend=, sandbox=)."""
    if name not in _FACTORIES and name in BUILTINS:
        try:
            importlib.import_module(BUILTINS[name])
        except ImportError as e:
            raise ValueError(f"environment {name!r}: its module {BUILTINS[name]} cannot be imported ({e})") from e
    if name not in _FACTORIES:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(names())}")
    try:
        return _FACTORIES[name](**options)
    except TypeError as e:
        raise ValueError(f"environment {name!r}: bad option(s) {sorted(options)}: {e}") from None
