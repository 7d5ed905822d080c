"""The README's Python examples, read from README.md so that the tests run exactly what users copy."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> str:
    """The code of the README block whose first line is `# README example: <name>`."""
    blocks = re.findall(r"```python\n(# README example: (.+?)\n.*?)```", README.read_text(), flags=re.S)
    found = {title: code for code, title in blocks}
    assert name in found, f"README.md has no block '# README example: {name}' (has {sorted(found)})"
    return found[name]
