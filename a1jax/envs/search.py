"""Long-horizon search: multi-hop questions over a generated knowledge base of fictional entities.

The world (one per seed) holds people, organisations and cities with fictional names; every entity has one document
stating its relations ("The mentor of Alda Vorren is Kesh Marlo."). A task follows a chain of `horizon` relations
from a named start entity; the answer is the entity at the end of the chain. By default `tasks(split, seed)` draws
from world `seed`; the option `world=W` fixes the world, so that every seed draws other chains of the same world
(WORLD_NOTE).

Tools: `search(query)` ranks documents with BM25 (a1jax/envs/bm25.py) and shows the top 5 with their best-matching
sentence as snippet; `open(doc_id)` returns a whole document. The expert issues one search per hop
("<current entity> <relation>"), reads the relation sentence in the snippet of the entity's own document, and moves
on: horizon = hops = dependent tool calls. Verification: normalised exact match (case, whitespace and punctuation
folded) of the final answer (the text after the last "Answer:" line, else the whole final message).

WORLD_NOTE: a training loop that draws new tasks each step by seed (stage 3, expert iteration, GRPO) met a new world
with new names at every step, while the demonstrations, the teacher check and the report all use world 0: the tiny
recipe's search teacher, greedy, solved 0.875 of 16 world-0 train tasks but 0.29 of 24 stage-3 tasks (new worlds;
2026-12-07), so stage 3 distilled search on tasks its teacher mostly failed. The tiny recipe fixes `world=0`.

Real search plugs in as `backend=`: anything with `search(query) -> list[{"doc_id", "title", "snippet"}]` and
`open(doc_id) -> str` (e.g. `HttpSearchBackend(url)`); the generated tasks then still come from the offline world,
so a custom backend is for external question sets (evaluate.py's Agents-A1 web-search sets).
"""
from __future__ import annotations

import functools
import json
import random
import re
import urllib.parse
import urllib.request
from typing import Iterator, Protocol

from a1jax.envs import tools as T
from a1jax.envs.base import Task, Verdict, final_answer
from a1jax.envs.bm25 import BM25, tokenize
from a1jax.envs.registry import register

MAX_HORIZON = 100
HORIZON_MIX = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 50)
TOP_K = 5
# type -> its relations (name, target type); the relation words are distinct within a type so snippets are unique.
RELATIONS = {
    "person": (("mentor", "person"), ("employer", "org"), ("birthplace", "city"), ("rival", "person")),
    "org": (("founder", "person"), ("headquarters", "city"), ("parent company", "org"), ("chief scientist", "person")),
    "city": (("mayor", "person"), ("twin city", "city"), ("largest employer", "org")),
}
COUNTS = {"person": 240, "org": 80, "city": 80}
_SYLLABLES = ("al ar ba bel cor da del dor el en fa fen gal hal is ka kel kor la lin lor ma mar mel na nor or "
              "pa pel quin ra rel ros sa sel tor tha ul va vel vor wen xan ya zel zor").split()
_ORG_SUFFIX = ("Dynamics", "Institute", "Works", "Holdings", "Laboratories", "Foundry", "Collective", "Systems")
SYSTEM = ("You are a research agent. Answer the question by searching the knowledge base with the tools; do not "
          "guess. When you know the answer, reply with one line: 'Answer: NAME'.")


class SearchBackend(Protocol):
    def search(self, query: str) -> list[dict]: ...  # [{"doc_id", "title", "snippet"}], best first

    def open(self, doc_id: str) -> str: ...  # raises KeyError or ToolError for an unknown id


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


@functools.lru_cache(maxsize=8)
def world(seed: int) -> dict:
    """The knowledge base of `seed`: {"entities": [{id, type, name, relations: {rel: entity index}}], "docs"}."""
    rng = T.rng_for("search-world", seed)
    used, entities = set(), []
    for kind, count in COUNTS.items():
        for _ in range(count):
            while True:
                if kind == "person":
                    name = f"{_word(rng, 2)} {_word(rng, rng.choice((2, 3)))}"
                elif kind == "org":
                    name = f"{_word(rng, 2)} {rng.choice(_ORG_SUFFIX)}"
                else:
                    name = _word(rng, 3)
                if name not in used:
                    break
            used.add(name)
            entities.append({"id": f"E{len(entities):04d}", "type": kind, "name": name})
    by_type = {k: [i for i, e in enumerate(entities) if e["type"] == k] for k in COUNTS}
    for i, e in enumerate(entities):
        e["relations"] = {}
        for rel, target in RELATIONS[e["type"]]:
            e["relations"][rel] = rng.choice([j for j in by_type[target] if j != i])
        e["year"] = rng.randrange(1850, 2020)
    docs = [_document(e, entities) for e in entities]
    return {"entities": entities, "docs": docs, "by_name": {e["name"]: i for i, e in enumerate(entities)}}


def _document(e: dict, entities: list) -> str:
    kind = {"person": "a person", "org": "an organisation", "city": "a city"}[e["type"]]
    year = {"person": "was born in", "org": "was founded in", "city": "was first recorded in"}[e["type"]]
    lines = [f"{e['name']} is {kind}.", f"{e['name']} {year} {e['year']}."]
    lines += [f"The {rel} of {e['name']} is {entities[j]['name']}." for rel, j in e["relations"].items()]
    return " ".join(lines)


_SENTENCE = re.compile(r"(?<=\.)\s+")


def snippet(doc: str, query: str) -> str:
    """The document's sentence sharing the most distinct terms with the query (the first on ties)."""
    q = set(tokenize(query))
    sentences = _SENTENCE.split(doc)
    return max(sentences, key=lambda s: (len(q & set(tokenize(s))), -sentences.index(s)))


class OfflineBackend:
    """BM25 over one generated world."""

    def __init__(self, seed: int):
        self.world = world(seed)
        self.index = BM25(self.world["docs"])
        self.ids = {e["id"]: i for i, e in enumerate(self.world["entities"])}

    def search(self, query: str) -> list[dict]:
        ents, docs = self.world["entities"], self.world["docs"]
        return [{"doc_id": ents[i]["id"], "title": ents[i]["name"], "snippet": snippet(docs[i], query)}
                for i, _ in self.index.top(query, TOP_K)]

    def open(self, doc_id: str) -> str:
        if doc_id not in self.ids:
            raise T.ToolError(f"no document {doc_id!r}; ids look like 'E0042' (from search results)")
        i = self.ids[doc_id]
        return f"{self.world['entities'][i]['name']}\n\n{self.world['docs'][i]}"


class HttpSearchBackend:
    """A search service over HTTP: GET {url}/search?q=QUERY -> JSON list of hits; GET {url}/open?id=ID -> text.
    (Not exercised by the offline tests beyond construction.)"""

    def __init__(self, url: str, *, timeout_s: float = 30.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _get(self, path: str, **params) -> str:
        try:
            with urllib.request.urlopen(f"{self.url}/{path}?{urllib.parse.urlencode(params)}",
                                        timeout=self.timeout_s) as r:
                return r.read().decode("utf-8", errors="replace")
        except OSError as e:
            raise T.ToolError(f"search service error: {e}") from None

    def search(self, query: str) -> list[dict]:
        return json.loads(self._get("search", q=query))

    def open(self, doc_id: str) -> str:
        return self._get("open", id=doc_id)


def format_hits(hits: list[dict]) -> str:
    if not hits:
        return "No results."
    return "\n".join(f"{k}. [{h['doc_id']}] {h['title']}\n   {h['snippet']}" for k, h in enumerate(hits, 1))


class SearchEnv(T.ToolEnv):
    name = "search"

    def __init__(self, backend: SearchBackend | None = None, world: int | str | None = None):
        self.backend = backend
        if world is not None:  # an int, or its text from `a1jax envs demos --option world=W`
            try:
                world = int(world)
            except (TypeError, ValueError):
                raise ValueError(f"search option world={world!r}: expected an integer (the seed of the knowledge "
                                 f"base every task is drawn from)") from None
        self.world_seed = world

    def world_of(self, seed: int) -> int:
        """The seed of the world that tasks(split, seed) draw from."""
        return seed if self.world_seed is None else self.world_seed

    def tools_for(self, task: Task | None) -> dict[str, T.Tool]:
        """The tools of `task` (None: only their schemas are needed); the backend is resolved at call time."""
        def backend() -> SearchBackend:
            return self.backend or _offline(task.metadata.get("world_seed", 0))

        def search(query: str) -> str:
            if not query.strip():
                raise T.ToolError("empty query")
            return format_hits(backend().search(query))

        def open_(doc_id: str) -> str:
            try:
                return backend().open(doc_id.strip())
            except KeyError:
                raise T.ToolError(f"no document {doc_id!r}") from None

        return {"search": T.Tool("search", "Search the knowledge base; returns the top documents with a snippet.",
                                 {"query": ("string", "keywords")}, search),
                "open": T.Tool("open", "Read a whole document by its id (e.g. 'E0042').",
                               {"doc_id": ("string", "a document id from the search results")}, open_)}

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        T.check_request(self.name, split, n, horizon, MAX_HORIZON)
        w_seed = self.world_of(seed)
        w = world(w_seed)
        sw = f"s{seed}" if w_seed == seed else f"s{seed}w{w_seed}"
        schemas = [t.schema() for t in self.tools_for(None).values()]
        for i in range(n):
            rng = T.rng_for(self.name, split, seed, horizon, i)
            h = T.horizons_for(horizon, rng, HORIZON_MIX)
            start, rels, answer = T.sample_in_split(lambda r: _chain(w, r, h), split, rng)
            lines = [f"e0 = {w['entities'][start]['name']}"] + [f"e{k} = the {rel} of e{k - 1}"
                                                                for k, rel in enumerate(rels, 1)]
            query = ("Follow this chain of relations in the knowledge base:\n" + "\n".join(lines)
                     + f"\nWhat is the name of e{h}?")
            tag = "mix" if horizon is None else f"h{h}"
            yield Task(id=f"{self.name}/{split}/{sw}/{tag}/{i}", domain=self.name,
                       messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}],
                       tools=schemas, horizon=h, answer=w["entities"][answer]["name"],
                       metadata={"world_seed": w_seed, "hops": h})

    def verify(self, task: Task, trajectory: dict) -> Verdict:
        got = T.answer_text(final_answer(trajectory))
        if not got.strip():
            return Verdict(0.0, False, "no final answer")
        if T.normalize(got) == T.normalize(str(task.answer)):
            return Verdict(1.0, True, f"correct: {task.answer}")
        return Verdict(0.0, False, f"expected {task.answer!r}, got {got[:200]!r}")

    def solve(self, task: Task) -> dict:
        names = [ln.split("=", 1)[1].strip() for ln in task.messages[-1]["content"].splitlines() if " = " in ln]
        current = names[0]
        rels = [x.removeprefix("the ").rsplit(" of e", 1)[0] for x in names[1:]]
        tr = T.Transcript(self, task)
        # The query repeats the thought's "the REL of NAME": the name's tokens are then the same as in the question and
        # the results (' Gal', 'vor'), where "NAME REL" would start it with another token ('Gal').
        for rel in rels:
            result = tr.call("search", f"I need the {rel} of {current}.", query=f"the {rel} of {current}")
            current = _read_relation(result, current, rel)
        return tr.answer(f"Answer: {current}", f"The chain ends at {current}.")


def _chain(w: dict, rng: random.Random, h: int) -> tuple[str, tuple]:
    ents = w["entities"]
    start = rng.randrange(len(ents))
    cur, rels = start, []
    for _ in range(h):
        rel = rng.choice(sorted(ents[cur]["relations"]))
        rels.append(rel)
        cur = ents[cur]["relations"][rel]
    return f"{ents[start]['id']}|{'|'.join(rels)}", (start, rels, cur)


def _read_relation(result: str, entity: str, rel: str) -> str:
    """The expert's reading of a search result: the target named in "The REL of ENTITY is TARGET."."""
    m = re.search(rf"The {re.escape(rel)} of {re.escape(entity)} is (.+?)\.(?:\s|$)", result)
    if not m:
        raise RuntimeError(f"expert: the search results do not state the {rel} of {entity}:\n{result}")
    return m.group(1)


@functools.lru_cache(maxsize=8)
def _offline(seed: int) -> OfflineBackend:
    return OfflineBackend(seed)


@register("search")
def make(backend: SearchBackend | None = None, world: int | str | None = None) -> SearchEnv:
    return SearchEnv(backend, world)
