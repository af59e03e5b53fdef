"""`a1jax data ...`: import trajectories, inspect them, split off a held-out set.

  a1jax data import --format {tau_bench,toolbench,swe_agent} IN... --out FILE.jsonl --domain D [--strict]
  a1jax data stats FILE... [--tokenizer qwen3_5] [--seq-len T]
  a1jax data split FILE --heldout N --train-out A.jsonl --heldout-out B.jsonl [--group-by FIELD] [--seed S]

Bad records are reported as `file:line: reason`: `--strict` stops at the first one, otherwise they are skipped and
the counts per reason are printed (and logged to the `a1jax.data` logger).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from a1jax.data import tokenizers
from a1jax.data.cache import DEFAULT_CACHE_DIR
from a1jax.data.importers import FORMATS, import_records
from a1jax.data.records import SkipReport, read_records, write_records
from a1jax.data.stats import compute_stats, format_stats


def add_parser(sub) -> None:
    parser = sub.add_parser("data", help="import, inspect and split agentic trajectory data")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = commands.add_parser("import", help="convert shipped agentic data into trajectory JSONL")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("inputs", nargs="+", metavar="IN", help="input files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--domain", required=True, help="training domain of every imported record")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N valid records")
    p.add_argument("--tools", default=None, help="JSON file with a list of tool schemas to attach to every record "
                                                 "(for sources that do not ship theirs)")
    p.set_defaults(func=run_import)

    p = commands.add_parser("stats", help="records, tokens, lengths, supervised fraction per domain, skip reasons")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--tokenizer", default="qwen3_5", help=f"one of {', '.join(tokenizers.NAMES)} or a path")
    p.add_argument("--seq-len", type=int, default=None, help="also count records longer than this")
    p.add_argument("--supervise", default="all", choices=("all", "after_last_query"))
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=run_stats)

    p = commands.add_parser("split", help="split a trajectory file into train and held-out files, deterministically")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--heldout", type=int, required=True,
                   help="hold out at least this many records (whole groups, see --group-by)")
    p.add_argument("--group-by", default="id", help="dotted record field whose records stay on one side, e.g. "
                                                    "metadata.task_id so no task has trajectories on both sides")
    p.add_argument("--train-out", required=True)
    p.add_argument("--heldout-out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_split)


def run_import(args) -> int:
    tools = None
    if args.tools:
        tools = json.loads(Path(args.tools).read_text())
        if not isinstance(tools, list):
            raise ValueError(f"{args.tools}: expected a JSON list of tool schemas")
    skips = SkipReport()
    n = write_records(args.out, import_records(args.format, args.inputs, domain=args.domain, strict=args.strict,
                                               skips=skips, tools=tools, limit=args.limit))
    print(f"wrote {n} records to {args.out}")
    print("\n".join(skips.lines()))
    skips.log(f"import {args.format}")
    return 0


def run_stats(args) -> int:
    tokenizer = tokenizers.load(args.tokenizer)
    stats = compute_stats(args.files, tokenizer, cache_dir=args.cache_dir, strict=args.strict,
                          supervise=args.supervise)
    print("\n".join(format_stats(stats, seq_len=args.seq_len)))
    stats["skips"].log("stats")
    return 0


def _field(record: dict, dotted: str):
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"record {record.get('id')!r} has no field {dotted!r} to group by")
        value = value[key]
    return json.dumps(value, sort_keys=True)


def heldout_groups(groups: list[str], n: int, seed: int) -> set[str]:
    """Whole groups, smallest sha256(seed:group) first, until at least n records are held out.

    Hashing makes the choice independent of file order and stable when records are appended."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    if not 0 <= n <= len(groups):
        raise ValueError(f"--heldout {n}: the file has {len(groups)} valid records")
    held, count = set(), 0
    for g in sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()):
        if count >= n:
            break
        held.add(g)
        count += sizes[g]
    return held


def run_split(args) -> int:
    skips = SkipReport()
    records = [r for _, r in read_records(args.file, skips=skips)]
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{args.file}: record ids are not unique, so the split is ambiguous")
    groups = [_field(r, args.group_by) for r in records]
    held = heldout_groups(groups, args.heldout, args.seed)
    n_train = write_records(args.train_out, (r for r, g in zip(records, groups) if g not in held))
    n_held = write_records(args.heldout_out, (r for r, g in zip(records, groups) if g in held))
    print(f"wrote {n_train} records to {args.train_out} and {n_held} to {args.heldout_out}")
    print("\n".join(skips.lines()))
    return 0
