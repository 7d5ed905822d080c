"""Atomic publication: readers see the complete old file or folder or the complete new one.

`write_file` for single files (a uniquely named temporary sibling, fsynced, then renamed over the
target); `staging_dir` + `replace_dir` for folders. Every writer of the project uses these.

Paths are local paths (`str` or `pathlib.Path`) or URIs (`gs://b/x`, `s3://b/x`, `hdfs://...`,
`file:///x`) given as `str`; URIs go through `tf.io.gfile` (imported only for them, so local work
such as a cached knowledge run needs no TensorFlow), `s3://` through tensorflow-io's plugin. The
readers below (`exists`, `glob`, `read_bytes`, ...) are the one way the project reads either.
A rename is atomic where the storage's rename is (local disks, HDFS); on object stores (GCS, S3) a folder's rename copies object by object,
and what publishes a pipeline output there is its TFX artifact turning LIVE in ML Metadata after
the component finished."""
import glob as local_glob
import hashlib
import os
import pathlib
import re
import shutil
import sys
import tempfile

from llm4msr.errors import UserFacingError


# Every folder published through `replace_dir` carries this file, so a later run replaces only
# folders it wrote (constant content: data-set fingerprints hash every file of the folder).
OWNER_MARKER = ".llm4msr-output"
OWNER_MARKER_TEXT = "written by llm4msr; replaced by its next run of this output\n"
# outputs written before the marker existed, recognised by all of their files (one common name,
# such as manifest.json, is not enough): a data set, a knowledge folder, a Transform output
LEGACY_OUTPUTS = (("manifest.json", "interactions.csv", "scenarios.json"), ("knowledge.json", "scenario", "user"),
                  ("transform_fn", "transformed_metadata"))


def is_uri(path) -> bool:
    """`gs://b/x`, `file:///x`: a path for `tf.io.gfile` (a `pathlib.Path` would fold its `//`)."""
    return isinstance(path, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


# URI schemes TensorFlow 2.16 does not have built in: tensorflow-io registers them when imported
PLUGIN_SCHEMES = ("s3", "az")


def _gfile(path: str = ""):
    import tensorflow as tf

    load_file_system_plugins(path)
    return tf.io.gfile


def _needs_plugins(path) -> bool:
    return is_uri(path) and path.split("://", 1)[0].lower() in PLUGIN_SCHEMES


def with_beam_plugins(flags, paths) -> list:
    """Beam `flags` plus what loads the file system plugins `paths` need in every Beam worker
    process: `--beam_plugin` imports a module in each worker before it runs any of the job's code
    (TFX's code inside the workers then reads and writes s3:// through tf.io.gfile too)."""
    flags = list(flags or [])
    plugin = "--beam_plugin=tensorflow_io"
    return flags + [plugin] if any(map(_needs_plugins, paths)) and plugin not in flags else flags


def load_file_system_plugins(path: str) -> None:
    """Registers tensorflow-io's file systems with `tf.io.gfile` in this process when `path` is on
    one of them (s3://, az://); TensorFlow's own (local, gs://, hdfs://) need nothing."""
    if not _needs_plugins(path) or "tensorflow_io" in sys.modules:
        return
    try:
        import tensorflow_io  # noqa: F401  (the import registers the file systems)
    except ImportError:
        raise UserFacingError(f"{path}: this storage needs the tensorflow-io file system plugins "
                              f"(pip install 'llm4msr[s3]')") from None


def uses_file_system_plugins() -> bool:
    """Whether this process loaded tensorflow-io's file systems: its S3 client aborts the process
    while Python shuts down (`pure virtual method called`), so a command then ends with `os._exit`."""
    return "tensorflow_io" in sys.modules


def join(folder, name: str) -> str:
    """`folder/name` for a local path or a URI."""
    return f"{str(folder).rstrip('/')}/{name}" if is_uri(folder) else os.path.join(folder, name)


def parent(path) -> str:
    """The folder holding `path` (a local path or a URI)."""
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_uri(path) else os.path.dirname(os.path.abspath(path))


def absolute(path) -> str:
    """A local path made absolute (`~` expanded); a URI unchanged."""
    return path if is_uri(path) else str(pathlib.Path(path).expanduser().resolve())


def open_file(path, mode: str = "rb"):
    """`open` for a local path, `tf.io.gfile.GFile` for a URI."""
    return _gfile(path).GFile(path, mode) if is_uri(path) else open(path, mode)


def read_bytes(path) -> bytes:
    with open_file(path, "rb") as handle:
        return handle.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def exists(path) -> bool:
    return _gfile(path).exists(path) if is_uri(path) else os.path.exists(path)


def is_file(path) -> bool:
    if is_uri(path):
        gfile = _gfile(path)
        return gfile.exists(path) and not gfile.isdir(path)
    return os.path.isfile(path)


def is_dir(path) -> bool:
    return _gfile(path).isdir(path) if is_uri(path) else os.path.isdir(path)


def glob(pattern) -> list:
    """Sorted paths matching `pattern` (`*` within one path segment)."""
    return sorted(_gfile(pattern).glob(pattern) if is_uri(pattern) else local_glob.glob(str(pattern)))


def makedirs(path) -> None:
    if is_uri(path):
        _gfile(path).makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def remove_tree(path) -> None:
    """Removes a folder and what is in it; a missing one is no error."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
    elif _gfile(path).exists(path):
        _gfile(path).rmtree(path)


def remove_file(path) -> None:
    """Removes a file; a missing one is no error."""
    if not is_uri(path):
        pathlib.Path(path).unlink(missing_ok=True)
    elif _gfile(path).exists(path):
        _gfile(path).remove(path)


def copy_tree(source, target) -> None:
    """Copies the folder `source` to `target` (which must not exist), file by file."""
    if not is_uri(source) and not is_uri(target):
        shutil.copytree(source, target)
        return
    for folder, _, files in _walk(source):
        relative = folder[len(str(source).rstrip("/")):].lstrip("/")
        destination = join(target, relative) if relative else str(target)
        makedirs(destination)
        for name in files:
            with open_file(join(folder, name), "rb") as src, open_file(join(destination, name), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _walk(folder):
    if is_uri(folder):
        return ((path.rstrip("/"), dirs, files) for path, dirs, files in _gfile(folder).walk(folder))
    return ((path, dirs, files) for path, dirs, files in os.walk(folder))


def entry_names(folder) -> list:
    """Sorted names of the files and folders directly in `folder`."""
    names = _gfile(folder).listdir(folder) if is_uri(folder) else os.listdir(folder)
    return sorted(name.rstrip("/") for name in names)  # gfile marks folders of object stores with a "/"


def file_names(folder) -> list:
    """Sorted names of the files (not folders) directly in `folder`."""
    return [name for name in entry_names(folder) if is_file(join(folder, name))]


def _sibling(path: str, name: str) -> str:
    return f"{path.rstrip('/').rsplit('/', 1)[0]}/{name}"


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


def staging_dir(out):
    """A fresh temporary sibling of `out` (same file system, so the final rename is atomic), with
    the owner marker in it. Refuses an `out` that is not ours before any work is done. Its name
    carries this process id; staging folders of `out` left by processes that no longer run (a
    killed run) are removed first (local outputs only: a URI's writer may run on another machine)."""
    check_replaceable(out)
    if is_uri(out):
        gfile = _gfile(out)
        staging = _sibling(out, f".{_basename(out)}.staging.{os.getpid()}.{os.urandom(4).hex()}")
        gfile.makedirs(staging)
        with gfile.GFile(f"{staging}/{OWNER_MARKER}", "w") as handle:
            handle.write(OWNER_MARKER_TEXT)
        return staging
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staging = out.parent / f".{out.name}.staging.{os.getpid()}.{os.urandom(4).hex()}"
    staging.mkdir()  # the umask's permissions: mkdtemp's 0700 would make the published folder private
    (staging / OWNER_MARKER).write_text(OWNER_MARKER_TEXT)
    return staging


def check_replaceable(out) -> None:
    """`out` may be replaced: it does not exist, is an empty folder, or is an output of ours."""
    if is_uri(out):
        return _check_replaceable_uri(out)
    out = pathlib.Path(out)
    if not out.name or out.resolve() == out.resolve().parent:
        raise UserFacingError(f"{out} cannot be an output folder (choose a named folder such as runs/out)")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise UserFacingError(f"{out} exists and is not a folder: refusing to replace it "
                              f"(choose another output path, or remove it yourself)")
    ours = (out / OWNER_MARKER).exists() or any(all((out / name).exists() for name in names)
                                                 for names in LEGACY_OUTPUTS)
    if not ours and any(out.iterdir()):
        raise UserFacingError(f"{out} exists and was not written by llm4msr (it has no {OWNER_MARKER}): refusing "
                              f"to replace what is there (choose another output folder, or empty it yourself)")


def _check_replaceable_uri(out: str) -> None:
    gfile = _gfile(out)
    if not _basename(out) or out.rstrip("/").endswith(":/"):
        raise UserFacingError(f"{out} cannot be an output folder (choose a named folder such as gs://bucket/out)")
    if not gfile.exists(out):
        return
    if not gfile.isdir(out):
        raise UserFacingError(f"{out} exists and is not a folder: refusing to replace it "
                              f"(choose another output path, or remove it yourself)")
    names = {name.rstrip("/") for name in gfile.listdir(out)}
    ours = OWNER_MARKER in names or any(set(legacy) <= names for legacy in LEGACY_OUTPUTS)
    if not ours and names:
        raise UserFacingError(f"{out} exists and was not written by llm4msr (it has no {OWNER_MARKER}): refusing "
                              f"to replace what is there (choose another output folder, or empty it yourself)")


def _remove_abandoned_staging(out: pathlib.Path) -> None:
    for leftover in out.parent.glob(f".{out.name}.staging.*"):
        pid = leftover.name[len(f".{out.name}.staging."):].split(".", 1)[0]
        if leftover.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (staging folders live next to local outputs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(staging, out) -> None:
    """Renames the complete `staging` folder to `out`; an existing `out` is removed only after the swap."""
    check_replaceable(out)  # again: it may have appeared while the output was being made
    if is_uri(out):
        gfile = _gfile(out)
        if gfile.exists(out):
            retired = _sibling(out, f".{_basename(out)}.old.{os.getpid()}.{os.urandom(4).hex()}")
            gfile.rename(out, retired)
            gfile.rename(staging, out)
            gfile.rmtree(retired)
        else:
            gfile.rename(staging, out)
        return
    staging, out = pathlib.Path(staging), pathlib.Path(out)
    if out.exists():
        retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.rename(out, retired / out.name)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)


def write_file(path, data):
    """Writes `data` (str or bytes) to `path` atomically and durably. The temporary file is opened
    like any new file, so it gets the process umask's permissions (mkstemp's would be 0600)."""
    if is_uri(path):
        return _write_file_uri(path, data)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        with open(tmp, "xb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_file_uri(path: str, data) -> str:
    gfile = _gfile(path)
    gfile.makedirs(parent(path))
    tmp = _sibling(path, f".{_basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with gfile.GFile(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if gfile.exists(tmp):
            gfile.remove(tmp)
        raise
    return path


def source_fingerprint(*modules) -> str:
    """A hash of the Python source of `modules` (for a package, every .py file under it). TFX's
    cache keys on a component's inputs and parameters, not on the code an import path names: with
    this as a parameter, changed code (an upgrade, an edit) is never a cache hit."""
    digest = hashlib.sha256()
    for module in modules:
        path = pathlib.Path(module.__file__)
        for file in sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]:
            digest.update(f"{file.relative_to(path.parent)}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
