"""Engineering: write or fix a small Python function that hidden unit tests verify, with a sandboxed python tool.

The tool `python(code)` runs in the sandbox (a1jax/envs/sandbox.py; any object with `run(code) -> SandboxResult`
plugs in as `sandbox=`).

Every task is a pipeline of `horizon` stages applied in order to the input: string stages (reverse, rotate, Caesar
shift, swap case, replace a character, swap adjacent pairs, reverse each word) or integer stages (add, subtract,
multiply, floor-divide, modulo, XOR, digit sum). Families (seeded):
- "string" / "integer": write `solve(x)` from the stage list;
- "fix": the prompt shows an implementation with one wrong stage; submit a fixed one.

The expert builds the solution one stage at a time: call k runs stages 1..k on the example input and prints the
result, which the expert checks against the stage list before adding stage k+1. So horizon = stages = python calls,
each extending the code the previous call checked; then it submits the whole function in a ```python block.

Verification runs the last ```python block of the final answer on the hidden inputs (the example plus 6 seeded
ones) in one sandbox call and compares what it returns with the expected outputs here, outside the sandbox: the
sandboxed program holds only the inputs (no expected output, no nonce, no verdict), so reading its own files or
frames cannot reveal what to return, and printing a fake result line gains nothing (the line is only data to check).
The reward is 1.0 only if every case returns a value of the expected type that equals the expected output.
"""
from __future__ import annotations

import json
import re
import string
from typing import Iterator

from a1jax.envs import tools as T
from a1jax.envs.base import Task, Verdict, final_answer
from a1jax.envs.registry import register
from a1jax.envs.sandbox import Sandbox

MAX_HORIZON = 64
HORIZON_MIX = (1, 2, 3, 4, 6, 8)
HIDDEN_CASES = 6
SYSTEM = ("You are a software engineer. Use the python tool to run and test code (standard library only, no "
          "network, each call is a fresh process). When done, reply with the complete function in one ```python "
          "block.")
_CODE_BLOCK = re.compile(r"```(?:python|py)[^\n]*\n(.*?)```", re.S)


def _string_stage(rng) -> tuple[str, str]:
    """(description, one line of code on the variable x)."""
    kind = rng.choice(["reverse", "rotate", "caesar", "swapcase", "replace", "pairs", "words"])
    if kind == "reverse":
        return "Reverse the string.", "x = x[::-1]"
    if kind == "rotate":
        k = rng.randint(1, 5)
        return f"Move the first {k} characters to the end (a shorter string is left as is).", f"x = x[{k}:] + x[:{k}]"
    if kind == "caesar":
        k = rng.randint(1, 25)
        return (f"Shift every lowercase ASCII letter {k} places forward in the alphabet, wrapping z to a; other "
                f"characters stay.", f"x = ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' else c "
                                     f"for c in x)")
    if kind == "swapcase":
        return "Swap the case of every letter.", "x = x.swapcase()"
    if kind == "replace":
        a, b = rng.sample(string.ascii_lowercase, 2)
        return f"Replace every '{a}' with '{b}'.", f"x = x.replace({a!r}, {b!r})"
    if kind == "pairs":
        return ("Swap each pair of adjacent characters (1st with 2nd, 3rd with 4th, ...; a last odd character "
                "stays).", "x = ''.join(x[i:i + 2][::-1] for i in range(0, len(x), 2))")
    return ("Reverse each space-separated word, keeping the words in order.",
            "x = ' '.join(w[::-1] for w in x.split(' '))")


def _integer_stage(rng) -> tuple[str, str]:
    kind = rng.choice(["add", "sub", "mul", "floordiv", "mod", "xor", "digits"])
    k = rng.randint(2, 97)
    return {"add": (f"Add {k}.", f"x = x + {k}"), "sub": (f"Subtract {k}.", f"x = x - {k}"),
            "mul": (f"Multiply by {k % 9 + 2}.", f"x = x * {k % 9 + 2}"),
            "floordiv": (f"Divide by {k % 7 + 2}, rounding down (Python //).", f"x = x // {k % 7 + 2}"),
            "mod": (f"Take the remainder modulo {k + 50} (Python %, never negative).", f"x = x % {k + 50}"),
            "xor": (f"Bitwise XOR with {k}.", f"x = x ^ {k}"),
            "digits": ("Replace x by the sum of the decimal digits of |x|.", "x = sum(int(d) for d in str(abs(x)))"),
            }[kind]


def _inputs(rng, kind: str, count: int) -> list:
    if kind == "integer":
        return [rng.randint(-1000, 100000) for _ in range(count)]
    alphabet = string.ascii_letters + "    "
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 16))).strip() or "ab" for _ in range(count)]


def program(stages: list[str], upto: int | None = None, name: str = "solve") -> str:
    """The expert's code: one function per stage and `name` chaining the first `upto` of them."""
    upto = len(stages) if upto is None else upto
    defs = [f"def stage_{k}(x):\n    {code}\n    return x\n" for k, code in enumerate(stages[:upto], 1)]
    chain = ", ".join(f"stage_{k}" for k in range(1, upto + 1))
    return "\n\n".join(defs + [f"def {name}(x):\n    for stage in ({chain},):\n        x = stage(x)\n    return x\n"])


def reference(stages: list[str], x):
    """Runs the stages in this process (they are generated here, never model-written)."""
    ns: dict = {}
    exec(compile(program(stages), "<reference>", "exec"), ns)
    return ns["solve"](x)


def _make(rng, h: int) -> tuple[str, dict]:
    family = rng.choice(["string", "integer", "fix"])
    kind = rng.choice(["string", "integer"]) if family == "fix" else family
    stage = _string_stage if kind == "string" else _integer_stage
    pairs = [stage(rng) for _ in range(h)]
    spec = {"family": family, "kind": kind, "steps": [d for d, _ in pairs], "stages": [c for _, c in pairs],
            "inputs": _inputs(rng, kind, 1 + HIDDEN_CASES)}
    if family == "fix":
        k = rng.randrange(h)
        buggy = list(spec["stages"])
        for _ in range(20):  # a wrong stage that changes the example's output
            buggy[k] = stage(rng)[1]
            if reference(buggy, spec["inputs"][0]) != reference(spec["stages"], spec["inputs"][0]):
                break
        else:
            return _make(rng, h)
        spec["buggy"] = program(buggy)
    return T.dumps(spec), spec


class EngineeringEnv(T.ToolEnv):
    name = "engineering"

    def __init__(self, sandbox=None):
        self.sandbox = sandbox or Sandbox()

    def tools_for(self, task: Task) -> dict[str, T.Tool]:
        def python(code: str) -> str:
            r = self.sandbox.run(code)
            parts = [f"exit status: {r.exit_status}" + (" (timed out)" if r.timed_out else "")]
            if r.stdout:
                parts.append(f"stdout:\n{r.stdout}")
            if r.stderr:
                parts.append(f"stderr:\n{r.stderr}")
            return "\n".join(parts)

        return {"python": T.Tool("python", "Run a Python program (standard library only) in a fresh process and "
                                           "see its exit status, stdout and stderr.",
                                 {"code": ("string", "the program")}, python)}

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        T.check_request(self.name, split, n, horizon, MAX_HORIZON)
        schemas = [t.schema() for t in self.tools_for(None).values()]
        for i in range(n):
            rng = T.rng_for(self.name, split, seed, horizon, i)
            h = T.horizons_for(horizon, rng, HORIZON_MIX)
            spec = T.sample_in_split(lambda r: _make(r, h), split, rng)
            x0 = spec["inputs"][0]
            kind = "str" if spec["kind"] == "string" else "int"
            steps = "\n".join(f"{k}. {d}" for k, d in enumerate(spec["steps"], 1))
            query = (f"Write a Python function `solve(x: {kind}) -> {kind}` that applies these steps in order:\n"
                     f"{steps}\nExample: solve({x0!r}) == {reference(spec['stages'], x0)!r}.")
            if spec["family"] == "fix":
                query = (f"This implementation of `solve(x: {kind}) -> {kind}` has a bug:\n```python\n"
                         f"{spec['buggy']}```\nIt should apply these steps in order:\n{steps}\n"
                         f"Example: solve({x0!r}) == {reference(spec['stages'], x0)!r}. Fix it.")
            tag = "mix" if horizon is None else f"h{h}"
            cases = [[x, reference(spec["stages"], x)] for x in spec["inputs"]]
            yield Task(id=f"{self.name}/{split}/s{seed}/{tag}/{i}", domain=self.name,
                       messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}],
                       tools=schemas, horizon=h, answer=cases,
                       metadata={"family": spec["family"], "kind": spec["kind"], "stages": spec["stages"]})

    def verify(self, task: Task, trajectory: dict) -> Verdict:
        blocks = _CODE_BLOCK.findall(final_answer(trajectory))
        if not blocks:
            return Verdict(0.0, False, "no ```python block in the final answer")
        r = self.sandbox.run(_harness(blocks[-1], [x for x, _ in task.answer]))
        results = _results(r.stdout)
        if r.timed_out or results is None or len(results) != len(task.answer):
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            return Verdict(0.0, False, f"the hidden tests did not finish ({'timeout' if r.timed_out else tail[0]})")
        return _grade(task.answer, results)

    def solve(self, task: Task) -> dict:
        stages, x0 = task.metadata["stages"], task.answer[0][0]
        tr = T.Transcript(self, task)
        for k in range(1, len(stages) + 1):
            code = program(stages, k, name="first_steps") + f"\n\nprint(repr(first_steps({x0!r})))\n"
            out = tr.call("python", f"Implement step {k} and check the result on the example.", code=code)
            want = repr(reference(stages[:k], x0))
            if f"stdout:\n{want}\n" not in out + "\n":
                raise RuntimeError(f"expert: step {k} printed {out!r}, expected {want}")
        return tr.answer(f"All steps check out on the example.\n```python\n{program(stages)}```",
                         "Every step matches the specification; submit the full function.")


RESULTS = "a1jax-engineering-results"  # marks the harness's last line; public, the check happens outside


def _harness(code: str, inputs: list) -> str:
    """The submission in its own namespace, then `solve` on every hidden input; the last line is RESULTS and a JSON
    list of [type name, value] pairs (or ["error", message]). No expected output enters the sandbox."""
    return f"""
import json as _json
_ns = {{"__name__": "solution"}}
exec(compile({code!r}, "solution.py", "exec"), _ns)
_out = []
for _x in {json.dumps(inputs)}:
    try:
        _got = _ns["solve"](_x)
        _out.append([type(_got).__name__, _got if type(_got) in (int, str) else repr(_got)[:200]])
    except Exception as _e:
        _out.append(["error", f"{{type(_e).__name__}}: {{_e}}"[:200]])
print()
print("{RESULTS}", _json.dumps(_out))
"""


def _results(stdout: str) -> list | None:
    """The harness's result list: the last RESULTS line of stdout (None if there is none or it is not valid)."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULTS + " ")]
    try:
        results = json.loads(lines[-1][len(RESULTS) + 1:]) if lines else None
    except ValueError:
        return None
    ok = isinstance(results, list) and all(isinstance(p, list) and len(p) == 2 for p in results)
    return results if ok else None


def _grade(cases: list, results: list) -> Verdict:
    """Compares the sandbox's [type name, value] results with the expected outputs (computed here, never sent)."""
    passed, first = 0, ""
    for (x, want), (kind, got) in zip(cases, results):
        if kind == type(want).__name__ and type(got) is type(want) and got == want:
            passed += 1
        elif not first:
            shown = f"<{got}>" if kind == "error" else repr(got)
            first = f"solve({x!r}) returned {shown}, expected {want!r}"[:300]
    if passed == len(cases):
        return Verdict(1.0, True, f"passed {passed}/{len(cases)} hidden tests")
    return Verdict(0.0, False, f"passed {passed}/{len(cases)} hidden tests; first failure: {first}")


@register("engineering")
def make(sandbox=None) -> EngineeringEnv:
    return EngineeringEnv(sandbox)
