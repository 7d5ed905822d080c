"""Pipeline configuration: one dataclass, loadable from a JSON or YAML file (`--config FILE`)."""
import dataclasses
import json
import pathlib
from dataclasses import dataclass, field
from typing import List, Optional

from llm4msr.errors import UserFacingError

DEFAULT_BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


@dataclass
class PipelineConfig:
    name: str = "llm4msr"
    dataset_dir: str = "runs/data/movielens-latest-small"  # a canonical set (`llm4msr data prepare`)
    root: str = "runs/pipeline"  # pipeline artifacts and the SQLite metadata store
    serving_dir: str = "runs/serving/llm4msr"  # the Pusher writes versioned SavedModels here
    llm_model: str = "minilm"  # alias, local folder or Hugging Face hub id
    llm_backend: str = "encoder"  # encoder | causal-lm
    knowledge_cache_dir: str = ""  # "" = ~/.cache/llm4msr/knowledge
    model: dict = field(default_factory=lambda: {"backbone": "star", "knowledge": "both"})
    train_epochs: int = 3
    seed: int = 0  # training seed (the Trainer is deterministic for a given seed and data)
    batch_size: int = 1024
    auc_floor: float = 0.55  # blessing: AUC at least this in every scenario and overall
    regression_tolerance: float = 0.005  # ... and no more than this below the last blessed model
    schema_path: Optional[str] = None  # a curated schema.pbtxt (ImportSchemaGen) instead of SchemaGen
    beam_args: List[str] = field(default_factory=lambda: list(DEFAULT_BEAM_ARGS))
    enable_cache: bool = True

    @property
    def pipeline_root(self) -> str:
        return str(pathlib.Path(self.root) / "artifacts")

    @property
    def metadata_path(self) -> str:
        return str(pathlib.Path(self.root) / "metadata.sqlite")

    @classmethod
    def load(cls, path: Optional[str] = None, **overrides) -> "PipelineConfig":
        values = _read_file(path) if path else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserFacingError(f"{path or 'config'}: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(known))})")
        return cls(**values)


def _read_file(path: str) -> dict:
    file = pathlib.Path(path)
    if not file.is_file():
        raise UserFacingError(f"{path}: config file not found")
    text = file.read_text()
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml
            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as error:  # yaml and json both name the line in their message
        raise UserFacingError(f"{path}: cannot parse: {error}") from None
    if not isinstance(values, dict):
        raise UserFacingError(f"{path}: expected a mapping of config keys")
    return values
