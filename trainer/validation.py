"""Config validation shared by the config dataclasses; no TensorFlow import, so CLIs can
validate before TensorFlow loads."""


class ConfigError(ValueError):
    """A malformed model or input configuration; the message names the field at fault."""


def fail(owner: str, name: str, message: str):
    raise ConfigError(f"{owner}.{name}: {message}")


def require_positive(owner: str, name: str, value, allow_zero: bool = False) -> None:
    smallest = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        fail(owner, name, f"expected an integer >= {smallest}, got {value!r}")
