"""Prompt templates for tests that look for item titles in user prompts (the bundled user template
states a profile and lists no titles: `max_items: 0`)."""
import shutil

from llm4msr.pipeline.knowledge.templates import DEFAULT_DIR, load_templates


def titled_templates(folder, max_items: int = 10):
    """The bundled templates, with the `max_items` most recent liked and disliked titles per scenario
    in the user prompt, copied to `folder`."""
    shutil.copytree(DEFAULT_DIR, folder)
    user = (folder / "user.tmpl").read_text()
    assert "max_items: 0" in user and "least liked: {least}." in user
    user = user.replace("max_items: 0", f"max_items: {max_items}").replace(
        "least liked: {least}.", "least liked: {least}. Recently liked {liked}; disliked {disliked}.")
    (folder / "user.tmpl").write_text(user)
    return load_templates(folder)
