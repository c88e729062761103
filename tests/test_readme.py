"""The README's Python snippet runs as written (on a tiny target and a fresh draft), and its usage lines name
only flags the verbs accept."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch
from fixtures import tiny_image

from dream.cli import COMMANDS
from dream.draft import DraftConfig, build_draft, save_draft
from dream.target import TargetAdapter

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippet() -> str:
    text = README.read_text()
    start = text.index("## Use it")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, "the README's 'Use it' section has no Python block"
    return block.group(1)


def test_readme_snippet_runs(tiny_target_path, tmp_path, capsys):
    target_dir = tiny_target_path("llava")
    target = TargetAdapter.from_pretrained(target_dir)
    torch.manual_seed(0)
    save_draft(tmp_path / "draft", build_draft(DraftConfig.from_target(target, "dream")), target.fingerprint(),
               dtype=torch.float32)
    tiny_image().save(tmp_path / "cat.png")
    code = python_snippet()
    for placeholder, value in {"path/to/your/vlm": target_dir, "path/to/draft": tmp_path / "draft",
                               "cat.png": tmp_path / "cat.png"}.items():
        assert placeholder in code, placeholder
        code = code.replace(placeholder, str(value))
    exec(compile(code, str(README), "exec"), {})
    text, tau = capsys.readouterr().out.rsplit(" ", 1)
    assert float(tau) >= 1.0 and text


def usage_lines() -> list[list[str]]:
    """Every `dream VERB ...` line inside the README's code blocks, options split into words."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line.split(" #")[0].strip())
    words = [shlex.split(re.sub(r"[\[\]|]", " ", line.rstrip("\\"))) for line in lines if line.startswith("dream ")]
    return [w for w in words if len(w) > 1 and w[1] in COMMANDS]


@pytest.mark.parametrize("words", usage_lines(), ids=lambda w: " ".join(w[:2]))
def test_readme_usage_names_real_flags(words):
    verb = words[1]
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[verb][0]).add_arguments(parser)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    unknown = [w for w in words[2:] if w.startswith("--") and w.split("=")[0] not in flags]
    assert not unknown, f"README usage of `dream {verb}` names flags it does not accept: {unknown}"
