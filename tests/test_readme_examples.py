"""The README's reuse example runs as written; the pushed-model one runs in test_pipeline_e2e.py."""
import numpy as np

from readme_examples import readme_example


def test_the_keras_reuse_example_trains_saves_and_reloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_example("keras"), "README.md", "exec"), scope)
    features = {name: value[:8] for name, value in scope["features"].items()}
    np.testing.assert_allclose(scope["reloaded"].predict(features, verbose=0),
                               scope["model"].predict(features, verbose=0), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "my_model.keras").is_file()
