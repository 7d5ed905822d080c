"""Atomic publication of output folders: readers see the complete old folder or the complete new one."""
import os
import pathlib
import shutil
import tempfile


def staging_dir(out) -> pathlib.Path:
    """A fresh temporary sibling of `out` (same file system, so the final rename is atomic). Its
    name carries this process id; staging folders of `out` left by processes that no longer run
    (a killed run) are removed first."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.staging.{os.getpid()}.", dir=out.parent))


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
    if out.exists():
        retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.rename(out, retired / out.name)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)
