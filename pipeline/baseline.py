"""The Evaluator's baseline: the latest blessed model that is not this run's candidate.

TFX's `LatestBlessedModelStrategy` returns the latest blessed model, which after a run that
blessed its model is that very model. An unchanged rerun (Trainer cached) then compared the
candidate with itself, and because the baseline input had changed from "none" to the candidate,
the Evaluator reran (the only component of an unchanged rerun that did). Leaving the candidate
out keeps the Evaluator's inputs of a rerun equal to the first run's, so TFX's cache answers.
"""
from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver

CANDIDATE = "candidate"  # the Trainer's model of this run (input key of the resolver)
MODEL, BLESSING = "model", "model_blessing"


class PreviousBlessedModelStrategy(resolver.ResolverStrategy):
    """Inputs `candidate` (this run's model), `model` and `model_blessing` (all of the pipeline's);
    output `model`/`model_blessing`: the latest blessed model other than the candidate, or none."""

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        candidates = {model.id for model in input_dict[CANDIDATE]}
        blessing_by_model = {blessing.get_int_custom_property("current_model_id"): blessing
                             for blessing in input_dict[BLESSING] if blessing.get_int_custom_property("blessed") == 1}
        previous = [model for model in input_dict[MODEL] if model.id in blessing_by_model and model.id not in candidates]
        latest = max(previous, key=lambda model: model.id, default=None)
        return {CANDIDATE: input_dict[CANDIDATE],
                MODEL: [latest] if latest else [],
                BLESSING: [blessing_by_model[latest.id]] if latest else []}
