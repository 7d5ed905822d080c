"""`llm4msr grid` on the tiny MovieLens fixture (outputs, resume, settings guard) and the lift
arithmetic on a hand-made results table."""
import math

import numpy as np
import pandas as pd
import pytest

from llm4msr.cli import main
from llm4msr.experiments import grid, report, stats

GRID = ["--backbones", "dnn,star", "--knowledge", "none,both", "--seeds", "2", "--epochs", "1",
        "--batch-size", "512"]




@pytest.fixture(scope="module")
def finished_grid(tiny_data, tiny_knowledge, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    code = main(["grid", "--data", str(tiny_data), "--knowledge-dir", str(tiny_knowledge), *GRID,
                 "--out", str(out)])
    assert code == 0
    return out


def test_grid_writes_one_row_per_run_with_every_metric(finished_grid):
    table = pd.read_csv(finished_grid / "results.csv")
    assert len(table) == 8
    assert sorted(zip(table["backbone"], table["knowledge"], table["seed"])) == sorted(
        (b, m, s) for b in ("dnn", "star") for m in ("none", "both") for s in (0, 1))
    for column in ("epochs", "train_seconds", "best_eval_auc", "test_auc", "test_logloss", "test_gauc",
                   "test_examples", "eval_auc"):
        assert column in table
    for scenario in ("S0", "S1", "S2"):
        for metric in ("auc", "logloss", "gauc", "examples"):
            assert f"test_{scenario}_{metric}" in table
    assert (table["test_examples"] == 298).all()  # the fixture's test split
    assert (table[["test_S0_examples", "test_S1_examples", "test_S2_examples"]].sum(axis=1) == 298).all()
    assert table["test_auc"].between(0, 1).all() and (table["epochs"] == 1).all()
    assert (table["train_seconds"] > 0).all()
    assert table["settings"].nunique() == 1


def test_grid_writes_markdown_and_small_plots(finished_grid):
    report = (finished_grid / "results.md").read_text()
    for heading in ("## Overall test AUC", "## Overall test logloss", "## Overall test gAUC",
                    "## Test AUC per scenario", "### S2", "## Lift of each knowledge mode over `none`",
                    "## Target: `both` above `none`"):
        assert heading in report
    assert "| dnn | both |" in report and " ± " in report
    for name in ("auc_per_scenario.png", "lift.png"):
        data = (finished_grid / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
    assert not list(finished_grid.glob(".*.tmp"))  # no temporary files left behind


def test_rerun_skips_finished_runs_and_resumes_missing_ones(finished_grid, tiny_data, tiny_knowledge, capsys,
                                                            monkeypatch):
    table = grid.read_results(finished_grid)
    kept = table[~((table["backbone"] == "star") & (table["knowledge"] == "both") & (table["seed"] == 1))]
    kept.to_csv(finished_grid / "results.csv", index=False)  # as if killed before the last run
    trained = []
    original = grid.Workspace.train

    def counting(self, config, seed, *args, **kwargs):
        trained.append((config.backbone, config.knowledge, seed))
        return original(self, config, seed, *args, **kwargs)
    monkeypatch.setattr(grid.Workspace, "train", counting)
    capsys.readouterr()
    code = main(["grid", "--data", str(tiny_data), "--knowledge-dir", str(tiny_knowledge), *GRID,
                 "--out", str(finished_grid)])
    assert code == 0
    assert trained == [("star", "both", 1)]
    assert "7 already in" in capsys.readouterr().out
    after = pd.read_csv(finished_grid / "results.csv")
    assert len(after) == 8
    pd.testing.assert_frame_equal(after.iloc[:7].reset_index(drop=True), kept.reset_index(drop=True),
                                  check_dtype=False)
    # nothing left: a third invocation trains nothing
    trained.clear()
    assert main(["grid", "--data", str(tiny_data), "--knowledge-dir", str(tiny_knowledge), *GRID,
                 "--out", str(finished_grid)]) == 0
    assert trained == []


def test_other_settings_refuse_to_mix_with_existing_results(finished_grid, tiny_data, tiny_knowledge, capsys):
    code = main(["grid", "--data", str(tiny_data), "--knowledge-dir", str(tiny_knowledge), *GRID,
                 "--set", "learning_rate=0.01", "--out", str(finished_grid)])
    assert code == 2
    assert "other settings" in capsys.readouterr().err


def test_knowledge_modes_without_knowledge_dir_fail_clearly(tiny_data, tmp_path, capsys):
    code = main(["grid", "--data", str(tiny_data), *GRID, "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--knowledge-dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _hand_table():
    """dnn: none 0.70/0.71/0.72, both +0.02 each seed (paired std 0), user +0.001/-0.001/+0.003;
    star: none 0.75/0.75/0.75, both 0.76/0.74/0.78 (noisy)."""
    rows = []
    for seed, base in enumerate([0.70, 0.71, 0.72]):
        rows.append(("dnn", "none", seed, base, base - 0.01))
        rows.append(("dnn", "both", seed, base + 0.02, base - 0.005))  # S0 better
        rows.append(("dnn", "user", seed, base + [0.001, -0.001, 0.003][seed], base - 0.02))  # S0 worse
    for seed, (none, both) in enumerate([(0.75, 0.76), (0.75, 0.74), (0.75, 0.78)]):
        rows.append(("star", "none", seed, none, none))
        rows.append(("star", "both", seed, both, both))
    return pd.DataFrame(rows, columns=["backbone", "knowledge", "seed", "test_auc", "test_S0_auc"])


def test_a_settings_hash_that_looks_like_a_number_still_resumes(tmp_path):
    """A hex hash of digits only with a leading zero ("043227887998") came back from results.csv as
    the number 43227887998 and a resumable grid was refused as "other settings"."""
    grid.write_results(tmp_path, [{"backbone": "dnn", "knowledge": "none", "seed": 0, "settings": "043227887998"}])
    assert grid.read_results(tmp_path)["settings"].tolist() == ["043227887998"]


def test_lift_table_on_a_hand_made_table():
    lifts = stats.lift_table(_hand_table()).set_index(["backbone", "knowledge"])
    both = lifts.loc[("dnn", "both")]
    assert both["lift"] == pytest.approx(0.02) and both["lift_pct"] == pytest.approx(100 * 0.02 / 0.71)
    assert both["std_lift"] == pytest.approx(0.0, abs=1e-12)
    assert both["std_none"] == pytest.approx(0.01) and both["sigma"] == pytest.approx(0.01)
    assert not both["significant"]  # 0.02 is exactly 2 sigma: not more than
    user = lifts.loc[("dnn", "user")]
    assert user["lift"] == pytest.approx(0.001)
    assert user["std_lift"] == pytest.approx(np.std([0.001, -0.001, 0.003], ddof=1))
    star = lifts.loc[("star", "both")]
    assert star["lift"] == pytest.approx(0.01) and star["std_none"] == pytest.approx(0.0)
    assert star["sigma"] == pytest.approx(0.02) and not star["significant"] and star["seeds"] == 3
    assert ("star", "none") not in lifts.index


def test_lift_is_significant_only_beyond_twice_the_largest_std():
    table = _hand_table()
    table.loc[(table["backbone"] == "dnn") & (table["knowledge"] == "both"), "test_auc"] += 0.001
    lifts = stats.lift_table(table).set_index(["backbone", "knowledge"])
    assert lifts.loc[("dnn", "both"), "significant"]  # 0.021 > 2 x 0.01


def test_target_check_requires_significance_and_no_worse_scenario():
    table = _hand_table()
    table.loc[(table["backbone"] == "dnn") & (table["knowledge"] == "both"), "test_auc"] += 0.005
    check = stats.target_check(table, "both").set_index("backbone")
    assert check.loc["dnn", "met"] and check.loc["dnn", "no_scenario_worse"]
    assert check.loc["dnn", "worst_scenario"] == "S0"
    assert check.loc["dnn", "worst_scenario_lift"] == pytest.approx(0.005)
    assert not check.loc["star", "met"]
    user = stats.target_check(table, "user").set_index("backbone")
    assert not user.loc["dnn", "no_scenario_worse"] and not user.loc["dnn", "met"]


def test_report_renders_from_a_hand_made_table(tmp_path):
    table = _hand_table()
    table["test_logloss"], table["test_gauc"], table["train_seconds"], table["epochs"] = 0.6, 0.6, 10.0, 3
    report.write_report(table, tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "| dnn | 0.7100 ± 0.0100 |" in markdown  # none column first
    assert "| dnn | both | +0.0200 | +2.82 % | 0.0000 | 0.0100 | no | 3 |" in markdown
    assert (tmp_path / "lift.png").stat().st_size < 200_000
    assert not math.isnan(stats.summarize(table, "test_auc").loc[("star", "both"), "std"])


def test_key_slices_and_the_target_use_the_mode_chosen_on_eval(tmp_path):
    """The target's mode is the best on eval, not on test: here `user` wins eval but loses test."""
    table = _hand_table()
    table["test_logloss"], table["test_gauc"], table["train_seconds"], table["epochs"] = 0.6, 0.6, 10.0, 3
    table["eval_auc"] = table["test_auc"] + np.where(table["knowledge"] == "user", 0.1, 0.0)
    table["test_user_history=0_auc"] = table["test_auc"] + np.where(table["knowledge"] == "both", 0.05, 0.0)
    table["test_user_history=0_examples"] = 400
    assert stats.best_mode_on_eval(table, "dnn") == "user"
    assert stats.best_mode_on_eval(table, "star") == "both"
    assert stats.best_mode_on_eval(table, "dnn", among=("both", "all")) == "both"  # the best of those it has
    report.write_report(table, tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "new users (no train row) (`user_history=0`)" in markdown
    assert "| dnn | both | **+0.0700 ± 0.0000** |" in markdown  # the key-slice lift, beyond 2σ
    assert "| dnn | user | +0.0010 vs 2σ" in markdown and "missed" in markdown


def test_select_keeps_per_cell_the_candidate_best_on_eval_never_on_test(finished_grid, tmp_path, capsys):
    """Two candidate grids (the finished one and a copy with other model settings): each cell keeps
    the candidate with the better mean eval AUC, even where the other is better on test."""
    import json
    import shutil

    other = tmp_path / "idd0.5"
    shutil.copytree(finished_grid, other)
    settings = json.loads((other / "grid.json").read_text())
    settings["settings"]["model"] = {"id_dropout": 0.5}
    (other / "grid.json").write_text(json.dumps(settings))
    table = grid.read_results(other)
    star_both = (table["backbone"] == "star") & (table["knowledge"] == "both")
    table.loc[star_both, "eval_auc"] += 0.01  # better on eval in this cell only ...
    table.loc[star_both, "test_auc"] -= 0.05  # ... and worse on test: still chosen
    table.loc[~star_both, "eval_auc"] -= 0.01
    table.to_csv(other / "results.csv", index=False)

    out = tmp_path / "selected"
    assert main(["grid", "--select-from", f"{finished_grid},{other}", "--out", str(out)]) == 0
    selected = pd.read_csv(out / "results.csv")
    assert len(selected) == 8
    chosen = selected.groupby(["backbone", "knowledge"])["selected_from"].first().to_dict()
    assert chosen == {("star", "both"): "idd0.5", ("star", "none"): "out", ("dnn", "none"): "out",
                      ("dnn", "both"): "out"}
    record = json.loads((out / "grid.json").read_text())["selection"]
    assert record["candidates"]["idd0.5"] == {"id_dropout": 0.5}
    assert set(record["choice"]["star"]["both"]["eval_auc"]) == {"out", "idd0.5"}
    assert "Settings chosen per backbone and mode on eval" in (out / "results.md").read_text()

    settings["settings"]["epochs"] = 7  # not only the model differs: refused
    (other / "grid.json").write_text(json.dumps(settings))
    assert main(["grid", "--select-from", f"{finished_grid},{other}", "--out", str(tmp_path / "x")]) != 0
    error = capsys.readouterr().err
    assert "differs from" in error and "epochs" in error


def test_a_grid_without_data_is_a_clear_error(tmp_path, capsys):
    assert main(["grid", "--out", str(tmp_path / "out")]) == 2
    assert "--data is needed to run a grid" in capsys.readouterr().err
