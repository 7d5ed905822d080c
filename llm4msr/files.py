"""Atomic publication: readers see the complete old file or folder or the complete new one.

`write_file` for single files (a uniquely named temporary sibling, fsynced, then renamed over the
target); `staging_dir` + `replace_dir` for folders. Every writer of the project uses these."""
import hashlib
import os
import pathlib
import shutil
import tempfile

from llm4msr.errors import UserFacingError


# Every folder published through `replace_dir` carries this file, so a later run replaces only
# folders it wrote (constant content: data-set fingerprints hash every file of the folder).
OWNER_MARKER = ".llm4msr-output"
# outputs written before the marker existed, recognised by all of their files (one common name,
# such as manifest.json, is not enough): a data set, a knowledge folder, a Transform output
LEGACY_OUTPUTS = (("manifest.json", "interactions.csv", "scenarios.json"), ("knowledge.json", "scenario", "user"),
                  ("transform_fn", "transformed_metadata"))


def staging_dir(out) -> pathlib.Path:
    """A fresh temporary sibling of `out` (same file system, so the final rename is atomic), with
    the owner marker in it. Refuses an `out` that is not ours before any work is done. Its name
    carries this process id; staging folders of `out` left by processes that no longer run (a
    killed run) are removed first."""
    out = pathlib.Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staging = out.parent / f".{out.name}.staging.{os.getpid()}.{os.urandom(4).hex()}"
    staging.mkdir()  # the umask's permissions: mkdtemp's 0700 would make the published folder private
    (staging / OWNER_MARKER).write_text("written by llm4msr; replaced by its next run of this output\n")
    return staging


def check_replaceable(out) -> None:
    """`out` may be replaced: it does not exist, is an empty folder, or is an output of ours."""
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
    staging, out = pathlib.Path(staging), pathlib.Path(out)
    check_replaceable(out)  # again: it may have appeared while the output was being made
    if out.exists():
        retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.rename(out, retired / out.name)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)


def write_file(path, data) -> pathlib.Path:
    """Writes `data` (str or bytes) to `path` atomically and durably. The temporary file is opened
    like any new file, so it gets the process umask's permissions (mkstemp's would be 0600)."""
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
