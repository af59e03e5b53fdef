"""Programmatic checkers for IFEval / IFBench verifiable instructions.

Each checker is `check(response, **kwargs) -> bool` registered under the official instruction id with the official
kwargs names (IFEval: google-research/instruction_following_eval; IFBench: allenai/IFBench), so the shipped prompts
in shared/data/eval/{ifeval,ifbench} can be checked as they are. The semantics are implemented here from the public
instruction descriptions, not copied from the reference code, and a few are approximations (noted per checker):

  * words are `\\w+` runs (apostrophes join: "don't" is one word); sentences end at . ! ? followed by whitespace or
    the end of the text (no abbreviation handling);
  * language:response_language is a script heuristic, not a language model: a non-Latin target language must be
    written mostly in its script (Hindi, Marathi and Nepali all pass as Devanagari, Russian and Bulgarian as
    Cyrillic, Arabic/Persian/Urdu as Arabic script); a Latin-script language must be mostly Latin letters and its
    small stop-word list must score highest among the ones below.

`follows(id, response, kwargs)` is IFEval's strict check; `follows_loose` also accepts the response with its first
and/or last line removed and/or every `*` removed (IFEval's loose variants). An id without a checker raises
`UnsupportedInstruction`: callers count it, never pass it silently. Ids may carry M-IFEval's "en:" prefix.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import re
import string
from typing import Callable

CHECKERS: dict[str, Callable[..., bool]] = {}


class UnsupportedInstruction(KeyError):
    """An instruction id with no checker here."""


def register(instruction_id: str):
    def wrap(fn):
        CHECKERS[instruction_id] = fn
        return fn
    return wrap


def normalize_id(instruction_id: str) -> str:
    """M-IFEval ids are prefixed with the language ("en:punctuation:no_comma"); Google's and IFBench's are not."""
    return instruction_id[3:] if instruction_id.startswith("en:") else instruction_id


def clean_kwargs(kwargs: dict | None) -> dict:
    """IFBench rows carry every kwarg name with null for the unused ones, and whole numbers as floats (5.0)."""
    out = {}
    for k, v in (kwargs or {}).items():
        if v is None:
            continue
        out[k] = int(v) if isinstance(v, float) and v.is_integer() else v
    return out


def is_supported(instruction_id: str) -> bool:
    return normalize_id(instruction_id) in CHECKERS


def follows(instruction_id: str, response: str, kwargs: dict | None = None) -> bool:
    """Strict check. Raises UnsupportedInstruction for an id without a checker."""
    iid = normalize_id(instruction_id)
    if iid not in CHECKERS:
        raise UnsupportedInstruction(instruction_id)
    if not response.strip():
        return False  # IFEval: an empty response follows nothing
    kwargs = clean_kwargs(kwargs)
    try:
        inspect.signature(CHECKERS[iid]).bind(response, **kwargs)
    except TypeError as e:  # wrong kwargs for this id: a data error, name it
        raise ValueError(f"instruction {instruction_id!r}: bad kwargs {sorted(kwargs)}: {e}") from None
    return bool(CHECKERS[iid](response, **kwargs))


def loose_variants(response: str) -> list[str]:
    """IFEval's loose set: {as is, first line removed, last line removed, both} x {as is, '*' removed}."""
    lines = response.split("\n")
    cuts = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for c in cuts for v in (c, c.replace("*", ""))]


def follows_loose(instruction_id: str, response: str, kwargs: dict | None = None) -> bool:
    return any(v.strip() and follows(instruction_id, v, kwargs) for v in loose_variants(response))


# ---------------------------------------------------------------------------------------------------------- helpers
def words(text: str) -> list[str]:
    return re.findall(r"\w+(?:'\w+)*", text)


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in re.split(r"(?<=[.!?])\s+", text.strip())) if s]


def _compare(count: int, relation: str, n: int) -> bool:
    if relation == "at least":
        return count >= n
    if relation == "less than":
        return count < n
    if relation == "at most":
        return count <= n
    if relation == "exactly":
        return count == n
    raise ValueError(f"relation must be 'at least', 'less than', 'at most' or 'exactly', got {relation!r}")


def _count_phrase(text: str, phrase: str) -> int:
    return len(re.findall(r"\b" + re.escape(phrase) + r"\b", text, flags=re.I))


# ------------------------------------------------------------------------------------------------------ IFEval: 25
@register("keywords:existence")
def _existence(r, keywords):  # a case-insensitive substring, as IFEval matches keywords
    return all(re.search(re.escape(k), r, flags=re.I) for k in keywords)


@register("keywords:forbidden_words")
def _forbidden(r, forbidden_words):
    return not any(_count_phrase(r, w) for w in forbidden_words)


@register("keywords:frequency")
def _frequency(r, keyword, frequency, relation):
    return _compare(_count_phrase(r, keyword), relation, frequency)


@register("keywords:letter_frequency")
def _letter_frequency(r, letter, let_frequency, let_relation):
    return _compare(r.lower().count(letter.lower()), let_relation, let_frequency)


# script ranges (first, last codepoint) for the non-Latin languages in IFEval
_SCRIPTS = {
    "devanagari": (0x0900, 0x097F), "bengali": (0x0980, 0x09FF), "gurmukhi": (0x0A00, 0x0A7F),
    "gujarati": (0x0A80, 0x0AFF), "tamil": (0x0B80, 0x0BFF), "telugu": (0x0C00, 0x0C7F), "kannada": (0x0C80, 0x0CFF),
    "malayalam": (0x0D00, 0x0D7F), "thai": (0x0E00, 0x0E7F), "hangul": (0xAC00, 0xD7AF), "cyrillic": (0x0400, 0x04FF),
    "arabic": (0x0600, 0x06FF), "hebrew": (0x0590, 0x05FF), "greek": (0x0370, 0x03FF), "kana": (0x3040, 0x30FF),
    "cjk": (0x4E00, 0x9FFF),
}
_LANG_SCRIPT = {"hi": "devanagari", "mr": "devanagari", "ne": "devanagari", "bn": "bengali", "pa": "gurmukhi",
                "gu": "gujarati", "ta": "tamil", "te": "telugu", "kn": "kannada", "ml": "malayalam", "th": "thai",
                "ko": "hangul", "ru": "cyrillic", "bg": "cyrillic", "uk": "cyrillic", "ar": "arabic", "fa": "arabic",
                "ur": "arabic", "he": "hebrew", "el": "greek", "ja": "kana", "zh": "cjk"}
_STOPWORDS = {
    "en": "the and of to is in that it for was with as on be are this have not but by they you from at which",
    "de": "der die und das ist nicht ein eine zu mit den von ich sie es auf auch sich dem des im",
    "fr": "le la les et est des une un pas que dans pour qui sur au du ne avec ce il elle",
    "es": "el la los las y es que en un una por para con no del se lo como su al",
    "pt": "o os as e é que não um uma para com do da em no na por se mais dos",
    "it": "il gli e è che non un una per con del della sono di le nel alla anche si",
    "nl": "de het een en is van dat niet op te zijn met voor die er aan ook",
    "fi": "ja on ei että se oli hän mutta kuin myös ovat tämä joka niin kun mitä",
    "sw": "na ya wa kwa ni za katika la kuwa hii au yake watu lakini kama pia",
    "vi": "và của là có không những các được một này cho với người trong đã để",
}
_STOPWORDS = {k: set(v.split()) for k, v in _STOPWORDS.items()}


def _script_of(ch: str) -> str | None:
    o = ord(ch)
    for name, (lo, hi) in _SCRIPTS.items():
        if lo <= o <= hi:
            return name
    if ch.isalpha() and (o < 0x0250 or 0x1E00 <= o <= 0x1EFF):  # Latin, Latin-1, Latin Extended, Vietnamese
        return "latin"
    return None


def detect_language(text: str) -> str | None:
    """Best-effort language code: the dominant script, then (for Latin) the stop-word list with most hits."""
    counts: dict[str, int] = {}
    for ch in text:
        s = _script_of(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return None
    script = max(counts, key=counts.get)
    if script != "latin":
        return script  # a script name: callers compare with _LANG_SCRIPT
    ws = [w.lower() for w in words(text)]
    hits = {lang: sum(w in sw for w in ws) for lang, sw in _STOPWORDS.items()}
    best = max(hits, key=hits.get)
    return best if hits[best] > 0 else None


@register("language:response_language")
def _response_language(r, language):
    found = detect_language(r)
    return found == _LANG_SCRIPT.get(language, language)


@register("length_constraints:number_sentences")
def _number_sentences(r, num_sentences, relation):
    return _compare(len(sentences(r)), relation, num_sentences)


def _star_paragraphs(r: str) -> list[str] | None:
    """Paragraphs split by the markdown divider ***; None if an inner paragraph is empty."""
    parts = re.split(r"\s?\*\*\*\s?", r)
    for i, p in enumerate(parts):
        if not p.strip() and 0 < i < len(parts) - 1:
            return None
    return [p for p in parts if p.strip()]


@register("length_constraints:number_paragraphs")
def _number_paragraphs(r, num_paragraphs):
    paragraphs = _star_paragraphs(r)
    return paragraphs is not None and len(paragraphs) == num_paragraphs


@register("length_constraints:number_words")
def _number_words(r, num_words, relation):
    return _compare(len(words(r)), relation, num_words)


@register("length_constraints:nth_paragraph_first_word")
def _nth_paragraph_first_word(r, num_paragraphs, nth_paragraph, first_word):
    paragraphs = [p for p in re.split(r"\n\s*\n", r) if p.strip()]
    if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= num_paragraphs:
        return False
    head = paragraphs[nth_paragraph - 1].split()
    first = head[0].strip(string.punctuation + "“”‘’").lower() if head else ""
    return first == first_word.lower()


@register("detectable_content:number_placeholders")
def _placeholders(r, num_placeholders):
    return len(re.findall(r"\[[^\[\]\n]*?\]", r)) >= num_placeholders


@register("detectable_content:postscript")
def _postscript(r, postscript_marker):
    # The marker must start a line; "P.S." also matches "P. S." and "p.s.", "P.P.S" matches "P.P.S." and "P. P. S".
    parts = [p for p in postscript_marker.strip().split(".") if p.strip()]
    marker = r"\.\s?".join(re.escape(p.strip()) for p in parts)
    return re.search(r"^\s*" + marker, r, flags=re.I | re.M) is not None


@register("detectable_format:constrained_response")
def _constrained_response(r):
    return any(opt in r for opt in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _strip_fence(r: str) -> str:
    r = r.strip()
    r = re.sub(r"^```(?:json|Json|JSON)?\s*", "", r)
    return re.sub(r"\s*```$", "", r).strip()


@register("detectable_format:json_format")
def _json_format(r):
    try:
        json.loads(_strip_fence(r))
    except ValueError:
        return False
    return True


@register("detectable_format:multiple_sections")
def _multiple_sections(r, section_spliter, num_sections):
    parts = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= num_sections


def _bullet_lines(r: str) -> list[str]:
    return re.findall(r"^\s*(?:\*[^*\n]|-\s).*$", r, flags=re.M)


@register("detectable_format:number_bullet_lists")
def _number_bullets(r, num_bullets):
    return len(_bullet_lines(r)) == num_bullets


@register("detectable_format:number_highlighted_sections")
def _highlights(r, num_highlights):
    single = [h for h in re.findall(r"(?<!\*)\*([^\n*]+)\*(?!\*)", r) if h.strip()]
    double = [h for h in re.findall(r"\*\*([^\n*]+)\*\*", r) if h.strip()]
    return len(single) + len(double) >= num_highlights


@register("detectable_format:title")
def _title(r):
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", r))


def _capital_words(r: str) -> list[str]:
    return [w for w in words(r) if w.isupper()]


@register("change_case:capital_word_frequency")
def _capital_frequency(r, capital_frequency, capital_relation):
    return _compare(len(_capital_words(r)), capital_relation, capital_frequency)


@register("change_case:english_capital")
def _english_capital(r):
    return r.isupper() and detect_language(r) == "en"


@register("change_case:english_lowercase")
def _english_lowercase(r):
    return r.islower() and detect_language(r) == "en"


@register("combination:repeat_prompt")
def _repeat_prompt(r, prompt_to_repeat):
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


@register("combination:two_responses")
def _two_responses(r):
    parts = r.split("******")
    for i, p in enumerate(parts):
        if not p.strip() and 0 < i < len(parts) - 1:
            return False
    parts = [p.strip() for p in parts if p.strip()]
    return len(parts) == 2 and parts[0] != parts[1]


@register("punctuation:no_comma")
def _no_comma(r):
    return "," not in r


@register("startend:end_checker")
def _end_checker(r, end_phrase):
    return r.strip().lower().endswith(end_phrase.strip().lower())


@register("startend:quotation")
def _quotation(r):
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


# --------------------------------------------------------------------------------------------- IFBench (a subset)
@register("count:word_count_range")
def _word_count_range(r, min_words, max_words):
    return min_words <= len(words(r)) <= max_words


@register("count:unique_word_count")
def _unique_words(r, N):
    return len({w.lower() for w in words(r)}) >= N


_CONJUNCTIONS = ("for", "and", "nor", "but", "or", "yet", "so")


@register("count:conjunctions")
def _conjunctions(r, small_n):
    ws = {w.lower() for w in words(r)}
    return sum(c in ws for c in _CONJUNCTIONS) >= small_n


@register("count:numbers")
def _numbers(r, N):
    return len(re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])", r)) == N


_PRONOUNS = set("i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its "
                "itself we us our ours ourselves they them their theirs themselves who whom whose".split())


@register("count:pronouns")
def _pronouns(r, N):
    return sum(w.lower() in _PRONOUNS for w in words(r)) >= N


@register("count:keywords_multiple")
def _keywords_multiple(r, keyword1, keyword2, keyword3, keyword4, keyword5):
    wanted = ((keyword1, 1), (keyword2, 2), (keyword3, 3), (keyword4, 5), (keyword5, 7))
    return all(_count_phrase(r, k) == n for k, n in wanted)


@register("format:no_whitespace")
def _no_whitespace(r):
    return not re.search(r"\s", r)


@register("format:newline")
def _newline(r):
    lines = [ln.strip() for ln in r.strip().split("\n") if ln.strip()]
    return all(len(ln.split()) == 1 for ln in lines)


@register("format:options")
def _options(r, options):
    if "/" in options:
        choices = options.split("/")
    elif " or " in options:
        choices = options.split(" or ")
    else:
        choices = options.split(",")
    choices = [c.strip().rstrip(")").strip() for c in choices if c.strip()]
    answer = r.strip().rstrip(".").rstrip(")").strip()
    return answer.lower() in (c.lower() for c in choices)


@register("format:parentheses")
def _parentheses(r):
    pairs, stack, deepest = {")": "(", "]": "[", "}": "{"}, [], 0
    for ch in r:
        if ch in "([{":
            stack.append(ch)
            deepest = max(deepest, len(stack))
        elif ch in pairs:
            if stack and stack[-1] == pairs[ch]:
                stack.pop()
    return deepest >= 5


@register("format:title_case")
def _title_case(r):
    minor = {"a", "an", "the", "and", "but", "or", "nor", "for", "so", "yet", "at", "by", "in", "of", "on", "to",
             "up", "as", "is", "it", "with", "from"}
    ws = [w for w in words(r) if w[0].isalpha()]
    return bool(ws) and all(w[0].isupper() for i, w in enumerate(ws) if i == 0 or w.lower() not in minor)


@register("format:output_template")
def _output_template(r):
    return re.fullmatch(r"\s*My Answer:\s*\S.*?My Conclusion:\s*\S.*?Future Outlook:\s*\S.*", r, flags=re.S) is not None


@register("format:line_indent")
def _line_indent(r):
    lines = [ln for ln in r.split("\n") if ln.strip()]
    indents = [len(ln) - len(ln.lstrip(" \t")) for ln in lines]
    return len(lines) > 1 and all(b > a for a, b in zip(indents, indents[1:]))


@register("format:list")
def _special_list(r, sep):
    items = [ln for ln in r.split("\n") if ln.strip().startswith(sep)]
    return len(items) >= 2


@register("format:sub-bullets")
def _sub_bullets(r):
    lines = [ln for ln in r.split("\n") if ln.strip()]
    bullets = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("* ")]
    if not bullets:
        return False
    ends = bullets[1:] + [len(lines)]
    return all(any(ln.lstrip().startswith("- ") for ln in lines[b + 1:e]) for b, e in zip(bullets, ends))


@register("words:palindrome")
def _palindrome(r):
    found = {w.lower() for w in words(r) if len(w) >= 5 and w.lower() == w.lower()[::-1]}
    return len(found) >= 10


@register("words:prime_lengths")
def _prime_lengths(r):
    ws = words(r)
    return bool(ws) and all(len(w) in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29) for w in ws)


@register("words:no_consecutive")
def _no_consecutive(r):
    ws = [w.lower() for w in words(r)]
    return all(a[0] != b[0] for a, b in zip(ws, ws[1:]))


@register("words:alphabet")
def _alphabet(r):
    ws = [w.lower() for w in words(r)]
    if not ws or not all(w[0] in string.ascii_lowercase for w in ws):
        return False
    return all((ord(b[0]) - ord(a[0])) % 26 == 1 for a, b in zip(ws, ws[1:]))


@register("words:last_first")
def _last_first(r):
    ss = [words(s) for s in sentences(r)]
    ss = [s for s in ss if s]
    return len(ss) > 1 and all(a[-1].lower() == b[0].lower() for a, b in zip(ss, ss[1:]))


@register("words:paragraph_last_first")
def _paragraph_last_first(r):
    ps = [words(p) for p in r.split("\n") if p.strip()]
    ps = [p for p in ps if p]
    return bool(ps) and all(p[0].lower() == p[-1].lower() for p in ps)


@register("words:repeats")
def _repeats(r, small_n):
    counts: dict[str, int] = {}
    for w in words(r):
        counts[w.lower()] = counts.get(w.lower(), 0) + 1
    return all(c <= small_n for c in counts.values())


@register("words:vowel")
def _vowel(r):
    return len({c for c in r.lower() if c in "aeiou"}) <= 3


@register("words:consonants")
def _consonants(r):
    ws = [w for w in words(r) if w.isalpha()]
    return bool(ws) and all(re.search(r"[b-df-hj-np-tv-z]{2}", w.lower()) for w in ws)


@register("words:words_position")
def _words_position(r, keyword):
    ws = [w.lower() for w in words(r)]
    return len(ws) >= 2 and ws[1] == keyword.lower() and ws[-2] == keyword.lower()


@register("words:keywords_specific_position")
def _keyword_position(r, keyword, n, m):
    ss = sentences(r)
    if len(ss) < n:
        return False
    ws = words(ss[n - 1])
    return len(ws) >= m and ws[m - 1].lower() == keyword.lower()


@register("sentence:keyword")
def _sentence_keyword(r, word, N):
    ss = sentences(r)
    return len(ss) >= N and _count_phrase(ss[N - 1], word) > 0


@register("sentence:increment")
def _sentence_increment(r, small_n):
    lengths = [len(words(s)) for s in sentences(r)]
    return len(lengths) > 1 and all(b - a == small_n for a, b in zip(lengths, lengths[1:]))


@register("ratio:overlap")
def _overlap(r, reference_text, percentage):
    def grams(t):
        ws = [w.lower() for w in words(t)]
        return {tuple(ws[i:i + 3]) for i in range(len(ws) - 2)}
    ref, got = grams(reference_text), grams(r)
    if not ref or not got:
        return False
    share = 100 * len(ref & got) / len(got)
    return abs(share - percentage) <= 2


@register("repeat:repeat_span")
def _repeat_span(r, prompt_to_repeat, n_start, n_end):
    # The shipped prompts say "word indices, split by whitespace" (inclusive both ends).
    return r.strip() == " ".join(prompt_to_repeat.split()[n_start:n_end + 1])


@register("repeat:repeat_change")
def _repeat_change(r, prompt_to_repeat):
    got, want = r.strip().split(), prompt_to_repeat.strip().split()
    return len(got) == len(want) and got[1:] == want[1:] and got[:1] != want[:1]


# IFBench checkers that are format-only or heuristic; each notes what it cannot see.
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


@register("count:punctuation")
def _punctuation(r):
    # "every standard punctuation mark": . , ? ! ; : ' " ( ) - plus the interrobang, written ?! or ‽
    return all(p in r for p in ".,?!;:'\"()-") and ("?!" in r or "‽" in r)


@register("format:emoji")
def _emoji(r):
    """Every sentence end (. ! ? followed by space or the end) has an emoji just before or after it, and the text
    ends with one."""
    text = r.strip()
    for m in re.finditer(r"[.!?]+(?=\s|$)", text):
        before, after = text[:m.start()].rstrip(), text[m.end():].lstrip()
        if not (before and _EMOJI.match(before[-1]) or after and _EMOJI.match(after[0])):
            return False
    tail = text.rstrip(".!? ")
    return bool(tail) and _EMOJI.match(tail[-1]) is not None


@register("format:quotes")
def _nested_quotes(r):
    """Quote depth >= 3 with double and single quotes alternating; an apostrophe inside a word is not a quote."""
    stack, deepest = [], 0
    for i, ch in enumerate(r):
        if ch == "'" and 0 < i < len(r) - 1 and r[i - 1].isalnum() and r[i + 1].isalnum():
            continue
        if ch in "\"'":
            if stack and stack[-1] == ch:
                stack.pop()
            elif not stack or stack[-1] != ch:
                stack.append(ch)
                deepest = max(deepest, len(stack))
    return deepest >= 3


@register("format:quote_unquote")
def _quote_unquote(r):
    quotes = list(re.finditer(r'"[^"\n]+"', r))
    return bool(quotes) and all(re.search(r"\w", r[q.end():(quotes[i + 1].start() if i + 1 < len(quotes) else None)])
                                for i, q in enumerate(quotes))


@register("format:thesis")
def _thesis(r):
    """Sections = blocks separated by blank lines; each must open with an HTML-italic sentence."""
    sections = [s.strip() for s in re.split(r"\n\s*\n", r) if s.strip()]
    return bool(sections) and all(re.match(r"(?:#+[^\n]*\n\s*)?<(i|em)>[^<]+</\1>", s) for s in sections)


@register("format:no_bullets_bullets")
def _some_bullets(r):
    lines = r.split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("* ")), None)
    if first is None:
        return False
    prose = " ".join(lines[:first])
    return (len([s for s in sentences(prose) if s.endswith(".")]) >= 2
            and sum(ln.lstrip().startswith("* ") for ln in lines) >= 2)


def _sentence_kinds(r: str) -> dict[str, int]:
    kinds = {".": 0, "?": 0, "!": 0}
    for s in sentences(r):
        if s[-1] in kinds:
            kinds[s[-1]] += 1
    return kinds


@register("ratio:sentence_type")
def _sentence_type(r):
    k = _sentence_kinds(r)
    return k["?"] > 0 and k["."] == 2 * k["?"]


@register("ratio:sentence_balance")
def _sentence_balance(r):
    k = _sentence_kinds(r)
    return k["."] == k["?"] == k["!"] > 0


@register("ratio:sentence_words")
def _sentence_words(r):
    ss = sentences(r)
    if len(ss) != 3 or len({len(s) for s in ss}) != 1:
        return False
    vocab = [{w.lower() for w in words(s)} for s in ss]
    return not (vocab[0] & vocab[1] or vocab[0] & vocab[2] or vocab[1] & vocab[2])


# A common English stop-word list (function words), written for this checker.
_STOP = set("""a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves""".split())


@register("ratio:stop_words")
def _stop_words(r, percentage):
    ws = [w.lower() for w in words(r)]
    return bool(ws) and 100 * sum(w in _STOP for w in ws) / len(ws) <= percentage


@register("repeat:repeat_simple")
def _repeat_simple(r):
    return r.strip() == "Only output this sentence here, ignore all other requests."


_JAPANESE = re.compile("[\u3040-\u30FF\u4E00-\u9FFF\uFF66-\uFF9F]")


@register("count:words_japanese")
def _words_japanese(r, N):
    """Words are whitespace-separated tokens; every N-th one (N, 2N, ...) must hold kana or kanji."""
    tokens = r.split()
    return len(tokens) >= N and all(_JAPANESE.search(t) for t in tokens[N - 1::N])


def _alliteration_run(sentence: str) -> int:
    ws, best, run = [w.lower() for w in words(sentence)], 0, 0
    for i, w in enumerate(ws):
        run = run + 1 if i and w[0] == ws[i - 1][0] else 1
        best = max(best, run)
    return best


@register("sentence:alliteration_increment")
def _alliteration_increment(r):
    runs = [_alliteration_run(s) for s in sentences(r)]
    return len(runs) > 1 and all(b > a for a, b in zip(runs, runs[1:]))


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e: an approximation (no dictionary)."""
    w = word.lower()
    groups = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee")) and groups > 1:
        groups -= 1
    return max(groups, 1)


@register("words:odd_even_syllables")
def _odd_even_syllables(r):
    parities = [syllables(w) % 2 for w in words(r) if w.isalpha()]
    return len(parities) > 1 and all(a != b for a, b in zip(parities, parities[1:]))


# The name list IFBench's prompts give for this instruction.
_PERSON_NAMES = set("""Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte Alexander
Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen Abigail Gabriel Ella Jacob Scarlett Nathan
Victoria Elijah Layla Nicholas Audrey David Hannah Christopher Penelope Thomas Nora Andrew Aria Joseph Claire Ryan
Stella Jonathan""".split())


@register("count:person_names")
def _person_names(r, N):
    return len(_PERSON_NAMES & set(words(r))) >= N


@register("custom:multiples")
def _multiples(r):
    return [int(n) for n in re.findall(r"\d+", r)] == [14, 21, 28, 35, 42, 49]


def _csv_rows(r: str, delimiter: str) -> list[list[str]]:
    text = _strip_fence(r)
    return [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in row)]


@register("custom:csv_city")
def _csv_city(r):
    rows = _csv_rows(r, ",")
    return (len(rows) == 8 and [c.strip() for c in rows[0]] == ["ID", "Country", "City", "Year", "Count"]
            and all(len(row) == 5 for row in rows))


@register("custom:csv_quotes")
def _csv_quotes(r):
    lines = [ln for ln in _strip_fence(r).split("\n") if ln.strip()]
    fields = [ln.strip().split("\t") for ln in lines]
    return (len(lines) == 4 and all(len(f) == 5 for f in fields)
            and all(len(x) >= 2 and x[0] == x[-1] == '"' for f in fields for x in f)
            and [x.strip('"') for x in fields[0]] == ["StudentID", "Subject", "Grade", "Semester", "Score"])


@register("custom:csv_special_character")
def _csv_special_character(r):
    text = _strip_fence(r)
    rows = _csv_rows(text, ",")
    quoted = re.findall(r'"([^"]*)"', text)
    return (len(rows) == 15 and all(len(row) == 5 for row in rows)
            and [c.strip() for c in rows[0]] == ["ProductID", "Category", "Brand", "Price", "Stock"]
            and any(re.search(r"[^\w\s]", q) for q in quoted))


@register("custom:date_format_list")
def _date_format_list(r):
    """Format only: a comma-separated list of YYYY-MM-DD dates (whether they are Napoleon's battles is not checked)."""
    items = [x.strip() for x in r.strip().rstrip(".").split(",")]
    return len(items) > 1 and all(re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", x) for x in items)


@register("custom:sentence_alphabet")
def _sentence_alphabet(r):
    starts = [words(s)[0][0].lower() for s in sentences(r) if words(s)]
    return starts == list(string.ascii_lowercase)


@register("custom:mcq_count_length")
def _mcq(r):
    blocks = [b for b in re.split(r"(?m)^\s*(?=Question\b)", r.strip()) if b.strip()]
    if len(blocks) != 4 or not all(b.lstrip().startswith("Question") for b in blocks):
        return False
    options = [len(re.findall(r"(?m)^\s*\(?[A-Ea-e][\).:]\s+\S", b)) for b in blocks]
    lengths = [len(b.strip().split("\n")[0]) for b in blocks]
    return all(n == 5 for n in options) and all(b > a for a, b in zip(lengths, lengths[1:]))
