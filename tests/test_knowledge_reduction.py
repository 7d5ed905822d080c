"""The knowledge normalisation and reduction of the feature contract (`preprocessing.normalize_knowledge`):
fitted on train rows only, centred and scaled on them, applied to the tables the fast path gathers from."""
import numpy as np
import pytest

from llm4msr.pipeline.data import canonical
from llm4msr.pipeline.knowledge.artifact import read_knowledge
from llm4msr.trainer.fast import ExampleEncoder
from llm4msr.contract import ITEM_KNOWLEDGE, SCENARIO_KNOWLEDGE, USER_KNOWLEDGE

WIDTH = 4


@pytest.fixture(scope="module")
def encoded(tiny_data, tiny_knowledge):
    dataset, knowledge = canonical.read_dataset(tiny_data), read_knowledge(tiny_knowledge)
    return dataset, knowledge, ExampleEncoder(dataset, knowledge, WIDTH)


def _train_row_vectors(dataset, encoder, name):
    _, column, index, vectors = encoder.tables[name]
    return vectors[dataset.split("train")[column].map(index).to_numpy()]


def test_reduced_knowledge_is_centred_and_decorrelated_on_the_train_rows(encoded):
    dataset, _, encoder = encoded
    assert encoder.input_spec().knowledge_dims == {USER_KNOWLEDGE: WIDTH, SCENARIO_KNOWLEDGE: WIDTH,
                                                   ITEM_KNOWLEDGE: WIDTH}
    for name in (USER_KNOWLEDGE, ITEM_KNOWLEDGE):
        rows = _train_row_vectors(dataset, encoder, name)
        np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-4, err_msg=name)
        variance = rows.var(axis=0)
        assert variance.sum() == pytest.approx(1.0, rel=1e-3) and np.all(np.diff(variance) <= 1e-4), name
        np.testing.assert_allclose(np.corrcoef(rows.T), np.eye(WIDTH), atol=1e-3, err_msg=name)  # decorrelated


def test_without_a_reduction_the_knowledge_is_centred_and_scaled_at_the_llms_width(encoded):
    dataset, knowledge, _ = encoded
    encoder = ExampleEncoder(dataset, knowledge, 0)
    assert encoder.input_spec().user_knowledge_dim == knowledge.dim
    train = dataset.split("train")
    raw = np.stack([knowledge.user_vector(u) for u in train["user_id"]])
    rows = _train_row_vectors(dataset, encoder, USER_KNOWLEDGE)
    expected = (raw - raw.mean(axis=0)) / np.sqrt(raw.var(axis=0).sum())
    np.testing.assert_allclose(rows, expected, atol=1e-4)
    assert (rows ** 2).sum(axis=1).mean() == pytest.approx(1.0, rel=1e-3)


def test_the_reduction_keeps_the_top_principal_directions(encoded):
    dataset, knowledge, encoder = encoded
    train = dataset.split("train")
    raw = np.stack([knowledge.user_vector(u) for u in train["user_id"]])
    centred = raw - raw.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred.T, bias=True))
    top = eigenvectors[:, ::-1][:, :WIDTH]
    expected = centred @ top / np.sqrt(eigenvalues[::-1][:WIDTH].sum())
    reduced = _train_row_vectors(dataset, encoder, USER_KNOWLEDGE)
    np.testing.assert_allclose(np.abs(reduced), np.abs(expected), atol=2e-3)  # up to each direction's sign


def test_scenario_directions_without_train_variance_stay_near_zero(encoded):
    _, _, encoder = encoded
    scenarios = encoder.tables[SCENARIO_KNOWLEDGE][3]  # 3 scenario vectors span 2 directions
    assert np.all(np.abs(scenarios[:, 2:]) < 1e-3) and np.abs(scenarios[:, :2]).max() > 0.1


def test_the_reduction_is_fitted_on_train_rows_only(encoded, tiny_data, tiny_knowledge, tmp_path):
    """Changing only eval and test rows (other items, other labels) gives the same statistics."""
    dataset, knowledge, encoder = encoded
    changed = canonical.read_dataset(tiny_data)
    held = changed.interactions["split"] != "train"
    items = changed.interactions["item_id"].to_numpy()
    changed.interactions.loc[held, "item_id"] = np.roll(items[held.to_numpy()], 7)
    changed.interactions.loc[held, "label"] = 1 - changed.interactions.loc[held, "label"]
    changed.interactions = changed.interactions.drop_duplicates(["user_id", "item_id", "timestamp"])
    canonical.write_dataset(changed, tmp_path / "changed")
    other = ExampleEncoder(canonical.read_dataset(tmp_path / "changed"), knowledge, WIDTH)
    for name in (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE):
        np.testing.assert_allclose(other.tables[name][3], encoder.tables[name][3], atol=1e-5, err_msg=name)
    # the item table covers the items of every split, so compare the items both sets have
    _, _, index, reduced = encoder.tables[ITEM_KNOWLEDGE]
    _, _, other_index, other_reduced = other.tables[ITEM_KNOWLEDGE]
    shared = sorted(set(index) & set(other_index))
    np.testing.assert_allclose(other_reduced[[other_index[i] for i in shared]], reduced[[index[i] for i in shared]],
                               atol=1e-5)


def test_a_reduction_wider_than_the_vectors_is_a_clear_error(tiny_data, tiny_knowledge):
    with pytest.raises(Exception, match="knowledge_reduction 41 is wider than the user_knowledge vectors"):
        ExampleEncoder(canonical.read_dataset(tiny_data), read_knowledge(tiny_knowledge), 41)
