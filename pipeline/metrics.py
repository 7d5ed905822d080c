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

# Both metrics derive from one private computation (TFMA runs a computation once for all the
# metrics that list it, by combiner and key, and leaves `_` names out of its results), so each
# example's log-likelihood is computed once per slice, not once per metric.
_SUMS = "_logloss_sums"


def _computations(normalized: bool):
    def computations(name: str, eval_config=None, model_name: str = "", output_name: str = "", sub_key=None,
                     aggregation_type=None, class_weights=None,
                     example_weighted: bool = False) -> metric_types.MetricComputations:
        def metric_key(metric_name):
            return metric_types.MetricKey(name=metric_name, model_name=model_name, output_name=output_name,
                                          sub_key=sub_key, example_weighted=example_weighted)
        key, sums_key = metric_key(name), metric_key(_SUMS)

        def result(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.MetricKey, Any]:
            return {key: metrics[sums_key].value(normalized)}
        return [metric_types.MetricComputation(keys=[sums_key], preprocessors=None,
                                               combiner=_LoglossSums(sums_key, eval_config)),
                metric_types.DerivedMetricComputation(keys=[key], result=result)]
    return computations


class _Accumulator:
    """Weighted sums over a slice: cross-entropy, labels and weights."""
    __slots__ = ("loss", "labels", "weight")

    def __init__(self):
        self.loss, self.labels, self.weight = 0.0, 0.0, 0.0

    def value(self, normalized: bool) -> float:
        """The mean logloss, or (`normalized`) its ratio to the constant predictor's."""
        if self.weight <= 0:
            return float("nan")
        loss = self.loss / self.weight
        if not normalized:
            return loss
        baseline = constant_logloss(self.labels / self.weight)
        return loss / baseline if baseline > 0 else float("nan")


class _LoglossSums(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey, eval_config):
        self._key, self._eval_config = key, eval_config

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
        return {self._key: accumulator}
