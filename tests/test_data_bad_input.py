"""Bad input: each error names file, line and field, and nothing half-written is left in --out."""
import os
import shutil

import pytest

from llm4msr.cli import main
from llm4msr.errors import DataError
from llm4msr.pipeline.data.prepare import prepare
from movielens_files import write_1m

RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,2.0,200\n2,1,5.0,300\n"
MOVIES = "movieId,title,genres\n1,Heat (1995),Action\n2,Babe (1995),Children|Comedy\n"


def _latest(tmp_path, ratings=RATINGS, movies=MOVIES):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    (folder / "ratings.csv").write_text(ratings) if isinstance(ratings, str) else (folder / "ratings.csv").write_bytes(ratings)
    (folder / "movies.csv").write_text(movies) if isinstance(movies, str) else (folder / "movies.csv").write_bytes(movies)
    return folder


def _prepare_error(folder, out) -> DataError:
    with pytest.raises(DataError) as caught:
        prepare("movielens-latest-small", out, data_dir=folder, download=False)
    assert not out.exists()
    return caught.value


@pytest.mark.parametrize("ratings, movies, file, line, field, words", [
    ("userId,movieId,timestamp\n1,1,100\n", MOVIES, "ratings.csv", 1, None, "missing column(s) rating"),
    (RATINGS.replace("2.0", "two"), MOVIES, "ratings.csv", 3, "rating", "cannot parse 'two' as a number"),
    (RATINGS.replace(",200", ",2x0"), MOVIES, "ratings.csv", 3, "timestamp", "as an integer"),
    (RATINGS.replace(",200", ",99999999999999999999999"), MOVIES, "ratings.csv", 3, "timestamp",
     "timestamp '99999999999999999999999' is out of range"),
    (RATINGS.replace(",300", ",-5"), MOVIES, "ratings.csv", 4, "timestamp", "timestamp '-5' is out of range"),
    (RATINGS.replace("2.0", "x" * 10_000_000), MOVIES, "ratings.csv", 3, "rating", "(10,000,000 characters)"),
    (RATINGS.replace("5.0", "7.5"), MOVIES, "ratings.csv", 4, "rating", "outside 0.5..5"),
    ("", MOVIES, "ratings.csv", None, None, "file is empty"),
    ("userId,movieId,rating,timestamp\n", MOVIES, "ratings.csv", None, None, "no data rows"),
    (RATINGS + "1,2,3.0,200\n", MOVIES, "ratings.csv", 5, "user_id,item_id,timestamp", "first seen on line 3"),
    (RATINGS + "3,9,3.0,200\n", MOVIES, "ratings.csv", 5, "movieId", "item '9' is not in movies.csv"),
    (RATINGS, MOVIES.replace("Babe", "B\xe9b\xe9").encode("iso-8859-1"), "movies.csv", 3, None, "not valid utf-8"),
    (RATINGS, MOVIES + "3,,Drama\n", "movies.csv", 4, "title", "value is missing or empty"),
])
def test_movielens_bad_input(tmp_path, ratings, movies, file, line, field, words):
    error = _prepare_error(_latest(tmp_path, ratings, movies), tmp_path / "out")
    assert error.path.endswith(file) and error.line == line and error.field == field
    assert words in str(error) and len(str(error)) < 400  # a bad value is quoted by a short prefix


def test_1m_wrong_separator_count_names_line(tmp_path):
    folder = write_1m(tmp_path / "ml-1m")
    (folder / "ratings.dat").write_text("1::1::5::978300001\n1::2::4\n")
    with pytest.raises(DataError, match=r"ratings.dat, line 2, field 'timestamp': value is missing or empty"):
        prepare("movielens-1m", tmp_path / "out", data_dir=tmp_path, download=False)


def _canonical(tmp_path, interactions, scenarios=None):
    folder = tmp_path / "canon"
    folder.mkdir(exist_ok=True)
    (folder / "items.csv").write_text("item_id,title\ni1,Heat\ni2,Babe\n")
    (folder / "scenarios.json").write_text(scenarios or '{"scenarios": [{"id": "feed", "name": "feed", '
                                                        '"description": "home feed"}]}')
    (folder / "interactions.csv").write_text(interactions)
    return folder


@pytest.mark.parametrize("interactions, scenarios, file, line, field, words", [
    ("user_id,item_id,scenario,label\nu1,i1,feed,1\nu1,i2,search,0\n", None, "interactions.csv", 3,
     "scenario", "unknown scenario id 'search'"),
    ("user_id,item_id,scenario,label\nu1,i1,feed,yes\n", None, "interactions.csv", 2, "label", "unknown label 'yes'"),
    ("user_id,item_id,scenario,label,timestamp\nu1,i1,feed,1,5\nu1,i1,feed,0,5\n", None, "interactions.csv", 3,
     "user_id,item_id,timestamp", "duplicate"),
    ("user_id,item_id,scenario,label,timestamp\nu1,i1,feed,1,5\nu1,i2,feed,0,1e23\n", None, "interactions.csv", 3,
     "timestamp", "timestamp '1e23' is out of range"),
    ("user_id,item_id,scenario,label\nu1,i1,feed,1\n", '{"scenarios": [{"id": "feed"}]}', "scenarios.json", None,
     "scenarios[0].name", "has no 'name'"),
    ("user_id,item_id,scenario,label\nu1,i1,feed,1\n", '{"scenarios": [', "scenarios.json", 1, None, "invalid JSON"),
    ("user_id,item_id,scenario,label\nu1,i1,feed,1\n", None, "interactions.csv", None, None,
     "the time split needs a 'timestamp' column"),
])
def test_canonical_bad_input(tmp_path, interactions, scenarios, file, line, field, words):
    folder = _canonical(tmp_path, interactions, scenarios)
    with pytest.raises(DataError) as caught:
        prepare("canonical", tmp_path / "out", data_dir=folder)
    error = caught.value
    assert error.path.endswith(file) and error.line == line and error.field == field, str(error)
    assert words in str(error)
    assert not (tmp_path / "out").exists()


def test_failed_prepare_keeps_previous_output_and_leaves_no_temp(tiny_movielens, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", "--data-dir", str(tiny_movielens), "--out", str(out), "--no-download"]) == 0
    before = (out / "interactions.csv").read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_movielens, broken)
    (broken / "ratings.csv").write_text((broken / "ratings.csv").read_text().replace("4.0", "four", 1))
    assert main(["data", "prepare", "--data-dir", str(broken), "--out", str(out), "--no-download"]) == 2
    assert "ratings.csv, line" in capsys.readouterr().err
    assert (out / "interactions.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out"]


def test_staging_left_by_a_killed_run_is_removed_by_the_next_run_of_the_same_output(tiny_movielens, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    abandoned = tmp_path / f".out.staging.{dead}.abc123"
    live = tmp_path / f".out.staging.{os.getpid()}.def456"  # a run in progress: kept
    other = tmp_path / f".other.staging.{dead}.ghi789"  # another output's: not ours to touch
    for folder in (abandoned, live, other):
        folder.mkdir()
        (folder / "interactions.csv").write_text("half-written")
    assert main(["data", "prepare", "--data-dir", str(tiny_movielens), "--out", str(tmp_path / "out"),
                 "--no-download"]) == 0
    assert not abandoned.exists() and live.exists() and other.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask  # published with the umask's rights, not 0700


def test_an_out_that_is_not_ours_is_never_replaced(tiny_movielens, tmp_path, capsys):
    def prepare_into(out):
        return main(["data", "prepare", "--data-dir", str(tiny_movielens), "--out", str(out), "--no-download"])

    theirs = tmp_path / "thesis"
    theirs.mkdir()
    (theirs / "chapter1.tex").write_text("months of work")
    assert prepare_into(theirs) == 2
    assert "was not written by llm4msr" in capsys.readouterr().err
    assert (theirs / "chapter1.tex").read_text() == "months of work" and len(list(theirs.iterdir())) == 1
    (theirs / "manifest.json").write_text("{}")  # a common file name alone does not make it ours
    assert prepare_into(theirs) == 2 and (theirs / "chapter1.tex").exists()
    capsys.readouterr()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert prepare_into(a_file) == 2 and "is not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"
    assert prepare_into("/") == 2 and "cannot be an output folder" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or retired folder left
    # an empty folder and our own previous output are replaced
    (tmp_path / "empty").mkdir()
    assert prepare_into(tmp_path / "empty") == 0 and (tmp_path / "empty" / ".llm4msr-output").is_file()
    assert prepare_into(tmp_path / "empty") == 0


# --- fuzz: whatever the files hold, the readers accept them or name file and line ---------------------

def _fuzz_rows(header):
    from hypothesis import strategies as st

    plausible = st.sampled_from(["u1", "i1", "i2", "feed", "search", "0", "1", "5", "-5", "1e23", "4.0", "", " "])
    junk = st.text(max_size=12) | st.sampled_from(['"', '""', ",", "\n", "\r\n", "\x00", "\ufeff", "9" * 30])
    row = st.lists(plausible | junk, min_size=0, max_size=len(header.split(",")) + 1).map(",".join)
    return st.lists(row, max_size=8).map(lambda rows: header + "\n" + "\n".join(rows) + "\n")


def _fuzz_settings():
    from hypothesis import HealthCheck, settings

    return settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _accepted_or_named(read, folder, file):
    try:
        read(folder)
    except DataError as error:
        assert error.path.endswith(file) and len(str(error)) < 400, str(error)


def test_fuzz_canonical_interactions(tmp_path):
    from hypothesis import given, strategies as st

    from llm4msr.pipeline.data.canonical import read_dataset

    folder = _canonical(tmp_path, "")
    header = "user_id,item_id,scenario,label,timestamp"

    @_fuzz_settings()
    @given(_fuzz_rows(header) | st.binary(max_size=300).map(lambda b: header.encode() + b"\n" + b))
    def check(content):
        target = folder / "interactions.csv"
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content, encoding="utf-8")
        _accepted_or_named(read_dataset, folder, "interactions.csv")

    check()


def test_fuzz_movielens_ratings_and_movies(tmp_path):
    from hypothesis import given

    from llm4msr.pipeline.data.movielens import read_latest

    @_fuzz_settings()
    @given(_fuzz_rows("userId,movieId,rating,timestamp"), _fuzz_rows("movieId,title,genres"))
    def check(ratings, movies):
        folder = _latest(tmp_path, RATINGS + ratings.split("\n", 1)[1], MOVIES + movies.split("\n", 1)[1])
        try:
            read_latest(folder)
        except DataError as error:
            assert error.path.endswith(("ratings.csv", "movies.csv")) and len(str(error)) < 400, str(error)

    check()
