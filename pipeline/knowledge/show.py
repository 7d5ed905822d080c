"""The interpretability view: one user's, scenario's or item's prompt, generated text and vector norm,
from a knowledge folder or rebuilt from the data set (with the vector when the cache holds it)."""
from typing import Optional

import numpy as np

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, ITEM, SCENARIO, USER, KnowledgeRecord, read_knowledge


def describe(dataset_dir, user: Optional[str] = None, scenario: Optional[str] = None, knowledge_dir=None,
             model: str = "minilm", backend: Optional[str] = None, max_new_tokens: int = 64, templates=None,
             cache_dir=None, item: Optional[str] = None, precision: str = "auto") -> str:
    level, wanted = next((lv, value) for lv, value in ((USER, user), (ITEM, item), (SCENARIO, scenario))
                         if value is not None)
    if knowledge_dir:
        record, source = _from_knowledge(knowledge_dir, level, wanted)
    else:
        record, source = _rebuilt(dataset_dir, level, wanted, model, backend, max_new_tokens, templates, cache_dir,
                                  precision)
    return _format(level, wanted, record, source)


def _from_knowledge(knowledge_dir, level: str, wanted: str):
    knowledge = read_knowledge(knowledge_dir)
    table = {USER: knowledge.users, ITEM: knowledge.items, SCENARIO: knowledge.scenarios}[level]
    if level == ITEM and not table:
        raise UserFacingError(f"{knowledge_dir} has no item level (extracted with --levels user,scenario)")
    if wanted in table:
        return table[wanted], f"knowledge folder {knowledge_dir}"
    if level == SCENARIO:
        raise UserFacingError(f"no scenario {wanted!r} in {knowledge_dir} (have: {', '.join(sorted(table))})")
    return table[COLD_START_ID], f"knowledge folder {knowledge_dir}; unknown {level}: the cold-start row"


def _rebuilt(dataset_dir, level, wanted, model, backend, max_new_tokens, templates, cache_dir, precision):
    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.pipeline.knowledge.cache import KnowledgeCache, cache_key, default_cache_dir
    from llm4msr.pipeline.knowledge.llm import load_tokenizer, resolve_model, token_counter
    from llm4msr.pipeline.knowledge.prompts import build_prompts
    from llm4msr.pipeline.knowledge.templates import load_templates

    spec = resolve_model(model, backend=backend, max_new_tokens=max_new_tokens, precision=precision)
    prompts = build_prompts(read_dataset(dataset_dir), load_templates(templates),
                            token_counter(load_tokenizer(spec)), spec.prompt_budget,
                            (USER, SCENARIO, ITEM) if level == ITEM else (USER, SCENARIO))
    found = {p.id: p for p in prompts if p.level == level}
    source = f"rebuilt from {dataset_dir}"
    if wanted not in found:
        if level == SCENARIO:
            raise UserFacingError(f"no scenario {wanted!r} in {dataset_dir} (have: {', '.join(sorted(found))})")
        wanted, source = COLD_START_ID, source + f"; unknown {level}: the cold-start prompt"
    prompt = found[wanted]
    record = KnowledgeRecord(wanted, np.zeros(0, np.float32), prompt.text, prompt.prompt_hash)
    cache = KnowledgeCache(cache_dir or default_cache_dir(), spec.fingerprint)
    key = cache_key(prompt.template_version, prompt.prompt_hash)
    chunk = cache.index().get(key)
    if chunk is None:
        return record, source + "; not in the cache (run `llm4msr knowledge extract`)"
    _, record.vector, record.text = next(iter(cache.read(chunk, [key])))
    return record, source + f"; vector from the cache {cache.folder}"


def _format(level: str, wanted: str, record: KnowledgeRecord, source: str) -> str:
    lines = [f"{level} {wanted} ({source})", f"prompt hash: {record.prompt_hash}", "--- prompt ---", record.prompt]
    if record.text:
        lines += ["--- generated text ---", record.text]
    if record.vector.size:
        lines.append(f"vector: {record.vector.shape[0]} dimensions, norm {float(np.linalg.norm(record.vector)):.6f}")
    else:
        lines.append("vector: not available")
    return "\n".join(lines)
