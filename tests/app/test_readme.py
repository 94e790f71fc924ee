"""The README is true: its shell lines print what it shows and its Python snippets run as
written, against a real service (``python -m app`` on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import variable
from app.config import Settings

from ..servers import Service, start_service

README = Path(__file__).resolve().parents[2] / "README.md"
TEXT = README.read_text()
_COMMENT = re.compile(r"\s{2,}#.*$")  # a trailing comment after two spaces or more


def _commands(block: str) -> Iterator[tuple[str, str]]:
    """Each ``$ `` command of a shell block (continuations joined) and the output shown."""
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        command = _COMMENT.sub("", lines[i][2:])
        # A continued line, or a quoted argument spanning lines.
        while command.rstrip().endswith("\\") or command.count("'") % 2:
            i += 1
            more = _COMMENT.sub("", lines[i])
            if command.rstrip().endswith("\\"):
                command = command.rstrip()[:-1] + " " + more.strip()
            else:
                command += "\n" + more
        i += 1
        shown = []
        while i < len(lines) and lines[i].strip() and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        yield command, "\n".join(shown)


SHELL = [
    pair
    for block in re.findall(r"```sh\n(.*?)```", TEXT, re.S)
    for pair in _commands(block)
    if "localhost:8000" in pair[0] or pair[0].startswith(("python -c 'import numpy", "echo "))
    or "python -m app" in pair[0]
]  # fmt: skip
PYTHON = re.findall(r"```python\n(.*?)```", TEXT, re.S)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("readme"))
    service.wait_ready()
    yield service
    service.stop()


def test_the_readme_has_what_these_tests_read():
    assert len(SHELL) >= 25 and len(PYTHON) >= 4
    assert "pip install 'convengine[client]'" not in TEXT  # on no package index
    # A table broken by a blank line renders as two: every settings row follows another.
    table = TEXT[TEXT.index("| `CONVENGINE_HOST`") : TEXT.index("### Memory")]
    rows = table.strip().splitlines()
    assert all(row.startswith("| `CONVENGINE_") for row in rows), rows
    named = {row.split("`")[1] for row in rows}
    assert named == {variable(name) for name in Settings.model_fields}  # every setting, once


def test_every_shell_line_prints_what_the_readme_shows(service: Service, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVENGINE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this python
    env["PYTHONPATH"] = str(README.parent)  # and this checkout's app, from another folder
    assert shutil.which("curl"), "curl is needed to run the README's lines"
    for command, shown in SHELL:
        command = command.replace("localhost:8000", f"localhost:{service.port}")
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, timeout=120
        )
        printed = (done.stdout + done.stderr).decode(errors="replace").strip()
        if shown:
            assert printed == shown.strip(), command
        else:  # nothing shown: it writes a file, or its output is not the point
            assert done.returncode == 0, (command, printed)


@pytest.mark.parametrize("snippet", PYTHON, ids=lambda s: s.splitlines()[0][:40])
def test_every_python_snippet_runs_as_written(service: Service, snippet: str):
    code = re.sub(r"http://[\d.]+:8000", service.url, snippet)
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{service.port}")
    code = re.sub(r"(localhost|127\.0\.0\.1):8001", service.grpc_target, code)  # gRPC
    assert code != snippet or "8000" not in snippet
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)  # the README's own code
    if "ConvClient" in snippet and "conv_transpose_backward" in snippet:
        assert namespace["out"].shape == (2, 4, 5, 5)  # type: ignore[attr-defined]
        assert namespace["up"].shape == (2, 8, 17, 17)  # type: ignore[attr-defined]
