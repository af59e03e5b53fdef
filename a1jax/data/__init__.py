"""Agentic trajectories -> packed training batches.

  schema.py        the trajectory record (JSONL) and its validation (`RecordError` with a reason code)
  records.py       reading/writing record files; bad records raise (strict) or are skipped and counted
  importers/       tau-bench, ToolBench and SWE-agent data -> records (`a1jax data import`)
  tokenizers/      `load("qwen3_5" | "qwen3" | "mistral_v3" | PATH) -> Tokenizer`, files shipped in a1jax/assets
  chat.py          the Qwen3.5 chat template (`render`) and `tokenize_trajectory` (tokens + loss mask)
  chat_reference.py  the jinja2 rendering of the official template that `render` is tested against
  cache.py         tokenized files as memory-mapped .npy, keyed by data and tokenizer hash
  packing.py       overlong policy (drop / split at turn boundaries), first/best-fit packing into [B, T]
  pipeline.py      grain pipeline: shuffle, weighted mixture, epochs, sharding, resumable iterator
  stats.py, cli.py `a1jax data stats|import|split`
"""
