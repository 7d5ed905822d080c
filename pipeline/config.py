"""Pipeline configuration: one dataclass, loadable from a JSON or YAML file (`--config FILE`)."""
import dataclasses
import hashlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import List, Optional

from llm4msr.contract import KNOWLEDGE_REDUCTION
from llm4msr.errors import UserFacingError
from llm4msr.files import is_uri, join

DEFAULT_BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


@dataclass
class PipelineConfig:
    name: str = "llm4msr"
    dataset_dir: str = "runs/data/movielens-latest-small"  # a canonical set (`llm4msr data prepare`)
    root: str = "runs/pipeline"  # pipeline artifacts (and, for a local root, the SQLite metadata store)
    # local runs' ML Metadata (SQLite, a local folder): "" = the root, or for a URI root (gs://, s3://)
    # ~/.cache/llm4msr/metadata/<hash of the root>
    metadata_dir: str = ""
    serving_dir: str = "runs/serving/llm4msr"  # the Pusher writes versioned SavedModels here
    llm_model: str = "minilm"  # alias, local folder or Hugging Face hub id
    llm_backend: str = "encoder"  # encoder | causal-lm
    llm_precision: str = "auto"  # auto (bfloat16 on CPUs with AMX / AVX-512 BF16, else float32) | float32 | bfloat16
    knowledge_cache_dir: str = ""  # "" = ~/.cache/llm4msr/knowledge
    model: dict = field(default_factory=lambda: {"backbone": "star", "knowledge": "both"})
    # Transform: each knowledge level reduced to this many whitened train principal components
    # (0: the LLM's raw vectors); the pushed store then holds the reduced vectors
    knowledge_reduction: int = KNOWLEDGE_REDUCTION
    # TrainConfig fields (llm4msr.trainer.training: epochs, patience, batch_size, seed, max_steps);
    # the defaults are TrainConfig's, the same as `llm4msr train` and `llm4msr grid`
    training: dict = field(default_factory=dict)
    auc_floor: float = 0.55  # blessing: AUC at least this in every scenario and overall
    # ... and no more than this below the last blessed model: above the retraining noise (the same
    # config spread by up to 0.013 AUC overall, 0.019 in a scenario, over 4 runs on ml-latest-small)
    regression_tolerance: float = 0.02
    calibration_band: List[float] = field(default_factory=lambda: [0.9, 1.1])  # ... mean prediction / mean label
    max_normalized_logloss: float = 1.0  # ... and logloss below this times the constant predictor's
    schema_path: Optional[str] = None  # a curated schema.pbtxt (ImportSchemaGen) instead of SchemaGen
    beam_args: List[str] = field(default_factory=lambda: list(DEFAULT_BEAM_ARGS))
    enable_cache: bool = True

    @property
    def pipeline_root(self) -> str:
        return join(self.root, "artifacts")  # root may be a URI (gs://...)

    @property
    def knowledge_levels(self) -> List[str]:
        """The levels the KnowledgeExtractor embeds: user and scenario always (the serving store),
        item only when the model uses it (one prompt per item of items.csv)."""
        from llm4msr.trainer.model import ModelConfig

        return ["user", "scenario"] + (["item"] if ModelConfig.from_dict(self.model).uses_item_knowledge else [])

    @property
    def metadata_path(self) -> str:
        """Local runs' ML Metadata (SQLite, which needs a local file); on Kubeflow the cluster
        provides the store."""
        if self.metadata_dir:
            folder = self.metadata_dir
        elif is_uri(self.root):
            folder = str(pathlib.Path("~/.cache/llm4msr/metadata").expanduser()
                         / hashlib.sha256(self.root.encode()).hexdigest()[:16])
        else:
            folder = self.root
        return join(folder, "metadata.sqlite")

    @property
    def uris(self) -> List[str]:
        """The configured locations that are URIs (remote storage) rather than local paths."""
        return [path for path in (self.dataset_dir, self.root, self.serving_dir, self.knowledge_cache_dir)
                if is_uri(path)]

    @classmethod
    def load(cls, path: Optional[str] = None, **overrides) -> "PipelineConfig":
        values = _read_file(path) if path else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserFacingError(f"{path or 'config'}: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(known))})")
        config = cls(**values)
        config.validate(path or "config")
        return config

    def validate(self, where: str = "config") -> None:
        """The model and training settings and the blessing bounds, refused before the pipeline starts."""
        from llm4msr.trainer.features import ConfigError
        from llm4msr.trainer.model import ModelConfig
        from llm4msr.trainer.training import TrainConfig

        try:
            ModelConfig.from_dict(self.model)
            TrainConfig.from_dict(self.training)
        except (ConfigError, TypeError) as error:
            raise UserFacingError(f"{where}: {error}") from None
        from llm4msr.pipeline.knowledge.llm import PRECISIONS

        if self.llm_precision not in PRECISIONS:
            raise UserFacingError(f"{where}: llm_precision: expected one of {', '.join(PRECISIONS)}, "
                                  f"got {self.llm_precision!r}")
        band = self.calibration_band
        if (not isinstance(band, (list, tuple)) or len(band) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band) or not 0 < band[0] < band[1]):
            raise UserFacingError(f"{where}: calibration_band: expected [low, high] with 0 < low < high, got {band!r}")
        reduction = self.knowledge_reduction
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 0:
            raise UserFacingError(f"{where}: knowledge_reduction: expected an integer >= 0 (0: no reduction), "
                                  f"got {reduction!r}")
        if is_uri(self.metadata_dir):
            raise UserFacingError(f"{where}: metadata_dir: ML Metadata's SQLite store needs a local folder, "
                                  f"got {self.metadata_dir!r}")
        for name in ("auc_floor", "regression_tolerance", "max_normalized_logloss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserFacingError(f"{where}: {name}: expected a number >= 0, got {value!r}")


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
