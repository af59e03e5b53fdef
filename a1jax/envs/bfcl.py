"""BFCL (Berkeley Function Calling Leaderboard v4) single-turn sets and an AST matcher for them.

Loads `simple_python` (one call expected) and `parallel_multiple` (several calls, any order) from
shared/data/eval/bfcl (see its PROVENANCE.md) and checks a model's calls against the possible answers with BFCL's AST
semantics, implemented here from the leaderboard's documentation:

  * the function name must match (optionally `.` written as `_`, for APIs that forbid dots in tool names);
  * every required parameter is present, and no parameter is unknown to the function or absent from the answer;
  * each value must be one of the parameter's allowed values; "" among them means the parameter may be omitted;
  * types follow the function doc ("integer", "float", "string", "boolean", "array", "tuple", "dict", "any"): an int
    is accepted for a float (Python's auto-conversion, as BFCL does), a bool is never an int, a tuple is a list;
    where the possible answers have another type than the doc (BFCL's "variable" case, e.g. the string
    "data['sales']" for an array), their type is the expected one;
  * strings compare case-insensitively, ignoring spaces and , . / - _ * ^ (and ' vs "), also inside lists and dicts;
  * dict values are matched key by key against nested allowed-value lists;
  * parallel sets: the call count must equal the answer count and calls match answers in any order (an exact
    bipartite match, where BFCL is greedy; the two differ only when one call fits several answers).

Calls come from Python call syntax (`f(a=1, b="x")`, `[f(a=1), g(b=2)]`, parsed with `ast`, never evaluated) or from
a1jax `ToolCall` objects.
"""
from __future__ import annotations

import ast
import json
import pathlib
import re
from typing import Any, Sequence

from a1jax.envs.base import Task
from a1jax.rollout.toolcalls import ToolCall

CATEGORIES = ("simple_python", "parallel_multiple")
BFCL_ROOT = pathlib.Path(__file__).resolve().parents[1] / "assets" / "eval" / "bfcl"  # shipped copy (PROVENANCE.md)
_PY_TYPES = {"integer": int, "float": float, "string": str, "boolean": bool, "array": list, "tuple": list,
             "dict": dict}


class CallParseError(ValueError):
    """A response that is not a list of keyword-argument calls."""


# ------------------------------------------------------------------------------------------------------ loading
def load_bfcl(category: str, root: str | pathlib.Path | None = None) -> list[dict]:
    """Entries {id, question, function, ground_truth} of one category, in file order."""
    if category not in CATEGORIES:
        raise ValueError(f"category={category!r}; expected one of {', '.join(CATEGORIES)}")
    root = pathlib.Path(root) if root is not None else BFCL_ROOT
    qpath, apath = root / f"BFCL_v4_{category}.json", root / f"possible_answer_BFCL_v4_{category}.json"
    for p in (qpath, apath):
        if not p.exists():
            raise FileNotFoundError(f"BFCL file not found: {p}; pass root= (the shared data's eval/bfcl folder) "
                                    f"to load_bfcl()")
    questions, answers = _read_jsonl(qpath, ("id", "question", "function")), _read_jsonl(apath, ("id", "ground_truth"))
    by_id = {a["id"]: a["ground_truth"] for a in answers}
    missing = [q["id"] for q in questions if q["id"] not in by_id]
    if missing:
        raise ValueError(f"{apath}: no ground truth for {len(missing)} question(s), e.g. {missing[0]!r}")
    return [{**q, "ground_truth": by_id[q["id"]]} for q in questions]


def _read_jsonl(path: pathlib.Path, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            absent = [k for k in fields if k not in row]
            if absent:
                raise ValueError(f"{path}:{line_no}: missing field(s) {', '.join(absent)}")
            rows.append(row)
    return rows


def to_openai_tool(fn: dict) -> dict:
    """A BFCL function doc as an OpenAI tool schema (BFCL's "dict"/"float"/"tuple"/"any" made JSON-schema)."""
    def fix(schema: Any) -> Any:
        if isinstance(schema, list):
            return [fix(s) for s in schema]
        if not isinstance(schema, dict):
            return schema
        out = {k: fix(v) for k, v in schema.items()}
        kind = out.get("type")
        if kind in ("dict", "float", "tuple", "any"):
            out.pop("type")
            if kind != "any":
                out["type"] = {"dict": "object", "float": "number", "tuple": "array"}[kind]
        return out
    return {"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                             "parameters": fix(fn["parameters"])}}


def bfcl_tasks(category: str, root: str | pathlib.Path | None = None) -> list[Task]:
    """The entries as Tasks for the rollout loop (answer = the entry's ground truth and function docs)."""
    return [Task(id=f"bfcl/{e['id']}", domain="tool_calling", messages=list(e["question"][0]),
                 tools=[to_openai_tool(f) for f in e["function"]], horizon=len(e["ground_truth"]),
                 answer={"ground_truth": e["ground_truth"], "function": e["function"]},
                 metadata={"benchmark": f"bfcl_{category}"}) for e in load_bfcl(category, root)]


# ------------------------------------------------------------------------------------------------------ parsing
def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    raise CallParseError(f"not a function name: {ast.dump(node)[:80]}")


def _value(node: ast.AST) -> Any:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise CallParseError(f"argument is not a literal: {ast.unparse(node)[:80]}") from None
    return _lists(value)


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def parse_python_calls(text: str) -> list[ToolCall]:
    """`f(a=1)`, `[f(a=1), g.h(b="x")]` or `f(a=1); g(b=2)` -> ToolCalls. Positional arguments are an error."""
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```\w*\s*|\s*```$", "", text)
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as e:
        raise CallParseError(f"not Python call syntax ({e.msg})") from None
    nodes: list[ast.AST] = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Expr):
            raise CallParseError("expected call expressions only")
        v = stmt.value
        nodes += v.elts if isinstance(v, (ast.List, ast.Tuple)) else [v]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            raise CallParseError(f"not a call: {ast.unparse(node)[:80]}")
        if node.args:
            raise CallParseError(f"{_name(node.func)}: positional arguments are not allowed; use name=value")
        calls.append(ToolCall(_name(node.func), {kw.arg: _value(kw.value) for kw in node.keywords}))
    return calls


def as_calls(response: str | Sequence) -> list[ToolCall]:
    """A response as ToolCalls: a Python-call string, or a list of ToolCall / {name, arguments} / {name: args}."""
    if isinstance(response, str):
        return parse_python_calls(response)
    out = []
    for c in response:
        if isinstance(c, ToolCall):
            out.append(c)
        elif isinstance(c, dict) and "name" in c:
            args = c.get("arguments", {})
            out.append(ToolCall(c["name"], json.loads(args) if isinstance(args, str) else args))
        elif isinstance(c, dict) and len(c) == 1:
            (name, args), = c.items()
            out.append(ToolCall(name, args))
        else:
            raise CallParseError(f"cannot read a call from {c!r:.80}")
    return out


# ------------------------------------------------------------------------------------------------------ matching
def _std(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _same(value: Any, allowed: Any) -> bool:
    """`value` equals one allowed value, with BFCL's string folding applied inside lists and dicts."""
    if isinstance(allowed, str):
        return isinstance(value, str) and _std(value) == _std(allowed)
    if isinstance(allowed, list):
        return isinstance(value, list) and len(value) == len(allowed) and all(map(_same, value, allowed))
    if isinstance(allowed, dict):
        return isinstance(value, dict) and _dict_ok(value, allowed)
    if isinstance(allowed, bool) or isinstance(value, bool):
        return type(value) is type(allowed) and value == allowed
    return isinstance(value, (int, float)) and value == allowed


def _dict_ok(value: dict, allowed: dict) -> bool:
    """Nested possible answers: {key: [allowed values]} (BFCL's dict form), or a plain dict to compare."""
    nested = all(isinstance(v, list) for v in allowed.values())
    if not nested:
        return value.keys() == allowed.keys() and all(_same(value[k], allowed[k]) for k in allowed)
    if set(value) - set(allowed):
        return False
    for k, options in allowed.items():
        if k not in value:
            if "" not in options:
                return False
        elif not any(_same(value[k], o) for o in options if o != ""):
            return False
    return True


def _type_ok(value: Any, schema: dict) -> tuple[Any, str | None]:
    """(value after int->float coercion, error or None)."""
    kind = schema.get("type", "any")
    if kind == "any" or kind not in _PY_TYPES:
        return value, None
    if kind == "float" and type(value) is int:
        value = float(value)  # BFCL allows Python's int -> float
    if type(value) is not _PY_TYPES[kind]:
        return value, f"expected {kind}, got {type(value).__name__}"
    if kind in ("array", "tuple") and isinstance(schema.get("items"), dict):
        fixed = []
        for v in value:
            v, err = _type_ok(v, schema["items"])
            if err:
                return value, f"item: {err}"
            fixed.append(v)
        value = fixed
    return value, None


def _expected_schema(schema: dict, allowed: list) -> dict:
    """BFCL's variable rule: when the possible answers have another type than the doc says (e.g. the string
    "data['sales']" for an array), the answer names a variable and its own type is the one expected."""
    given = next((v for v in allowed if v != ""), None)
    kind = schema.get("type")
    if given is None or kind not in _PY_TYPES:
        return schema
    doc_type = _PY_TYPES[kind]
    if type(given) is doc_type or (doc_type is float and type(given) is int):
        return schema
    return {"type": next(k for k, t in _PY_TYPES.items() if t is type(given))}


def match_call(call: ToolCall, doc: dict, answer: dict, *, allow_underscore: bool = False) -> str | None:
    """None if `call` matches the possible answer {func_name: {param: [allowed values]}} under function doc `doc`;
    otherwise the reason, "kind: detail"."""
    (want, allowed), = answer.items()
    names = {want, want.replace(".", "_")} if allow_underscore else {want}
    if call.name not in names:
        return f"wrong_function: {call.name!r}, expected {want!r}"
    props, required = doc["parameters"].get("properties", {}), doc["parameters"].get("required", [])
    missing = [p for p in required if p not in call.arguments]
    if missing:
        return f"missing_required: {want} needs {', '.join(missing)}"
    for p, value in call.arguments.items():
        if p not in props or p not in allowed:
            return f"unexpected_param: {want} got {p!r}"
        value, err = _type_ok(value, _expected_schema(props[p], allowed[p]))
        if err:
            return f"type: {want}.{p} {err}"
        if not any(_same(value, o) for o in allowed[p] if o != "" or value == ""):
            return f"value: {want}.{p}={value!r} not among {allowed[p]!r}"
    for p, options in allowed.items():
        if p not in call.arguments and "" not in options:
            return f"missing_optional: {want}.{p} has no default"
    return None


def match_entry(entry: dict, response: str | Sequence, *, allow_underscore: bool = False) -> str | None:
    """None if the response's calls match the entry's ground truth (any order for several calls), else why not."""
    try:
        calls = as_calls(response)
    except CallParseError as e:
        return f"unparseable: {e}"
    answers, docs = entry["ground_truth"], {f["name"]: f for f in entry["function"]}
    if len(calls) != len(answers):
        return f"count: expected {len(answers)} call(s), got {len(calls)}"
    for c in calls:
        if c.name not in docs and not (allow_underscore and any(c.name == d.replace(".", "_") for d in docs)):
            return f"unknown_function: {c.name!r}"
    fits = [[match_call(c, docs[next(iter(a))], a, allow_underscore=allow_underscore) is None for c in calls]
            for a in answers]
    if _perfect_matching(fits):
        return None
    if len(answers) == 1:
        return match_call(calls[0], docs[next(iter(answers[0]))], answers[0], allow_underscore=allow_underscore)
    for a, row in zip(answers, fits):
        if not any(row):  # say why the calls to the same function miss this answer
            want = next(iter(a))
            why = [r for c in calls if (r := match_call(c, docs[want], a, allow_underscore=allow_underscore))
                   and not r.startswith("wrong_function")]
            return f"unmatched: no call fits the answer for {want}" + (f" ({why[0]})" if why else "")
    return "unmatched: the calls cannot be paired one-to-one with the answers"


def _perfect_matching(fits: list[list[bool]]) -> bool:
    """Each answer (row) gets a distinct call (column): augmenting paths, fine for a handful of calls."""
    owner: dict[int, int] = {}

    def place(a: int, seen: set) -> bool:
        for c, ok in enumerate(fits[a]):
            if ok and c not in seen:
                seen.add(c)
                if c not in owner or place(owner[c], seen):
                    owner[c] = a
                    return True
        return False
    return all(place(a, set()) for a in range(len(fits)))


def score_bfcl(category: str, responses: Sequence | dict, *, root: str | pathlib.Path | None = None,
               allow_underscore: bool = False) -> dict:
    """AST accuracy over one category. `responses`: one per entry in file order, or {entry id: response}; a
    missing response counts as wrong."""
    entries = load_bfcl(category, root)
    if not isinstance(responses, dict):
        if len(responses) != len(entries):
            raise ValueError(f"{category}: got {len(responses)} responses for {len(entries)} entries")
        responses = {e["id"]: r for e, r in zip(entries, responses)}
    errors: dict[str, int] = {}
    failures = {}
    for e in entries:
        reason = (match_entry(e, responses[e["id"]], allow_underscore=allow_underscore) if e["id"] in responses
                  else "no_response: none given")
        if reason is not None:
            kind = reason.split(":")[0]  # every reason starts with its error kind
            errors[kind] = errors.get(kind, 0) + 1
            failures[e["id"]] = reason
    n = len(entries)
    return {"category": category, "n": n, "correct": n - len(failures), "accuracy": (n - len(failures)) / max(n, 1),
            "errors": dict(sorted(errors.items())), "failures": failures}
