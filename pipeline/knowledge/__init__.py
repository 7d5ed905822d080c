"""LLM knowledge extraction: scenario- and user-level prompts through a frozen LLM, cached."""
