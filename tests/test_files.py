"""Atomic publication (`llm4msr.files`) on local paths and, through tf.io.gfile, on URIs: the
same contract on both (here `file://`, the gfile code path that gs:// and s3:// take)."""
import os

import pytest

from llm4msr.errors import UserFacingError
from llm4msr.files import OWNER_MARKER, is_uri, replace_dir, staging_dir, write_file


@pytest.fixture(params=["local", "uri"])
def place(request, tmp_path):
    """A function naming a path under tmp_path, as a local path or as a file:// URI."""
    return lambda name: str(tmp_path / name) if request.param == "local" else f"file://{tmp_path}/{name}"


def _local(path) -> str:
    return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


def test_uris_are_told_from_local_paths():
    assert is_uri("gs://bucket/x") and is_uri("file:///tmp/x") and is_uri("s3://b")
    assert not is_uri("/tmp/x") and not is_uri("runs/gs:/x") and not is_uri("c:\\x")


def test_write_file_replaces_the_target_and_leaves_no_temporary(place, tmp_path):
    target = place("out/report.json")
    write_file(target, "old")
    write_file(target, b"new")
    assert open(_local(target)).read() == "new"
    assert os.listdir(tmp_path / "out") == ["report.json"]


def test_a_staged_folder_replaces_an_earlier_output_of_ours(place, tmp_path):
    out = place("knowledge")
    for text in ("first", "second"):
        staging = staging_dir(out)
        with open(os.path.join(_local(staging), "part.txt"), "w") as handle:
            handle.write(text)
        if text == "second":  # the earlier output stays whole until the swap
            assert (tmp_path / "knowledge" / "part.txt").read_text() == "first"
        replace_dir(staging, out)
    assert (tmp_path / "knowledge" / "part.txt").read_text() == "second"
    assert (tmp_path / "knowledge" / OWNER_MARKER).exists()
    assert sorted(os.listdir(tmp_path)) == ["knowledge"]  # no staging or retired folder left


def test_a_folder_that_is_not_ours_is_refused_before_any_work(place, tmp_path):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(UserFacingError, match="was not written by llm4msr"):
        staging_dir(place("theirs"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserFacingError, match="is not a folder"):
        staging_dir(place("a_file"))
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["a_file", "theirs"]


def test_the_readers_and_tree_helpers_agree_on_local_paths_and_uris(place, tmp_path):
    from llm4msr.files import (copy_tree, entry_names, exists, file_names, glob, is_dir, is_file, join, makedirs,
                               read_text, remove_file, remove_tree)

    makedirs(place("a/b"))
    write_file(place("a/x.txt"), "x")
    write_file(place("a/b/y.txt"), "y")
    assert entry_names(place("a")) == ["b", "x.txt"] and file_names(place("a")) == ["x.txt"]
    assert is_dir(place("a/b")) and is_file(place("a/x.txt")) and not is_file(place("a/b"))
    copy_tree(place("a"), place("c"))
    assert sorted(os.path.relpath(os.path.join(d, f), tmp_path / "c") for d, _, fs in os.walk(tmp_path / "c")
                  for f in fs) == ["b/y.txt", "x.txt"]
    assert read_text(join(place("c"), "b/y.txt")) == "y"
    assert glob(join(place("c"), "*.txt")) == [place("c/x.txt")]
    remove_file(place("c/x.txt"))
    remove_file(place("c/x.txt"))  # a missing file is no error
    assert not exists(place("c/x.txt"))
    remove_tree(place("c"))
    remove_tree(place("c"))
    assert not exists(place("c")) and exists(place("a/b/y.txt"))


def test_s3_locations_add_the_plugin_to_beam_once_and_keep_ml_metadata_local():
    from llm4msr.files import with_beam_plugins
    from llm4msr.pipeline.config import PipelineConfig

    assert with_beam_plugins(["--runner=DirectRunner"], ["/data", "gs://b/root"]) == ["--runner=DirectRunner"]
    once = with_beam_plugins([], ["s3://b/root", "s3://b/cache"])
    assert once == ["--beam_plugin=tensorflow_io"] and with_beam_plugins(once, ["s3://b/root"]) == once
    remote = PipelineConfig(root="s3://b/root")
    assert not is_uri(remote.metadata_path) and remote.metadata_path == PipelineConfig(root="s3://b/root").metadata_path
    assert remote.metadata_path != PipelineConfig(root="s3://b/other").metadata_path
    assert PipelineConfig(root="runs/x").metadata_path == "runs/x/metadata.sqlite"
    assert PipelineConfig(root="s3://b/root", metadata_dir="/tmp/m").metadata_path == "/tmp/m/metadata.sqlite"
