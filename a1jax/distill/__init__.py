"""Stage 3: multi-teacher on-policy distillation (`recipe.md` §2, §3, §6): cross-tokenizer alignment and losses."""
