"""`create_pipeline(config)`: the LLM4MSR TFX pipeline.

CanonicalExampleGen -> StatisticsGen -> SchemaGen (or ImportSchemaGen) -> ExampleValidator
KnowledgeExtractor (LLM, cached) -> KnowledgeJoiner (Beam join; gate on anomalies)
-> Transform -> Trainer -> Resolver (the last blessed model before this run's) -> Evaluator (per scenario) -> Pusher
"""

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

import llm4msr.pipeline
import llm4msr.pipeline.data
import llm4msr.serving
import llm4msr.trainer
import llm4msr.transform
from llm4msr.contract import DEFAULT_SIGNATURE, LABEL, PREDICTION_KEY, SCENARIO, TRANSFORM_SIGNATURE
from llm4msr.files import absolute, source_fingerprint, with_beam_plugins
from llm4msr.pipeline import baseline, components, metrics
from llm4msr.pipeline.data.canonical import dataset_fingerprint
from llm4msr.pipeline.config import PipelineConfig
from llm4msr.transform.preprocessing import SLICES

DATA_READERS = ("CanonicalExampleGen", "KnowledgeExtractor")  # the components reading the data set
SCENARIO_SLICE = tfma.SlicingSpec(feature_keys=[SCENARIO])
BLESSING_SLICES = [tfma.SlicingSpec(), SCENARIO_SLICE]  # overall and every scenario


def create_pipeline(config: PipelineConfig, kubeflow: bool = False) -> tfx.dsl.Pipeline:
    """The pipeline for `config`. `kubeflow=True` for KubeflowV2DagRunner: nothing is read at
    compile time (the data may sit on storage only the cluster reaches), so the data fingerprint
    is left to the components, and the resolver is TFX's built-in one (see `_baseline_resolver`)."""
    dataset_dir = location(config.dataset_dir)
    # a parameter, so changed data is never a cache hit; "" = the component fingerprints the data itself
    fingerprint = "" if kubeflow else dataset_fingerprint(dataset_dir)
    # in every cache key next to the data: a component reruns when the code it runs changed
    # (the Transform reads items.csv and users.csv through pipeline/data; run_fn imports pipeline/)
    pipeline_code = source_fingerprint(llm4msr.pipeline)
    transform_code = source_fingerprint(llm4msr.transform, llm4msr.pipeline.data)
    trainer_code = source_fingerprint(llm4msr.trainer, llm4msr.transform, llm4msr.serving, llm4msr.pipeline)

    example_gen = components.CanonicalExampleGen(dataset_dir=dataset_dir, dataset_fingerprint=fingerprint,
                                                 code_fingerprint=pipeline_code)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if config.schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=location(config.schema_path))
    else:
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                              infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                                        schema=schema_gen.outputs["schema"])
    knowledge_extractor = components.KnowledgeExtractor(
        dataset_dir=dataset_dir, dataset_fingerprint=fingerprint, model=config.llm_model,
        backend=config.llm_backend, precision=config.llm_precision, cache_dir=config.knowledge_cache_dir,
        levels=",".join(config.knowledge_levels), code_fingerprint=pipeline_code)
    knowledge_joiner = components.KnowledgeJoiner(
        examples=example_gen.outputs["examples"], knowledge=knowledge_extractor.outputs["knowledge"],
        schema=schema_gen.outputs["schema"], anomalies=example_validator.outputs["anomalies"],
        code_fingerprint=pipeline_code)
    transform = tfx.components.Transform(
        examples=knowledge_joiner.outputs["joined_examples"], schema=knowledge_joiner.outputs["joined_schema"],
        preprocessing_fn="llm4msr.transform.preprocessing.preprocessing_fn",
        custom_config={"dataset_dir": dataset_dir, "knowledge_reduction": config.knowledge_reduction, "code": transform_code},
        materialize=False,  # the Trainer applies the graph to the joined examples itself
        disable_statistics=True,  # StatisticsGen has them; pre/post-transform statistics were read by no one
        disable_analyzer_cache=True)  # TFX caches the whole component; the per-analyzer cache cost stages
    trainer = tfx.components.Trainer(
        run_fn="llm4msr.trainer.run_fn.run_fn",
        examples=knowledge_joiner.outputs["joined_examples"],  # raw: run_fn applies the Transform graph
        transform_graph=transform.outputs["transform_graph"],
        schema=knowledge_joiner.outputs["joined_schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=config.training.get("max_steps")),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config={"model": config.model, "training": config.training, "dataset_dir": dataset_dir,
                       "code": trainer_code})
    model_resolver = _baseline_resolver(trainer, kubeflow)
    evaluator = tfx.components.Evaluator(
        examples=knowledge_joiner.outputs["joined_examples"], model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"], example_splits=["test"],
        eval_config=eval_config(config))
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=location(config.serving_dir))))

    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=location(config.pipeline_root),
        components=[example_gen, statistics_gen, schema_gen, example_validator, knowledge_extractor,
                    knowledge_joiner, transform, trainer, model_resolver, evaluator, pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=None if kubeflow else tfx.orchestration.metadata.sqlite_metadata_connection_config(
            location(config.metadata_path)),
        beam_pipeline_args=with_beam_plugins(config.beam_args, config.uris),
    )


def _baseline_resolver(trainer, kubeflow: bool) -> tfx.dsl.Resolver:
    """The last blessed model other than this run's (so an unchanged rerun's Evaluator is cached).
    KubeflowV2DagRunner compiles only TFX's built-in strategies: there, the latest blessed model
    (a rerun compares the candidate with itself, which passes the change threshold)."""
    models = dict(model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
                  model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing))
    if kubeflow:
        return tfx.dsl.Resolver(strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
                                **models).with_id("latest_blessed_model_resolver")
    return tfx.dsl.Resolver(strategy_class=baseline.PreviousBlessedModelStrategy,
                            **{baseline.CANDIDATE: trainer.outputs["model"]}, **models
                            ).with_id("latest_blessed_model_resolver")


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """AUC, logloss, normalised logloss, calibration and counts overall, per scenario and per user
    history / item popularity bucket. Blessing, overall and in every scenario: AUC at least
    `auc_floor` and no more than `regression_tolerance` below the last blessed model (TFMA skips the
    change threshold while there is no baseline), calibration (mean prediction / mean label) within
    `calibration_band`, and logloss below `max_normalized_logloss` times the constant predictor's."""
    low, high = config.calibration_band

    def gate(threshold: tfma.MetricThreshold):
        return [tfma.PerSliceMetricThreshold(slicing_specs=BLESSING_SLICES, threshold=threshold)]

    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.auc_floor}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -config.regression_tolerance}))
    calibration_threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        lower_bound={"value": low}, upper_bound={"value": high}))
    logloss_threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        upper_bound={"value": config.max_normalized_logloss}))
    return tfma.EvalConfig(
        # tf_generic: TFMA calls the signatures; otherwise it loads the model as Keras first just to
        # find out its type
        model_specs=[tfma.ModelSpec(model_type=tfma.TF_GENERIC, signature_name=DEFAULT_SIGNATURE, label_key=LABEL,
                                    prediction_key=PREDICTION_KEY,
                                    preprocessing_function_names=[TRANSFORM_SIGNATURE])],
        slicing_specs=[*BLESSING_SLICES, *(tfma.SlicingSpec(feature_keys=[name]) for name in SLICES)],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=gate(auc_threshold)),
            tfma.MetricConfig(class_name="Logloss", module=metrics.__name__),
            tfma.MetricConfig(class_name="NormalizedLogloss", module=metrics.__name__,
                              per_slice_thresholds=gate(logloss_threshold)),
            tfma.MetricConfig(class_name="Calibration", per_slice_thresholds=gate(calibration_threshold)),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
            tfma.MetricConfig(class_name="ExampleCount"),
        ])])


def location(path: str) -> str:
    """A URI (gs://, s3://) unchanged, a local path made absolute (components run elsewhere)."""
    return absolute(path)
