"""TFMA metrics for the Evaluator, computed in Python by Beam combiners (no TensorFlow per batch):

- `Logloss`: the mean binary cross-entropy of the predictions;
- `NormalizedLogloss`, for the blessing: the model's logloss divided by the logloss of the constant
  predictor that always predicts the slice's mean label (normalised entropy). Below 1 means the
  model beats the constant; a value of 1 or more means a miscalibrated or useless model, whatever
  its AUC.

Use them as `tfma.MetricConfig(class_name="Logloss" or "NormalizedLogloss", module="llm4msr.pipeline.metrics")`.
"""
import math
from typing import Any, Dict, Iterable

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util

LOGLOSS = "logloss"
NORMALIZED_LOGLOSS = "normalized_logloss"
EPSILON = 1e-7


def constant_logloss(mean_label: float) -> float:
    """Logloss of always predicting `mean_label` on data whose positive rate is `mean_label`."""
    p = min(max(mean_label, EPSILON), 1 - EPSILON)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


class Logloss(metric_types.Metric):
    def __init__(self, name: str = LOGLOSS):
        super().__init__(metric_util.merge_per_key_computations(_computations(normalized=False)), name=name)


class NormalizedLogloss(metric_types.Metric):
    def __init__(self, name: str = NORMALIZED_LOGLOSS):
        super().__init__(metric_util.merge_per_key_computations(_computations(normalized=True)), name=name)


metric_types.register_metric(Logloss)
metric_types.register_metric(NormalizedLogloss)


def _computations(normalized: bool):
    def computations(name: str, eval_config=None, model_name: str = "", output_name: str = "", sub_key=None,
                     aggregation_type=None, class_weights=None,
                     example_weighted: bool = False) -> metric_types.MetricComputations:
        key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name, sub_key=sub_key,
                                     example_weighted=example_weighted)
        return [metric_types.MetricComputation(keys=[key], preprocessors=None,
                                               combiner=_Combiner(key, eval_config, normalized))]
    return computations


class _Accumulator:
    __slots__ = ("loss", "labels", "weight")

    def __init__(self):
        self.loss, self.labels, self.weight = 0.0, 0.0, 0.0


class _Combiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey, eval_config, normalized: bool):
        self._key, self._eval_config, self._normalized = key, eval_config, normalized

    def create_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def add_input(self, accumulator: _Accumulator, element) -> _Accumulator:
        for label, prediction, weight in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, example_weighted=self._key.example_weighted):
            label, weight = float(np.asarray(label).reshape(-1)[0]), float(np.asarray(weight).reshape(-1)[0])
            p = min(max(float(np.asarray(prediction).reshape(-1)[0]), EPSILON), 1 - EPSILON)
            accumulator.loss -= weight * (label * math.log(p) + (1 - label) * math.log(1 - p))
            accumulator.labels += weight * label
            accumulator.weight += weight
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        merged = _Accumulator()
        for accumulator in accumulators:
            merged.loss += accumulator.loss
            merged.labels += accumulator.labels
            merged.weight += accumulator.weight
        return merged

    def extract_output(self, accumulator: _Accumulator) -> Dict[metric_types.MetricKey, Any]:
        if accumulator.weight <= 0:
            return {self._key: float("nan")}
        loss = accumulator.loss / accumulator.weight
        if not self._normalized:
            return {self._key: loss}
        baseline = constant_logloss(accumulator.labels / accumulator.weight)
        return {self._key: loss / baseline if baseline > 0 else float("nan")}
