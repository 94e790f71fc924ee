"""The blocking client is generated from the async one, and the committed file is current."""

from __future__ import annotations

import io
import subprocess
import sys
import tokenize

from scripts import unasync

SYNC = unasync.ROOT / "convengine/client/_sync/client.py"


def test_the_generated_client_is_current():
    diffs = unasync.stale()
    assert not diffs, "run `python scripts/unasync.py`:\n" + "".join(diffs)


def test_a_change_to_the_source_makes_it_stale(tmp_path, monkeypatch):
    source = tmp_path / "client.py"
    source.write_text('"""Doc."""\n\nasync def f(x):\n    return await x.aclose()\n')
    target = tmp_path / "generated.py"
    monkeypatch.setattr(unasync, "ROOT", tmp_path)
    monkeypatch.setattr(unasync, "PAIRS", {source: target})
    assert unasync.main([]) == 0
    assert target.read_text().endswith("\ndef f(x):\n    return x.close()\n")
    assert unasync.main(["--check"]) == 0
    source.write_text(source.read_text().replace("(x)", "(y)"))
    assert unasync.main(["--check"]) == 1


def test_the_check_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, "scripts/unasync.py", "--check"],
        cwd=unasync.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generated_client_is_blocking():
    tokens = tokenize.generate_tokens(io.StringIO(SYNC.read_text()).readline)
    names = {token.string for token in tokens if token.type == tokenize.NAME}
    assert not names & {"async", "await", "anyio", "AsyncClient", "AsyncShards", "asleep"}
