"""Where a pushed model lives on disk, as the Pusher writes it and TF Serving reads it, and the
message limits of the gRPC services.

`<model_dir>/<version>/` is a SavedModel, with `assets.extra/knowledge/` (the knowledge store of
that version) and `assets.extra/tf_serving_warmup_requests` (PredictionLogs replayed at load).
Tensor and signature names are in `llm4msr.contract`.
"""
from typing import Dict

from llm4msr.files import entry_names, is_dir, is_file, join

DEFAULT_MODEL_DIR = "runs/serving/llm4msr"  # PipelineConfig.serving_dir
KNOWLEDGE_DIR = "assets.extra/knowledge"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # 1 user x 10k candidates x 2 x 384 floats is ~30 MB
DEFAULT_MAX_BATCH = 1024  # candidates per request; larger lists are split by the client


def version_dirs(model_dir) -> Dict[int, str]:
    """The versions of a served model, as TF Serving's file system source sees them.

    Args:
      model_dir: the folder the Pusher pushes to (`<serving_dir>`), a local path or a URI.

    Returns:
      version number -> folder, for integer-named sub-folders that hold a `saved_model.pb`.
    """
    if not is_dir(model_dir):
        return {}
    return {int(name): join(model_dir, name) for name in entry_names(model_dir)
            if name.isdigit() and is_file(join(model_dir, f"{name}/saved_model.pb"))}
