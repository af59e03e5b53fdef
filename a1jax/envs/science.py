"""Scientific research: multi-step quantitative problems solved with a calculator and a unit converter.

A task starts from a measured quantity (e.g. "3.25 km") and lists `horizon` operations to apply in order: convert
to another unit of the same dimension, multiply or divide by a factor, or add an amount in the current unit. Each
operation needs the previous result, so the expert makes exactly `horizon` dependent tool calls (one `convert` or
`calculator` call per operation), feeding each printed result (12 significant digits) into the next call.

Verification: the last number of the final answer (after the last "Answer:" line, else anywhere in the final
message) must be within a relative tolerance of RTOL = 1e-4 of the exact result (|got - want| <= RTOL * |want|,
with an absolute floor of 1e-9 for results near zero).
"""
from __future__ import annotations

import math
from typing import Iterator

from a1jax.envs import tools as T
from a1jax.envs.base import Task, Verdict, final_answer
from a1jax.envs.calculator import calculator
from a1jax.envs.registry import register

RTOL = 1e-4
MAX_HORIZON = 100
HORIZON_MIX = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 50)
# dimension -> unit -> size in the SI unit; temperatures are affine and handled apart.
UNITS = {
    "length": {"m": 1.0, "km": 1e3, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "mi": 1609.344, "ft": 0.3048, "in": 0.0254,
               "yd": 0.9144, "nmi": 1852.0},
    "mass": {"kg": 1.0, "g": 1e-3, "mg": 1e-6, "t": 1e3, "lb": 0.45359237, "oz": 0.028349523125},
    "time": {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0, "day": 86400.0},
    "energy": {"J": 1.0, "kJ": 1e3, "MJ": 1e6, "cal": 4.184, "kcal": 4184.0, "Wh": 3600.0, "kWh": 3.6e6,
               "eV": 1.602176634e-19},
    "pressure": {"Pa": 1.0, "kPa": 1e3, "MPa": 1e6, "bar": 1e5, "atm": 101325.0, "psi": 6894.757293168361,
                 "mmHg": 133.322387415, "torr": 101325.0 / 760},
    "volume": {"m3": 1.0, "L": 1e-3, "mL": 1e-6, "cm3": 1e-6, "gal": 3.785411784e-3, "ft3": 0.028316846592},
    "speed": {"m/s": 1.0, "km/h": 1 / 3.6, "mph": 0.44704, "kn": 1852.0 / 3600, "ft/s": 0.3048},
    "temperature": {"K": None, "C": None, "F": None},
}
DIMENSION = {u: d for d, us in UNITS.items() for u in us}
_SUBJECT = {"length": "A probe measures a distance of", "mass": "A sample has a mass of",
            "time": "An experiment runs for", "energy": "A reaction releases",
            "pressure": "A gas is held at a pressure of", "volume": "A vessel holds",
            "speed": "A particle moves at", "temperature": "A bath is held at"}
SYSTEM = ("You are a scientific assistant. Use the calculator and convert tools for every computation; do not do "
          "arithmetic in your head. When done, reply with one line: 'Answer: NUMBER' (in the unit asked for).")


def _to_kelvin(v: float, unit: str) -> float:
    return {"K": v, "C": v + 273.15, "F": (v - 32) * 5 / 9 + 273.15}[unit]


def _from_kelvin(k: float, unit: str) -> float:
    return {"K": k, "C": k - 273.15, "F": (k - 273.15) * 9 / 5 + 32}[unit]


def convert_value(value: float, from_unit: str, to_unit: str) -> float:
    for u in (from_unit, to_unit):
        if u not in DIMENSION:
            raise T.ToolError(f"unknown unit {u!r}; known: {', '.join(DIMENSION)}")
    if DIMENSION[from_unit] != DIMENSION[to_unit]:
        raise T.ToolError(f"cannot convert {DIMENSION[from_unit]} ({from_unit}) to {DIMENSION[to_unit]} ({to_unit})")
    if DIMENSION[from_unit] == "temperature":
        return _from_kelvin(_to_kelvin(value, from_unit), to_unit)
    table = UNITS[DIMENSION[from_unit]]
    return value * table[from_unit] / table[to_unit]


def convert(value: float, from_unit: str, to_unit: str) -> str:
    return T.fmt(convert_value(float(value), from_unit.strip(), to_unit.strip()))


TOOLS = {
    "calculator": T.Tool("calculator", "Evaluate an arithmetic expression (numbers, + - * / ** ( ), sqrt, log, exp, "
                                       "pi). Returns the value with 12 significant digits.",
                         {"expression": ("string", "e.g. '3.5 * (2 + 1.25)'")}, calculator),
    "convert": T.Tool("convert", f"Convert a value between units of one dimension. Units: {', '.join(DIMENSION)}.",
                      {"value": ("number", "the value"), "from_unit": ("string", "its unit"),
                       "to_unit": ("string", "the target unit")}, convert),
}


def _sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def _operations(rng, h: int) -> tuple[str, float, str, list]:
    """(dimension, start value, start unit, operations); operations: ("convert", unit) | (op, number)."""
    dim = rng.choice(sorted(UNITS))
    units = sorted(UNITS[dim])
    unit = rng.choice(units)
    value = _sig(rng.uniform(250, 400)) if dim == "temperature" else _sig(rng.uniform(0.5, 500))
    ops, cur = [], unit
    for _ in range(h):
        kinds = ["convert", "add"] if dim == "temperature" else ["convert", "multiply", "divide", "add"]
        kind = rng.choice(kinds)
        if kind == "convert":
            cur = rng.choice([u for u in units if u != cur])
            ops.append(("convert", cur))
        elif kind == "add":
            ops.append(("add", _sig(rng.uniform(0.5, 50))))
        else:
            ops.append((kind, _sig(rng.uniform(1.1, 3.0))))
    return dim, value, unit, ops


def _describe(op: tuple, unit: str) -> str:
    kind, arg = op
    return {"convert": f"Convert it to {arg}.", "multiply": f"Multiply it by {arg}.",
            "divide": f"Divide it by {arg}.", "add": f"Add {arg} {unit} to it."}[kind]


def _apply(value: float, unit: str, op: tuple) -> tuple[float, str]:
    kind, arg = op
    if kind == "convert":
        return convert_value(value, unit, arg), arg
    return {"multiply": value * arg, "divide": value / arg, "add": value + arg}[kind], unit


class ScienceEnv(T.ToolEnv):
    name = "science"

    def tools_for(self, task: Task) -> dict[str, T.Tool]:
        return TOOLS

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        T.check_request(self.name, split, n, horizon, MAX_HORIZON)
        schemas = [t.schema() for t in TOOLS.values()]
        for i in range(n):
            rng = T.rng_for(self.name, split, seed, horizon, i)
            h = T.horizons_for(horizon, rng, HORIZON_MIX)

            def make(r):
                dim, value, unit, ops = _operations(r, h)
                return T.dumps([dim, value, unit, ops]), (dim, value, unit, ops)

            dim, value, unit, ops = T.sample_in_split(make, split, rng)
            steps, v, u = [], value, unit
            for k, op in enumerate(ops, 1):
                steps.append(f"{k}. {_describe(op, u)}")
                v, u = _apply(v, u, op)
            query = (f"{_SUBJECT[dim]} {value} {unit}. Apply these operations in order, each to the result of the "
                     f"previous one:\n" + "\n".join(steps) + f"\nWhat is the final value in {u}?")
            tag = "mix" if horizon is None else f"h{h}"
            yield Task(id=f"{self.name}/{split}/s{seed}/{tag}/{i}", domain=self.name,
                       messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}],
                       tools=schemas, horizon=h, answer=v,
                       metadata={"unit": u, "start": [value, unit], "operations": [list(o) for o in ops]})

    def verify(self, task: Task, trajectory: dict) -> Verdict:
        return verify_number(final_answer(trajectory), float(task.answer), RTOL)

    def solve(self, task: Task) -> dict:
        value, unit = task.metadata["start"]
        cur, tr = T.fmt(value), T.Transcript(self, task)
        for kind, arg in task.metadata["operations"]:
            if kind == "convert":
                cur = tr.call("convert", f"Convert {cur} {unit} to {arg}.", value=float(cur), from_unit=unit,
                              to_unit=arg)
                unit = arg
            else:
                sym = {"multiply": "*", "divide": "/", "add": "+"}[kind]
                thought = {"multiply": f"Multiply {cur} by {arg}.", "divide": f"Divide {cur} by {arg}.",
                           "add": f"Add {arg} {unit} to {cur} {unit}."}[kind]
                cur = tr.call("calculator", thought, expression=f"{cur} {sym} {arg}")
            float(cur)  # the expert never continues from an error message
        return tr.answer(f"Answer: {cur}", f"The final value is {cur} {unit}.")


def verify_number(content: str, want: float, rtol: float) -> Verdict:
    got = T.last_number(T.answer_text(content))
    if got is None:
        return Verdict(0.0, False, "no number in the final answer")
    if math.isclose(got, want, rel_tol=rtol, abs_tol=1e-9):
        return Verdict(1.0, True, f"{got} is within {rtol:g} of {want:.6g}")
    return Verdict(0.0, False, f"expected {want:.6g} (relative tolerance {rtol:g}), got {got}")


@register("science")
def make() -> ScienceEnv:
    return ScienceEnv()
