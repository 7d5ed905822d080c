"""Prompt template files (`templates/*.tmpl`): settings plus named str.format sections.

A template's `version` is its declared version plus the hash of the file's content, so editing a
template can never reuse vectors cached for the old wording.
"""
import hashlib
import json
import pathlib
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Union

from llm4msr.errors import UserFacingError

DEFAULT_DIR = pathlib.Path(__file__).parent / "templates"
LEVELS = ("user", "scenario", "item")
REQUIRED_SECTIONS = {
    "user": ("prompt", "attributes", "scenario", "item", "item_without_categories", "no_items", "cold_start"),
    "scenario": ("prompt", "other"),
    "item": ("prompt", "categories", "attributes", "description", "behaviour", "cold_start"),
}
_SECTION = re.compile(r"^=== *(\w+) *===\s*$")


class TemplateError(UserFacingError):
    """A prompt template file is missing or malformed."""


@dataclass(frozen=True)
class Template:
    path: str
    version: str
    settings: Dict[str, object] = field(default_factory=dict)
    sections: Dict[str, str] = field(default_factory=dict)

    def render(self, section: str, **values) -> str:
        text = self.sections[section].format(**values)
        return "\n".join(line for line in text.splitlines() if line.strip())

    def setting(self, name: str, default=None):
        return self.settings.get(name, default)


def load_templates(templates: Union[None, str, pathlib.Path, Mapping[str, str]] = None) -> Dict[str, Template]:
    """`templates`: None (the bundled ones), a folder holding user.tmpl, scenario.tmpl and item.tmpl, or a
    mapping level -> file (missing levels fall back to the bundled template)."""
    if templates is None or isinstance(templates, (str, pathlib.Path)):
        folder = pathlib.Path(templates) if templates is not None else DEFAULT_DIR
        if not folder.is_dir():
            raise TemplateError(f"{folder}: template folder not found (expected user.tmpl, scenario.tmpl and item.tmpl)")
        paths = {level: folder / f"{level}.tmpl" for level in LEVELS}
    else:
        paths = {level: pathlib.Path(templates.get(level, DEFAULT_DIR / f"{level}.tmpl")) for level in LEVELS}
    return {level: parse_template(path, REQUIRED_SECTIONS[level]) for level, path in paths.items()}


def parse_template(path, required=()) -> Template:
    path = pathlib.Path(path)
    if not path.is_file():
        raise TemplateError(f"{path}: template file not found")
    content = path.read_text(encoding="utf-8")
    settings, sections, current = {}, {}, None
    for number, line in enumerate(content.splitlines(), 1):
        header = _SECTION.match(line)
        if header:
            current = header.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            settings.update(_setting(path, number, line))
    missing = [name for name in required if name not in sections]
    if missing:
        raise TemplateError(f"{path}: missing section(s) {', '.join(missing)}")
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
    version = f"{path.stem}-v{settings.get('version', 0)}-{digest}"
    return Template(str(path), version, settings, {k: "\n".join(v).strip("\n") for k, v in sections.items()})


def _setting(path, number: int, line: str) -> Dict[str, object]:
    key, sep, value = line.partition(":")
    if not sep or not key.strip().isidentifier():
        raise TemplateError(f"{path}, line {number}: expected `name: value` or a `=== section ===` line")
    try:
        return {key.strip(): json.loads(value)}
    except json.JSONDecodeError:
        return {key.strip(): value.strip()}


def combined_version(templates: Mapping[str, Template]) -> str:
    """One string naming every template in use (the artifact's `template_version`)."""
    return ",".join(f"{level}={templates[level].version}" for level in sorted(templates))
