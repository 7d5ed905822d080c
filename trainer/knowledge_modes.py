"""The knowledge switch of `ModelConfig.knowledge` (no TensorFlow import: the CLIs list it in --help).

A mode names a set of knowledge levels; `knowledge` may also be a list of levels, or levels joined
by '+' (`"user+item"`)."""

KNOWLEDGE_LEVELS = ("user", "scenario", "item")
KNOWLEDGE_MODES = {"none": (), "user": ("user",), "scenario": ("scenario",), "item": ("item",),
                   "both": ("user", "scenario"), "all": KNOWLEDGE_LEVELS}
