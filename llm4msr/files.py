"""Atomic publication of output folders: readers see the complete old folder or the complete new one."""
import os
import pathlib
import shutil
import tempfile


def staging_dir(out) -> pathlib.Path:
    """A fresh temporary sibling of `out` (same file system, so the final rename is atomic)."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.staging.", dir=out.parent))


def replace_dir(staging, out) -> None:
    """Renames the complete `staging` folder to `out`; an existing `out` is removed only after the swap."""
    staging, out = pathlib.Path(staging), pathlib.Path(out)
    if out.exists():
        retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.rename(out, retired / out.name)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)
