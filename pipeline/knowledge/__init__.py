"""LLM knowledge extraction: scenario-, user- and item-level prompts through a frozen LLM, cached.

- `templates/*.tmpl`, `templates.py`: the prompt wording (versioned by content hash);
- `prompts.py`: prompts from the train split, trimmed to the model's token budget;
- `llm.py`: model resolution (alias, folder, hub id), fingerprint, `encoder` / `causal-lm` backends;
- `cache.py`: the content-addressed, chunked cache (resumable);
- `extract.py`: the entry point `extract_knowledge(...)`: skips an artifact that is current, publishes atomically;
- `beam_job.py`: the Beam job (cache lookup, batched inference, join, Parquet);
- `artifact.py`: the output format read by the joiner, trainer and serving;
- `cli.py`, `show.py`: `llm4msr knowledge extract | show`.
"""
