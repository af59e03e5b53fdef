"""Scientific agents: chained look-ups in a shipped table of real element data, then a computation.

Data: a1jax/assets/envs/elements.csv (61 elements: atomic weight from CIAAW, melting point, density; see PROVENANCE.md
beside it). Tools: `lookup(entity, property)` (entity: symbol, name or atomic number) and `calculator`.

Task families, by horizon h (= the number of tool calls the expert makes):
- h = 1: one property of one element ("What is the melting point of iron in K?").
- h >= 2, "mass": the total mass in grams of a mixture of h - 1 distinct elements given in moles: h - 1 atomic-weight
  look-ups, then one calculator call that needs all of them.
- h >= 2, "volume": the total volume in cm3 of h - 1 distinct solid or liquid elements given in grams: h - 1 density
  look-ups, then one calculator call.
The look-ups are independent of each other; the final computation depends on all of them (so h - 1 of the calls can
run in parallel, which the expert does not do). Verification as in science.py: relative tolerance RTOL = 1e-4.
"""
from __future__ import annotations

import csv
import functools
import os
from typing import Iterator

from a1jax.envs import tools as T
from a1jax.envs.base import Task, Verdict, final_answer
from a1jax.envs.registry import register
from a1jax.envs.science import TOOLS as SCIENCE_TOOLS
from a1jax.envs.science import verify_number

RTOL = 1e-4
DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "envs", "elements.csv")
PROPERTIES = {"atomic_number": "", "symbol": "", "name": "", "atomic_weight": "g/mol", "melting_point": "K",
              "density": "g/cm3"}
_COLUMNS = {"melting_point": "melting_point_K", "density": "density_g_cm3"}
SYSTEM = ("You are a scientific agent with access to a table of element data. Look every value up with the lookup "
          "tool and compute with the calculator; do not use remembered values. Reply with one line: 'Answer: NUMBER'.")


@functools.lru_cache(maxsize=1)
def elements() -> list[dict]:
    with open(DATA, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["atomic_number"] = int(row["atomic_number"])
        for prop, col in [("atomic_weight", "atomic_weight")] + list(_COLUMNS.items()):
            row[prop] = float(row[col]) if row[col] else None
    return rows


def find(entity: str) -> dict:
    key = str(entity).strip().lower()
    for row in elements():
        if key in (row["symbol"].lower(), row["name"].lower(), str(row["atomic_number"])):
            return row
    if key == "aluminum" or key == "cesium":  # American spellings of the IUPAC names in the table
        return find({"aluminum": "aluminium", "cesium": "caesium"}[key])
    raise T.ToolError(f"no element {entity!r} in the table (give a symbol, a name or an atomic number)")


def lookup(entity: str, property: str) -> str:
    prop = property.strip().lower().replace(" ", "_")
    if prop not in PROPERTIES:
        raise T.ToolError(f"unknown property {property!r}; known: {', '.join(PROPERTIES)}")
    row = find(entity)
    value = row[prop]
    if value is None:
        return f"{prop} of {row['name']} ({row['symbol']}): not available"
    unit = f" {PROPERTIES[prop]}" if PROPERTIES[prop] else ""
    return f"{prop} of {row['name']} ({row['symbol']}): {value}{unit}"


TOOLS = {
    "lookup": T.Tool("lookup", f"Look up a property of a chemical element. Properties: {', '.join(PROPERTIES)}.",
                     {"entity": ("string", "element symbol, name or atomic number"),
                      "property": ("string", "one of the properties")}, lookup),
    "calculator": SCIENCE_TOOLS["calculator"],
}
MAX_HORIZON = 1 + min(sum(e["atomic_weight"] is not None for e in elements()),
                      sum(e["density"] is not None for e in elements()))
HORIZON_MIX = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 50)


def _make(rng, h: int) -> tuple[str, dict]:
    rows = elements()
    if h == 1:
        prop = rng.choice(["atomic_weight", "melting_point", "density"])
        row = rng.choice([r for r in rows if r[prop] is not None])
        spec = {"family": "property", "items": [[row["symbol"], None]], "property": prop}
    else:
        family = rng.choice(["mass", "volume"])
        prop = "atomic_weight" if family == "mass" else "density"
        chosen = rng.sample([r for r in rows if r[prop] is not None], h - 1)
        spec = {"family": family, "property": prop,
                "items": [[r["symbol"], float(f"{rng.uniform(0.1, 20):.3g}")] for r in chosen]}
    return T.dumps(spec), spec


def _question(spec: dict) -> tuple[str, float]:
    """The question and its exact answer."""
    by_symbol = {r["symbol"]: r for r in elements()}
    prop = spec["property"]
    if spec["family"] == "property":
        row = by_symbol[spec["items"][0][0]]
        unit = PROPERTIES[prop]
        return f"What is the {prop.replace('_', ' ')} of {row['name']} in {unit}?", row[prop]
    if spec["family"] == "mass":
        parts = [f"{amount} mol of {by_symbol[s]['name']}" for s, amount in spec["items"]]
        total = sum(amount * by_symbol[s]["atomic_weight"] for s, amount in spec["items"])
        return f"A mixture contains {', '.join(parts)}. What is its total mass in grams?", total
    parts = [f"{amount} g of {by_symbol[s]['name']}" for s, amount in spec["items"]]
    total = sum(amount / by_symbol[s]["density"] for s, amount in spec["items"])
    return (f"Samples of {', '.join(parts)} are measured separately. Using each element's density, what is their "
            f"total volume in cm3?"), total


class SciAgentsEnv(T.ToolEnv):
    name = "scientific_agents"

    def tools_for(self, task: Task) -> dict[str, T.Tool]:
        return TOOLS

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        T.check_request(self.name, split, n, horizon, MAX_HORIZON)
        schemas = [t.schema() for t in TOOLS.values()]
        for i in range(n):
            rng = T.rng_for(self.name, split, seed, horizon, i)
            h = T.horizons_for(horizon, rng, HORIZON_MIX)
            spec = T.sample_in_split(lambda r: _make(r, h), split, rng)
            query, answer = _question(spec)
            tag = "mix" if horizon is None else f"h{h}"
            yield Task(id=f"{self.name}/{split}/s{seed}/{tag}/{i}", domain=self.name,
                       messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}],
                       tools=schemas, horizon=h, answer=answer, metadata=spec)

    def verify(self, task: Task, trajectory: dict) -> Verdict:
        return verify_number(final_answer(trajectory), float(task.answer), RTOL)

    def solve(self, task: Task) -> dict:
        tr, spec = T.Transcript(self, task), task.metadata
        prop = spec["property"]
        values = []
        for symbol, _ in spec["items"]:
            name = find(symbol)["name"]
            result = tr.call("lookup", f"Look up the {prop.replace('_', ' ')} of {name}.", entity=name, property=prop)
            values.append(result.split(": ", 1)[1].split()[0])
        if spec["family"] == "property":
            return tr.answer(f"Answer: {values[0]}", f"The table gives {values[0]}.")
        op = "*" if spec["family"] == "mass" else "/"
        expression = " + ".join(f"{amount} {op} {v}" for (_, amount), v in zip(spec["items"], values))
        total = tr.call("calculator", "Now combine the looked-up values.", expression=expression)
        float(total)  # the expert never answers with an error message
        return tr.answer(f"Answer: {total}", f"The total is {total}.")


@register("scientific_agents")
def make() -> SciAgentsEnv:
    return SciAgentsEnv()
