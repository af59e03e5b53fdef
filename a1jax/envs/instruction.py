"""Domain "instruction_following": write a short piece on a topic under 1..N verifiable constraints (IFEval style),
plus loaders and a scorer for the shipped IFEval and IFBench prompts.

No tools. The horizon is the number of constraints in the prompt. A task's hidden answer has the IFEval row shape,
{"instruction_id_list": [...], "kwargs": [...]}, so generated tasks and the shipped eval prompts verify the same way:
reward = fraction of instructions followed (strict), success = all followed. Ids with no checker in ifcheck.py count
as not followed and are named in the verdict.

The expert writes from a plan (title, repeated request, paragraphs/sections, content sentences, bullets, postscript,
end phrase, then case and wrapping). Constraint types that cannot share a response (CONFLICTS) are never drawn
together; a draw the expert still fails is redrawn (`rejected` in the task metadata counts those, expected ~0).
The expert's vocabulary avoids the letters q, x, z and j, which letter-frequency constraints use, and the keyword
pools share no word with it.
"""
from __future__ import annotations

import json
import pathlib
import random
from typing import Iterator, Sequence

from a1jax.envs import ifcheck
from a1jax.envs.base import StepResult, Task, Verdict, final_answer
from a1jax.envs.registry import register
from a1jax.envs.tools import check_request, rng_for, split_of

NAME = "instruction_following"
MAX_HORIZON = 8

TOPICS = ["city gardens", "the history of tea", "learning to swim", "solar power", "the moon landing", "old maps",
          "bicycle repair", "ocean tides", "public libraries", "bread baking", "mountain hiking", "rainy weekends",
          "folk music", "train travel", "winter birds", "home cooking"]
_SUBJECTS = ["the plan", "a good habit", "the team", "every reader", "a small step", "the main idea", "a calm mind",
             "the local group", "a careful guide", "the whole town", "each season", "a fresh start", "the open road",
             "a patient teacher", "the new tool", "a kind neighbor"]
_VERBS = ["helps", "shapes", "supports", "changes", "guides", "improves", "reveals", "follows", "builds", "connects"]
_OBJECTS = ["daily life", "the work ahead", "our shared goals", "the best results", "a steady pace", "many choices",
            "the final outcome", "good decisions", "useful lessons", "long term growth", "a better routine",
            "the learning process", "future plans", "simple pleasures"]
KEYWORDS = ["lantern", "harbor", "compass", "meadow", "violin", "pepper", "window", "river", "candle", "orbit",
            "cedar", "marble"]
FORBIDDEN = ["banana", "rocket", "tiger", "velvet", "cactus", "pirate", "mirror", "summit"]
FREQUENT = ["signal", "anchor", "ribbon", "thunder", "pebble", "feather"]
RARE_LETTERS = "qxzj"
CAPS = ["NOTE", "KEY", "IDEA", "TEAM", "GOAL", "PLAN", "CORE", "MAIN", "RULE", "FOCUS"]
PLACEHOLDERS = ["[name]", "[place]", "[date]", "[address]", "[company]", "[title]"]
HIGHLIGHTS = ["first point", "second point", "third point", "fourth point", "fifth point"]
PALINDROMES = ["level", "radar", "civic", "rotor", "kayak", "refer", "madam", "stats", "tenet", "racecar"]
END_PHRASES = ["Let me know what you think.", "That is all for now.", "Thank you for reading.", "Have a good day."]
FIRST_WORDS = ["today", "however", "meanwhile", "finally", "overall", "besides"]
SPLITTERS = ["SECTION", "Section", "PART"]

# id -> prompt text from kwargs (our wording of the IFEval/IFBench descriptions)
_TEXT = {
    "keywords:existence": lambda k: f"Include the keywords {', '.join(k['keywords'])} in the response.",
    "keywords:forbidden_words": lambda k: f"Do not include the words {', '.join(k['forbidden_words'])}.",
    "keywords:frequency": lambda k: f"The word {k['keyword']} should appear {k['relation']} {k['frequency']} times.",
    "keywords:letter_frequency": lambda k: f"The letter {k['letter']} should appear {k['let_relation']} "
                                           f"{k['let_frequency']} times.",
    "language:response_language": lambda k: "Your entire response should be in English, no other language.",
    "length_constraints:number_sentences": lambda k: f"Answer with {k['relation']} {k['num_sentences']} sentences.",
    "length_constraints:number_paragraphs": lambda k: f"There should be {k['num_paragraphs']} paragraphs, separated "
                                                      f"by the markdown divider: ***",
    "length_constraints:number_words": lambda k: f"Answer with {k['relation']} {k['num_words']} words.",
    "length_constraints:nth_paragraph_first_word": lambda k: (
        f"There should be {k['num_paragraphs']} paragraphs, separated by two new lines. Paragraph "
        f"{k['nth_paragraph']} must start with the word {k['first_word']}."),
    "detectable_content:number_placeholders": lambda k: f"Include at least {k['num_placeholders']} placeholders in "
                                                        f"square brackets, such as [address].",
    "detectable_content:postscript": lambda k: f"At the end of your response add a postscript starting with "
                                               f"{k['postscript_marker']}",
    "detectable_format:constrained_response": lambda k: "Answer with one of: My answer is yes., My answer is no., "
                                                        "My answer is maybe.",
    "detectable_format:json_format": lambda k: "Wrap your entire output in JSON format.",
    "detectable_format:multiple_sections": lambda k: f"Your response must have {k['num_sections']} sections; mark "
                                                     f"the beginning of each with {k['section_spliter']} X.",
    "detectable_format:number_bullet_lists": lambda k: f"Your answer must contain exactly {k['num_bullets']} "
                                                       f"bullet points in markdown, such as: * This is a point.",
    "detectable_format:number_highlighted_sections": lambda k: f"Highlight at least {k['num_highlights']} sections "
                                                               f"with markdown, i.e. *highlighted section*.",
    "detectable_format:title": lambda k: "Your answer must contain a title wrapped in double angular brackets, "
                                         "such as <<poem of joy>>.",
    "change_case:capital_word_frequency": lambda k: f"Words in all capital letters should appear "
                                                    f"{k['capital_relation']} {k['capital_frequency']} times.",
    "change_case:english_capital": lambda k: "Your entire response should be in English and in all capital letters.",
    "change_case:english_lowercase": lambda k: "Your entire response should be in English and in all lowercase "
                                               "letters. No capital letters are allowed.",
    "combination:repeat_prompt": lambda k: "First repeat the request word for word without change, then give your "
                                           "answer (the request to repeat does not include this sentence).",
    "combination:two_responses": lambda k: "Give two different responses, separated by 6 asterisk symbols: ******.",
    "punctuation:no_comma": lambda k: "Do not use any commas in your response.",
    "startend:end_checker": lambda k: f"Finish your response with this exact phrase: {k['end_phrase']}",
    "startend:quotation": lambda k: "Wrap your entire response with double quotation marks.",
    "count:word_count_range": lambda k: f"The response must contain between {k['min_words']} and {k['max_words']} "
                                        f"words.",
    "count:unique_word_count": lambda k: f"Use at least {k['N']} unique words in the response.",
    "count:numbers": lambda k: f"Include exactly {k['N']} numbers in the response.",
    "count:keywords_multiple": lambda k: (
        f"Include keyword {k['keyword1']} once, keyword {k['keyword2']} twice, keyword {k['keyword3']} three times, "
        f"keyword {k['keyword4']} five times, and keyword {k['keyword5']} seven times in your response."),
    "words:palindrome": lambda k: "Include at least 10 single-word palindromes, each at least 5 characters long.",
    "format:parentheses": lambda k: "Nest parentheses (and [brackets {and braces}]) at least 5 levels deep.",
}
TYPES = tuple(_TEXT)

_LAYOUT = {"length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
           "detectable_format:multiple_sections", "combination:two_responses", "detectable_format:json_format"}
_CASE = {"change_case:english_capital", "change_case:english_lowercase"}
_WORD_COUNTS = {"length_constraints:number_words", "count:word_count_range"}
CONFLICTS = {tuple(sorted(p)) for p in [
    *[(a, b) for a in _LAYOUT for b in _LAYOUT if a < b], *[(a, b) for a in _CASE for b in _CASE if a < b],
    *[(a, b) for a in _WORD_COUNTS for b in _WORD_COUNTS if a < b],
    *[("detectable_format:json_format", b) for b in ("detectable_content:postscript", "startend:quotation",
                                                     "combination:repeat_prompt", "startend:end_checker",
                                                     "detectable_format:number_bullet_lists")],
    *[("startend:quotation", b) for b in ("combination:repeat_prompt", "startend:end_checker")],
    *[("change_case:capital_word_frequency", b) for b in _CASE],
    *[("detectable_format:constrained_response", b) for b in _CASE],
    ("detectable_format:multiple_sections", "change_case:english_lowercase"),
    ("detectable_format:multiple_sections", "change_case:english_capital"),
    ("detectable_format:multiple_sections", "count:numbers"),
    ("count:keywords_multiple", "length_constraints:number_words"),  # 18 keyword uses swamp "less than" budgets
]}


def _conflicts(a: str, b: str) -> bool:
    return tuple(sorted((a, b))) in CONFLICTS


def _draw_kwargs(iid: str, rng: random.Random) -> dict:
    pick = rng.choice
    if iid == "keywords:existence":
        return {"keywords": rng.sample(KEYWORDS[:6], rng.randint(1, 3))}
    if iid == "keywords:forbidden_words":
        return {"forbidden_words": rng.sample(FORBIDDEN, rng.randint(1, 3))}
    if iid == "keywords:frequency":
        return {"keyword": pick(FREQUENT), "relation": pick(["at least", "less than"]), "frequency": rng.randint(1, 4)}
    if iid == "keywords:letter_frequency":
        return {"letter": pick(RARE_LETTERS), "let_relation": pick(["at least", "less than"]),
                "let_frequency": rng.randint(1, 6)}
    if iid == "language:response_language":
        return {"language": "en"}
    if iid == "length_constraints:number_sentences":
        at_least = rng.random() < 0.5
        return {"relation": "at least" if at_least else "less than",
                "num_sentences": rng.randint(3, 12) if at_least else rng.randint(30, 40)}
    if iid == "length_constraints:number_paragraphs":
        return {"num_paragraphs": rng.randint(2, 4)}
    if iid == "length_constraints:number_words":
        at_least = rng.random() < 0.5
        return {"relation": "at least" if at_least else "less than",
                "num_words": rng.randint(30, 120) if at_least else rng.randint(300, 400)}
    if iid == "length_constraints:nth_paragraph_first_word":
        n = rng.randint(2, 4)
        return {"num_paragraphs": n, "nth_paragraph": rng.randint(2, n), "first_word": pick(FIRST_WORDS)}
    if iid == "detectable_content:number_placeholders":
        return {"num_placeholders": rng.randint(1, 4)}
    if iid == "detectable_content:postscript":
        return {"postscript_marker": pick(["P.S.", "P.P.S"])}
    if iid == "detectable_format:multiple_sections":
        return {"section_spliter": pick(SPLITTERS), "num_sections": rng.randint(2, 4)}
    if iid == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.randint(1, 5)}
    if iid == "detectable_format:number_highlighted_sections":
        return {"num_highlights": rng.randint(1, 4)}
    if iid == "change_case:capital_word_frequency":
        at_least = rng.random() < 0.5
        return {"capital_relation": "at least" if at_least else "less than",
                "capital_frequency": rng.randint(1, 6) if at_least else rng.randint(8, 14)}
    if iid == "startend:end_checker":
        return {"end_phrase": pick(END_PHRASES)}
    if iid == "count:word_count_range":
        lo = rng.randint(90, 140)
        return {"min_words": lo, "max_words": lo + 40}
    if iid == "count:unique_word_count":
        return {"N": rng.randint(15, 45)}
    if iid == "count:numbers":
        return {"N": rng.randint(1, 4)}
    if iid == "count:keywords_multiple":
        return {f"keyword{i + 1}": k for i, k in enumerate(rng.sample(KEYWORDS[6:], 5))}
    return {}  # combination:repeat_prompt gets its kwargs from the request in `_draw`


def _filler(i: int) -> str:
    """The i-th filler sentence: deterministic, comma-free, no digits, no q/x/z/j, no all-caps words."""
    s = f"{_SUBJECTS[i % len(_SUBJECTS)]} {_VERBS[i % len(_VERBS)]} {_OBJECTS[(i // 3) % len(_OBJECTS)]}."
    return s[0].upper() + s[1:]


def write_response(constraints: Sequence[tuple[str, dict]], topic: str) -> str:
    """The expert: one response meant to follow every (id, kwargs) in `constraints` about `topic`."""
    c = dict(constraints)
    content = [f"This piece is about {topic}."]
    if "keywords:existence" in c:
        content.append(f"It touches on {' and '.join(c['keywords:existence']['keywords'])}.")
    k = c.get("keywords:frequency")
    if k and k["relation"] == "at least":
        content.append(f"Think of {' and '.join([k['keyword']] * k['frequency'])}.")
    k = c.get("keywords:letter_frequency")
    if k and k["let_relation"] == "at least":
        content.append(f"The letter {k['letter']} shows up here: {' '.join(k['letter'] * k['let_frequency'])}.")
    if "detectable_content:number_placeholders" in c:
        n = c["detectable_content:number_placeholders"]["num_placeholders"]
        content.append(f"Fill in {' and '.join(PLACEHOLDERS[:n])} later.")
    if "detectable_format:number_highlighted_sections" in c:
        n = c["detectable_format:number_highlighted_sections"]["num_highlights"]
        content.append(f"Note the {' and the '.join(f'*{h}*' for h in HIGHLIGHTS[:n])}.")
    k = c.get("change_case:capital_word_frequency")
    if k and k["capital_relation"] == "at least":
        content.append(f"Remember the {' '.join(CAPS[:k['capital_frequency']])} list.")
    if "count:numbers" in c:
        content.append(f"Key figures are {' and '.join(str(12 + 7 * i) for i in range(c['count:numbers']['N']))}.")
    if "words:palindrome" in c:
        content.append(f"Some palindromes are {' '.join(PALINDROMES)}.")
    if "format:parentheses" in c:
        content.append("See the note (a [b {c (d [e])}]).")
    if "detectable_format:constrained_response" in c:
        content.append("My answer is yes.")
    if "count:keywords_multiple" in c:
        k = c["count:keywords_multiple"]
        content += [f"Say {' and '.join([k[f'keyword{i}']] * n)}." for i, n in ((1, 1), (2, 2), (3, 3), (4, 5), (5, 7))]

    n_par, sep = 1, "\n\n"
    for iid, key, s in (("length_constraints:number_paragraphs", "num_paragraphs", "\n***\n"),
                        ("length_constraints:nth_paragraph_first_word", "num_paragraphs", "\n\n"),
                        ("detectable_format:multiple_sections", "num_sections", "\n\n")):
        if iid in c:
            n_par, sep = c[iid][key], s
    paragraphs = [[_filler(i)] for i in range(n_par)]
    paragraphs[0] = content + paragraphs[0]
    nth = c.get("length_constraints:nth_paragraph_first_word")
    padding = [iid for iid in ("length_constraints:number_words", "length_constraints:number_sentences",
                               "count:unique_word_count", "count:word_count_range") if iid in c]

    def render() -> str:
        blocks = []
        for i, sentences in enumerate(paragraphs):
            lines = [" ".join(sentences)]
            if nth and i == nth["nth_paragraph"] - 1:
                lines[0] = nth["first_word"].capitalize() + " " + lines[0][0].lower() + lines[0][1:]
            if "detectable_format:multiple_sections" in c:
                lines.insert(0, f"{c['detectable_format:multiple_sections']['section_spliter']} {i + 1}")
            blocks.append(lines)
        if "detectable_format:title" in c:
            blocks[0].insert(0, f"<<{topic.title()}>>")
        if "combination:repeat_prompt" in c:
            blocks[0].insert(0, c["combination:repeat_prompt"]["prompt_to_repeat"])
        if "detectable_format:number_bullet_lists" in c:
            n = c["detectable_format:number_bullet_lists"]["num_bullets"]
            blocks[-1] += [f"* {_filler(40 + i)}" for i in range(n)]
        if "detectable_content:postscript" in c:
            blocks[-1].append(f"{c['detectable_content:postscript']['postscript_marker']} {_filler(60)}")
        if "startend:end_checker" in c and "combination:two_responses" not in c:
            blocks[-1].append(c["startend:end_checker"]["end_phrase"])
        text = sep.join("\n".join(lines) for lines in blocks)
        if "combination:two_responses" in c:
            tail = _filler(70) + ("\n" + c["startend:end_checker"]["end_phrase"] if "startend:end_checker" in c else "")
            text = f"{text}\n******\n{tail}"
        if "startend:quotation" in c:
            text = f'"{text}"'
        if "detectable_format:json_format" in c:
            text = json.dumps({"response": " ".join(text.split())})
        if "change_case:english_lowercase" in c:
            text = text.lower()
        if "change_case:english_capital" in c:
            text = text.upper()
        return text

    text = render()
    for i in range(200):  # pad the last paragraph until the "at least" length constraints hold
        if all(ifcheck.follows(iid, text, c[iid]) for iid in padding):
            break
        paragraphs[-1].append(_filler(100 + i))
        text = render()
    return text


def _request(topic: str) -> str:
    return f"Write a short piece about {topic}."


def _draw(rng: random.Random, horizon: int) -> tuple[str, list[tuple[str, dict]]]:
    topic = rng.choice(TOPICS)
    chosen: list[str] = []
    for iid in rng.sample(TYPES, len(TYPES)):
        if len(chosen) == horizon:
            break
        if not any(_conflicts(iid, other) for other in chosen):
            chosen.append(iid)
    if len(chosen) < horizon:
        raise ValueError(f"horizon={horizon} is more than the compatible constraint types allow")
    constraints = []
    for iid in chosen:
        kwargs = _draw_kwargs(iid, rng)
        if iid == "combination:repeat_prompt":
            kwargs = {"prompt_to_repeat": _request(topic)}
        constraints.append((iid, kwargs))
    return topic, constraints


def check_all(response: str, ids: Sequence[str], kwargs: Sequence[dict], *, loose: bool = False) -> list[bool | None]:
    """Per instruction: followed (True/False), or None when the id has no checker."""
    out = []
    for iid, kw in zip(ids, kwargs):
        if not ifcheck.is_supported(iid):
            out.append(None)
        else:
            out.append((ifcheck.follows_loose if loose else ifcheck.follows)(iid, response, kw))
    return out


class InstructionFollowing:
    name = NAME

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        check_request(NAME, split, n, horizon, MAX_HORIZON)
        rng = rng_for(NAME, split, seed, horizon)
        for i in range(n):
            rejected = 0
            while True:
                h = horizon if horizon is not None else rng.randint(1, 5)
                topic, constraints = _draw(rng, h)
                key = json.dumps([topic, constraints], sort_keys=True)
                if split_of(key) != split:
                    continue
                if all(check_all(write_response(constraints, topic), *zip(*constraints))):
                    break
                rejected += 1
                if rejected > 100:
                    raise RuntimeError(f"{NAME}: the expert failed 100 draws in a row at horizon {h}")
            prompt = " ".join([_request(topic)] + [_TEXT[iid](kw) for iid, kw in constraints])
            tag = "mix" if horizon is None else f"h{horizon}"  # ids unique within (domain, split, seed)
            yield Task(id=f"{NAME}/{split}/s{seed}/{tag}/{i}", domain=NAME,
                       messages=[{"role": "user", "content": prompt}], tools=[], horizon=len(constraints),
                       answer={"instruction_id_list": [iid for iid, _ in constraints],
                               "kwargs": [kw for _, kw in constraints]},
                       metadata={"topic": topic, "rejected": rejected})

    def reset(self, task: Task) -> None:
        return None

    def step(self, state, tool_calls) -> StepResult:
        return StepResult(results=["Error: this task has no tools; answer directly."] * len(tool_calls),
                          state=state, done=True)

    def verify(self, task: Task, trajectory: dict) -> Verdict:
        ids, kwargs = task.answer["instruction_id_list"], task.answer["kwargs"]
        ok = check_all(final_answer(trajectory), ids, kwargs)
        failed = [iid for iid, v in zip(ids, ok) if v is False]
        unsupported = [iid for iid, v in zip(ids, ok) if v is None]
        reward = sum(v is True for v in ok) / max(len(ok), 1)
        reason = (f"followed {sum(v is True for v in ok)}/{len(ok)}"
                  + (f"; broke {', '.join(failed)}" if failed else "")
                  + (f"; unsupported {', '.join(unsupported)}" if unsupported else ""))
        return Verdict(reward=reward, success=reward == 1.0, reason=reason)

    def solve(self, task: Task) -> dict:
        if "topic" not in task.metadata:
            raise ValueError(f"{task.id}: the expert only solves generated tasks (no topic in metadata)")
        constraints = list(zip(task.answer["instruction_id_list"], task.answer["kwargs"]))
        record = task.prompt_record()
        record["metadata"]["expert"] = True
        record["messages"].append({"role": "assistant", "content": write_response(constraints, task.metadata["topic"])})
        return record


@register(NAME)
def make() -> InstructionFollowing:
    return InstructionFollowing()


# ------------------------------------------------------------------------------------------------ eval sets
EVAL_ROOT = pathlib.Path(__file__).resolve().parents[1] / "assets" / "eval"  # shipped copies (PROVENANCE.md)
IFEVAL_FILE = "ifeval/en_input_data.jsonl"
IFBENCH_FILE = "ifbench/IFBench_test.jsonl"


def _load(path: str | pathlib.Path | None, default: str, name: str) -> list[Task]:
    path = pathlib.Path(path) if path is not None else EVAL_ROOT / default
    if not path.exists():
        raise FileNotFoundError(f"{name} prompts not found at {path}; pass path= (the {default} file of the shared "
                                f"data checkout) to {name.lower()}_tasks()")
    tasks = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ids, kwargs, prompt, key = row["instruction_id_list"], row["kwargs"], row["prompt"], row["key"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with key, prompt, instruction_id_list "
                                 f"and kwargs ({type(e).__name__}: {e})") from None
            if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
                raise ValueError(f"{path}:{line_no}: instruction_id_list and kwargs must be lists of equal length")
            tasks.append(Task(id=f"{name.lower()}/{key}", domain=NAME, messages=[{"role": "user", "content": prompt}],
                              tools=[], horizon=len(ids),
                              answer={"instruction_id_list": [ifcheck.normalize_id(i) for i in ids],
                                      "kwargs": [ifcheck.clean_kwargs(k) for k in kwargs]},
                              metadata={"benchmark": name.lower(), "key": key}))
    return tasks


def ifeval_tasks(path: str | pathlib.Path | None = None) -> list[Task]:
    """The 541 IFEval prompts (M-IFEval's English file; "en:" id prefixes are stripped)."""
    return _load(path, IFEVAL_FILE, "IFEval")


def ifbench_tasks(path: str | pathlib.Path | None = None) -> list[Task]:
    """The 300 IFBench test prompts (null kwargs dropped, whole floats made ints)."""
    return _load(path, IFBENCH_FILE, "IFBench")


def score_responses(tasks: Sequence[Task], responses: Sequence[str]) -> dict:
    """IFEval metrics: prompt-level (all instructions followed) and instruction-level accuracy, strict and loose.

    Unsupported instructions count as not followed in the headline numbers; `unsupported` counts them by id and the
    `*_supported` numbers restrict to prompts (and instructions) that are fully checkable."""
    if len(tasks) != len(responses):
        raise ValueError(f"got {len(responses)} responses for {len(tasks)} tasks")
    totals = {k: 0 for k in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose",
                             "prompt_strict_supported", "prompt_loose_supported")}
    n_inst = n_supported_prompts = 0
    unsupported: dict[str, int] = {}
    for task, response in zip(tasks, responses):
        ids, kwargs = task.answer["instruction_id_list"], task.answer["kwargs"]
        strict, loose = check_all(response, ids, kwargs), check_all(response, ids, kwargs, loose=True)
        for iid, v in zip(ids, strict):
            if v is None:
                unsupported[iid] = unsupported.get(iid, 0) + 1
        n_inst += len(ids)
        totals["inst_strict"] += sum(v is True for v in strict)
        totals["inst_loose"] += sum(v is True for v in loose)
        totals["prompt_strict"] += all(v is True for v in strict)
        totals["prompt_loose"] += all(v is True for v in loose)
        if None not in strict:
            n_supported_prompts += 1
            totals["prompt_strict_supported"] += all(strict)
            totals["prompt_loose_supported"] += all(loose)
    n = max(len(tasks), 1)
    return {"n_prompts": len(tasks), "n_instructions": n_inst,
            "prompt_level_strict_acc": totals["prompt_strict"] / n,
            "prompt_level_loose_acc": totals["prompt_loose"] / n,
            "inst_level_strict_acc": totals["inst_strict"] / max(n_inst, 1),
            "inst_level_loose_acc": totals["inst_loose"] / max(n_inst, 1),
            "n_supported_prompts": n_supported_prompts,
            "prompt_level_strict_acc_supported": totals["prompt_strict_supported"] / max(n_supported_prompts, 1),
            "prompt_level_loose_acc_supported": totals["prompt_loose_supported"] / max(n_supported_prompts, 1),
            "n_unsupported_instructions": sum(unsupported.values()), "unsupported": dict(sorted(unsupported.items()))}
