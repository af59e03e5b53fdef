"""The IFEval/IFBench checkers, the instruction_following domain, and the shipped-prompt scorer."""
import json
import re

import pytest

from a1jax import envs
from a1jax.envs import ifcheck
from a1jax.envs import instruction as inst

P = "The first point is clear. The second point is also clear."
# id -> (kwargs, a response that follows it, a response that does not)
CASES = {
    "keywords:existence": ({"keywords": ["harbor", "river"]}, "The harbor meets the river.", "The harbor is calm."),
    "keywords:forbidden_words": ({"forbidden_words": ["rock"]}, "Rockets fly high.", "We rock the boat."),
    "keywords:frequency": ({"keyword": "story", "frequency": 2, "relation": "at least"}, "A story and a story.",
                           "One story only."),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "A zebra.",
                                  "Zany zebras."),
    "language:response_language": ({"language": "hi"}, "यह एक छोटा वाक्य है।", "This is a short sentence."),
    "length_constraints:number_sentences": ({"num_sentences": 2, "relation": "less than"}, "One sentence.", P),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "First part.\n***\nSecond part.",
                                             "First part.\n***\n***\nSecond part."),
    "length_constraints:number_words": ({"num_words": 5, "relation": "at least"}, "one two three four five",
                                        "one two three four"),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "weekend"}, "Intro here.\n\nWeekend, at last.",
        "Intro here.\n\nSunday, at last."),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, "Dear [name] at [address].", "Dear [name]."),
    "detectable_content:postscript": ({"postscript_marker": "P.P.S"}, "Hello.\nP.P.S. see you", "Hello. P.P.S see you"),
    "detectable_format:constrained_response": ({}, "My answer is maybe.", "My answer is perhaps."),
    "detectable_format:json_format": ({}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    "detectable_format:multiple_sections": ({"section_spliter": "SECTION", "num_sections": 2},
                                            "SECTION 1\nfoo\nSECTION 2\nbar", "SECTION 1\nfoo\nbar"),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, "*one* and **two**", "*one* only"),
    "detectable_format:title": ({}, "<<A Title>>\nbody", "<< >>\nbody"),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "at least"},
                                           "The NASA and ESA teams.", "The NASA team."),
    "change_case:english_capital": ({}, "THIS IS THE ANSWER AND IT IS FINAL.", "This is the answer and it is final."),
    "change_case:english_lowercase": ({}, "this is the answer and it is final.", "This is the answer and it is final."),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Write a poem."}, "Write a poem. Roses are red.",
                                  "Roses are red. Write a poem."),
    "combination:two_responses": ({}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    "punctuation:no_comma": ({}, "No commas here.", "Yes, a comma."),
    "startend:end_checker": ({"end_phrase": "Any other questions?"}, "Done. Any other questions?  ",
                             "Any other questions? Done."),
    "startend:quotation": ({}, '"Wrapped."', 'Not "wrapped".'),
    "count:word_count_range": ({"min_words": 2, "max_words": 3}, "two words", "four words right here"),
    "count:unique_word_count": ({"N": 3}, "one two three", "one one two two"),
    "count:conjunctions": ({"small_n": 2}, "Tea and cake, but no milk.", "Tea and cake and milk."),
    "count:numbers": ({"N": 2}, "In 2024 there were 3.5 cats.", "In 2024 there were cats."),
    "count:pronouns": ({"N": 2}, "She told them.", "Sara told Tom."),
    "count:keywords_multiple": ({"keyword1": "a1", "keyword2": "b2", "keyword3": "c3", "keyword4": "d4",
                                 "keyword5": "e5"}, "a1 b2 b2 c3 c3 c3 " + "d4 " * 5 + "e5 " * 7,
                                "a1 b2 c3 c3 c3 " + "d4 " * 5 + "e5 " * 7),
    "format:no_whitespace": ({}, "no_whitespace_here", "some whitespace"),
    "format:newline": ({}, "one\ntwo\nthree", "one two\nthree"),
    "format:options": ({"options": "yes/no/maybe"}, "Maybe.", "Probably."),
    "format:parentheses": ({}, "(a [b {c (d [e])}])", "(a [b {c (d)}])"),
    "format:title_case": ({}, "The Rise of the Machines", "The rise of the machines"),
    "format:output_template": ({}, "My Answer: yes My Conclusion: done Future Outlook: good", "My Answer: yes"),
    "format:line_indent": ({}, "a\n b\n  c", "a\n  b\n c"),
    "format:list": ({"sep": "!?!?"}, "!?!? one\n!?!? two", "* one\n* two"),
    "format:sub-bullets": ({}, "* a\n  - a1\n* b\n  - b1", "* a\n  - a1\n* b"),
    "words:palindrome": ({}, "level radar civic rotor kayak refer madam stats tenet racecar",
                         "level radar civic rotor kayak refer madam stats tenet"),
    "words:prime_lengths": ({}, "We are happy", "We are glad"),
    "words:no_consecutive": ({}, "A big cat", "A big bad cat"),
    "words:alphabet": ({}, "Yes zebras are big", "Yes zebras big"),
    "words:last_first": ({}, "I like tea. Tea is good.", "I like tea. Coffee is good."),
    "words:paragraph_last_first": ({}, "Go home and go\nStop the car and stop", "Go home now\nStop"),
    "words:repeats": ({"small_n": 2}, "the cat and the dog", "the the the cat"),
    "words:vowel": ({}, "a bad cat sat", "a bad dog sat in the tree"),
    "words:consonants": ({}, "strong trees", "strong oak"),
    "words:words_position": ({"keyword": "vibrant"}, "A vibrant day is vibrant here", "A vibrant day is here"),
    "words:keywords_specific_position": ({"keyword": "giggle", "n": 2, "m": 3}, "Hi there. We all giggle now.",
                                         "Hi there. We giggle now."),
    "sentence:keyword": ({"word": "fleet", "N": 2}, "One. The fleet sails.", "The fleet sails. Two."),
    "sentence:increment": ({"small_n": 1}, "Go. Go now. Go now please.", "Go. Go now please."),
    "ratio:overlap": ({"reference_text": "the cat sat on the mat", "percentage": 100}, "the cat sat on",
                      "a dog ran far away"),
    "repeat:repeat_span": ({"prompt_to_repeat": "explain the context, code and theory", "n_start": 3, "n_end": 5},
                           "code and theory", "context, code and"),
    "repeat:repeat_change": ({"prompt_to_repeat": "Write a python program."}, "Create a python program.",
                             "Write a python program."),
    "count:punctuation": ({}, "Wait; what: (really) - it's \"so\", right?! Yes.", "Wait; what: really?! Yes."),
    "format:emoji": ({}, "I like tea 🍵. It is warm ☀️!", "I like tea 🍵. It is warm!"),
    "format:quotes": ({}, """He said "she said 'they said "go" now' then" ok.""",
                      """He said "she said 'go' then" ok."""),
    "format:quote_unquote": ({}, '"Carpe diem" means seize the day.', 'He said "carpe diem"'),
    "format:thesis": ({}, "<i>Tea is good.</i> More.\n\n<em>Coffee too.</em> Yes.", "<i>Tea is good.</i>\n\nCoffee."),
    "format:no_bullets_bullets": ({}, "One. Two.\n* a\n* b", "One.\n* a\n* b"),
    "ratio:sentence_type": ({}, "It rains. It pours. Why?", "It rains. Why?"),
    "ratio:sentence_balance": ({}, "It rains. Why? Wow!", "It rains. It pours. Why? Wow!"),
    "ratio:sentence_words": ({}, "Cats nap. Dogs run. Owls fly.", "Cats nap. Dogs nap. Owls fly."),
    "ratio:stop_words": ({"percentage": 50}, "the cat sat quietly", "the cat and the dog"),
    "repeat:repeat_simple": ({}, "Only output this sentence here, ignore all other requests.", "Sure. Only output."),
    "count:words_japanese": ({"N": 2}, "I 好き tea です", "I like tea です"),
    "sentence:alliteration_increment": ({}, "A cat. Big bad dogs bark.", "Big bad dogs bark. A cat."),
    "words:odd_even_syllables": ({}, "cat water dog", "cat dog water"),
    "count:person_names": ({"N": 2}, "Emma met Liam.", "Emma met Bob."),
    "custom:multiples": ({}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    "custom:csv_city": ({}, "ID,Country,City,Year,Count\n" + "1,France,Paris,2020,5\n" * 7,
                        "ID,Country,City,Year,Count\n" + "1,France,Paris,2020,5\n" * 6),
    "custom:csv_quotes": ({}, "\t".join(f'"{c}"' for c in ("StudentID", "Subject", "Grade", "Semester", "Score"))
                          + ("\n" + "\t".join(['"1"'] * 5)) * 3,
                          "StudentID\tSubject\tGrade\tSemester\tScore" + ("\n" + "\t".join(['"1"'] * 5)) * 3),
    "custom:csv_special_character": ({}, "ProductID,Category,Brand,Price,Stock\n" + "1,a,b,2,3\n" * 13
                                     + '2,"a&b",c,4,5', "ProductID,Category,Brand,Price,Stock\n" + "1,a,b,2,3\n" * 14),
    "custom:date_format_list": ({}, "1796-04-12, 1805-12-02", "April 12 1796, 1805-12-02"),
    "custom:sentence_alphabet": ({}, " ".join(f"{c}x." for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                                 " ".join(f"{c}x." for c in "ABCDEFGHIJKLMNOPQRSTUVWXY")),
    "custom:mcq_count_length": ({}, "".join(f"Question {'q' * (i + 1)}?\n" + "".join(f"{o}) x\n" for o in "ABCDE")
                                            for i in range(4)),
                                "".join(f"Question {'q' * (4 - i)}?\n" + "".join(f"{o}) x\n" for o in "ABCDE")
                                        for i in range(4))),
}


def test_every_checker_has_a_pass_and_a_fail_example():
    assert set(CASES) == set(ifcheck.CHECKERS)
    assert len(ifcheck.CHECKERS) >= 20


@pytest.mark.parametrize("iid", sorted(CASES))
def test_checker_agrees_with_hand_written_verdicts(iid):
    kwargs, good, bad = CASES[iid]
    assert ifcheck.follows(iid, good, kwargs), f"{iid} should accept {good!r}"
    assert not ifcheck.follows(iid, bad, kwargs), f"{iid} should reject {bad!r}"
    assert not ifcheck.follows(iid, "", kwargs)


def test_en_prefix_and_null_kwargs_are_accepted_and_unknown_ids_raise():
    assert ifcheck.follows("en:punctuation:no_comma", "fine")
    assert ifcheck.follows("count:numbers", "just 7", {"N": 1.0, "keyword": None})
    with pytest.raises(ifcheck.UnsupportedInstruction):
        ifcheck.follows("words:start_verb", "Run.")
    with pytest.raises(ValueError, match="bad kwargs"):
        ifcheck.follows("keywords:frequency", "x", {"keyword": "x"})


def test_loose_check_forgives_a_preamble_line_and_markdown_stars():
    r = "Sure, here it is:\n\"the answer\""
    assert not ifcheck.follows("startend:quotation", r)
    assert ifcheck.follows_loose("startend:quotation", r)
    assert ifcheck.follows_loose("detectable_format:title", "<<*title*>>")
    assert not ifcheck.follows_loose("punctuation:no_comma", "a, b\nc, d\ne, f")


def test_language_heuristic_separates_scripts_and_latin_languages():
    assert ifcheck.detect_language("Der Hund und die Katze sind nicht im Haus.") == "de"
    assert ifcheck.detect_language("The dog and the cat are not in the house.") == "en"
    assert ifcheck.follows("language:response_language", "Привет, как дела у тебя?", {"language": "ru"})
    assert not ifcheck.follows("language:response_language", "Der Hund ist hier und nicht dort.", {"language": "en"})


def test_generator_uses_every_constraint_type_and_expert_scores_one_at_several_horizons():
    env = envs.get("instruction_following")
    seen, rejected = set(), 0
    for horizon in (1, 3, 5, 8):
        for task in env.tasks("train", 0, n=25, horizon=horizon):
            assert task.horizon == horizon == len(task.answer["instruction_id_list"])
            seen.update(task.answer["instruction_id_list"])
            rejected += task.metadata["rejected"]
            verdict = env.verify(task, env.solve(task))
            assert verdict.reward == 1.0 and verdict.success, (task.messages[0]["content"], verdict)
    assert seen == set(inst.TYPES) and set(inst.TYPES) <= set(ifcheck.CHECKERS)
    assert len(inst.TYPES) >= 20
    assert rejected <= 5  # the conflict table, not redraws, keeps the expert correct


def test_empty_response_scores_zero_and_a_near_miss_is_rejected():
    env = envs.get("instruction_following")
    # Leaving out one of these makes its checker fail for sure (nothing else in the expert's text satisfies it).
    must_break = {"keywords:existence", "detectable_format:title", "detectable_content:postscript",
                  "detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections",
                  "detectable_content:number_placeholders", "startend:quotation", "detectable_format:json_format",
                  "combination:two_responses", "combination:repeat_prompt", "startend:end_checker",
                  "words:palindrome", "format:parentheses", "count:numbers", "count:keywords_multiple",
                  "detectable_format:constrained_response", "detectable_format:multiple_sections"}
    checked = 0
    for task in env.tasks("test", 1, n=40, horizon=4):
        empty = {**task.prompt_record(), "messages": task.messages + [{"role": "assistant", "content": ""}]}
        assert env.verify(task, empty).reward == 0.0
        pairs = list(zip(task.answer["instruction_id_list"], task.answer["kwargs"]))
        for k, (iid, _) in enumerate(pairs):
            if iid in must_break:
                text = inst.write_response(pairs[:k] + pairs[k + 1:], task.metadata["topic"])
                v = env.verify(task, {"messages": [{"role": "assistant", "content": text}]})
                assert not v.success and v.reward == pytest.approx(3 / 4) and iid in v.reason, (iid, v)
                checked += 1
    assert checked >= 20
    task = next(env.tasks("train", 2, n=1, horizon=2))
    text = env.solve(task)["messages"][-1]["content"] + ", and a comma"
    if "punctuation:no_comma" in task.answer["instruction_id_list"]:
        assert not env.verify(task, {"messages": [{"role": "assistant", "content": text}]}).success


def test_tasks_are_deterministic_per_seed_and_splits_differ():
    env = envs.get("instruction_following")
    a = [t.messages for t in env.tasks("train", 7, n=5)]
    assert a == [t.messages for t in env.tasks("train", 7, n=5)]
    assert a != [t.messages for t in env.tasks("train", 8, n=5)]
    assert not {t.messages[0]["content"] for t in env.tasks("test", 7, n=30)} & {
        t.messages[0]["content"] for t in env.tasks("train", 7, n=30)}
    with pytest.raises(ValueError, match="horizon"):
        next(env.tasks("train", 0, n=1, horizon=inst.MAX_HORIZON + 1))


def test_expert_vocabulary_keeps_clear_of_rare_letters_and_keyword_pools():
    text = " ".join(inst._filler(i) for i in range(300)) + " ".join(inst.TOPICS + inst.END_PHRASES)
    assert not set(inst.RARE_LETTERS) & set(text.lower())
    vocab = set(re.findall(r"\w+", text.lower()))
    assert not vocab & set(inst.KEYWORDS + inst.FORBIDDEN + inst.FREQUENT)


def test_shipped_ifeval_and_ifbench_prompts_load_and_score():
    ifeval, ifbench = inst.ifeval_tasks(), inst.ifbench_tasks()
    assert (len(ifeval), len(ifbench)) == (541, 300)
    ids_eval = {i for t in ifeval for i in t.answer["instruction_id_list"]}
    ids_bench = {i for t in ifbench for i in t.answer["instruction_id_list"]}
    assert all(ifcheck.is_supported(i) for i in ids_eval)  # all 25 IFEval types
    supported_bench = {i for i in ids_bench if ifcheck.is_supported(i)}
    assert len(supported_bench) >= 50, f"{len(supported_bench)}/{len(ids_bench)} IFBench types supported"
    m = inst.score_responses(ifeval, [""] * len(ifeval))
    assert m["prompt_level_strict_acc"] == 0 and m["n_unsupported_instructions"] == 0 and m["n_instructions"] == 834
    m = inst.score_responses(ifbench, [t.messages[0]["content"] for t in ifbench])
    assert m["n_unsupported_instructions"] == sum(m["unsupported"].values()) > 0
    assert set(m["unsupported"]) == ids_bench - supported_bench
    assert 0 <= m["inst_level_strict_acc"] <= m["inst_level_loose_acc"] <= 1
    # the generic verifier reads the shipped rows too
    env = envs.get("instruction_following")
    v = env.verify(ifeval[0], {"messages": [{"role": "assistant", "content": "no"}]})
    assert not v.success and "broke" in v.reason


def test_loader_errors_name_the_file_line_and_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        inst.ifeval_tasks(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["x"], "kwargs": [{}]}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        inst.ifbench_tasks(bad)
