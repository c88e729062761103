"""The README's `dream bench` commands and the committed docs/results/*.json files stay in line: every
command that writes a JSON there names a committed file, and that file's recorded command line
(config.command) is the README's command, argument for argument (shell variables of the README's code
block expanded). A recorded JSON that no README command produces is an error too."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def bench_commands(readme: str) -> list[list[str]]:
    """Every `dream bench ...` line of the README's shell blocks, as argv, variables of its block expanded."""
    commands = []
    for block in _BLOCK.findall(readme):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if (assignment := _ASSIGN.match(line)) is not None:
                variables[assignment.group(1)] = shlex.split(assignment.group(2))[0]
            elif line.startswith("dream bench"):
                commands.append(shlex.split(_VARIABLE.sub(lambda m: _expand(m, variables), line)))
    return commands


def _expand(match: re.Match, variables: dict[str, str]) -> str:
    name = match.group(1) or match.group(2)
    assert name in variables, f"README uses ${name} without setting it in the same block"
    return variables[name]


def disagreements(commands: list[list[str]], results: Path, root: Path) -> list[str]:
    """What is out of line between the commands and the recorded JSON files under `results`."""
    problems, produced = [], set()
    for argv in commands:
        if "--json" not in argv:
            continue
        path = (root / argv[argv.index("--json") + 1]).resolve()
        if results.resolve() not in path.parents:
            continue
        produced.add(path)
        if not path.is_file():
            problems.append(f"{path.name}: the README writes it, but it is not committed")
            continue
        recorded = json.loads(path.read_text())["config"].get("command")
        if recorded is None:
            problems.append(f"{path.name}: records no command; regenerate it with the README's command")
        elif recorded != argv:
            problems.append(f"{path.name}: recorded {shlex.join(recorded)!r}, the README says {shlex.join(argv)!r}")
    for path in sorted(results.glob("*.json")):
        recorded = json.loads(path.read_text()).get("config", {}).get("command")
        if recorded is not None and path.resolve() not in produced:
            problems.append(f"{path.name}: recorded by {shlex.join(recorded)!r}, which the README does not give")
    return problems


def test_readme_bench_commands_reproduce_the_committed_results():
    results = REPO / "docs" / "results"
    recorded = [p for p in results.glob("*.json") if json.loads(p.read_text()).get("config", {}).get("command")]
    if not recorded:
        pytest.skip("no committed result records its command yet (files from before recorded runs)")
    commands = bench_commands((REPO / "README.md").read_text())
    assert commands, "the README gives no dream bench command"
    assert disagreements(commands, results, REPO) == []


README = '''
```bash
D="--draft dream=d/dream --repeats 3"
dream bench --target t $D --json out/a.json   # T=0
dream bench --target t $D --temperature 1 \\
    --json out/b.json
```
'''


def record(path: Path, argv: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": {"command": argv}}))


def test_the_check_reads_the_readme_and_catches_each_disagreement(tmp_path):
    commands = bench_commands(README)
    a = ["dream", "bench", "--target", "t", "--draft", "dream=d/dream", "--repeats", "3", "--json", "out/a.json"]
    b = [*a[:-2], "--temperature", "1", "--json", "out/b.json"]
    assert commands == [a, b]
    results = tmp_path / "out"
    record(results / "a.json", a)
    assert disagreements(commands, results, tmp_path) == ["b.json: the README writes it, but it is not committed"]
    record(results / "b.json", [*a[:-2], "--json", "out/b.json"])           # made without --temperature 1
    assert disagreements(commands, results, tmp_path) == [
        f"b.json: recorded {shlex.join([*a[:-2], '--json', 'out/b.json'])!r}, the README says {shlex.join(b)!r}"]
    record(results / "b.json", b)
    record(results / "c.json", [*a[:-2], "--json", "out/c.json"])           # an orphan record
    assert disagreements(commands, results, tmp_path) == [f"c.json: recorded by {shlex.join(a[:-1] + ['out/c.json'])!r}, "
                                                          "which the README does not give"]
    (results / "c.json").unlink()
    assert disagreements(commands, results, tmp_path) == []
    (results / "a.json").write_text(json.dumps({"config": {}}))
    assert disagreements(commands, results, tmp_path) == [
        "a.json: records no command; regenerate it with the README's command"]
