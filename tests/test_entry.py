"""The console entry point: a Ctrl-C while the CLI is still importing is 'interrupted', not a traceback."""

from __future__ import annotations

import importlib.abc
import sys

import pytest

from dynashape.__main__ import main


class _CtrlCOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name == "dynashape.cli":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_the_cli_imports(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delitem(sys.modules, "dynashape.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_CtrlCOnImport(), *sys.meta_path])
    assert main() == 130
    err = capsys.readouterr().err
    assert err.strip() == "dynashape: interrupted" and "Traceback" not in err


def test_the_entry_point_runs_the_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dynashape", "check", "--help"])
    assert main() == 0
    assert "usage" in capsys.readouterr().out
