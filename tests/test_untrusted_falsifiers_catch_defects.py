"""Each falsifier of untrusted-input-v1 goes red on the defect it exists to catch: a path
check removed, the escaping removed, audit importing bound modules in its own process, the
shared reader ignoring validate's findings, the physical-sense check skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from falsifiers import test_untrusted_input_v1 as untrusted


def test_001_catches_the_path_checks_removed(pytester, tmp_path, monkeypatch):
    import provable.contracts.paths
    import provable.plugin.plan
    import provable.plugin.update

    monkeypatch.setattr(provable.plugin.plan, "is_safe_name", lambda name: True)
    monkeypatch.setattr(provable.plugin.update, "is_safe_name", lambda name: True)
    monkeypatch.setattr(provable.contracts.paths, "inside", lambda path, root: True)
    with pytest.raises(AssertionError, match="wrote outside the project"):
        untrusted.check_plugin_stays_inside(pytester, tmp_path)


def test_003_catches_the_escaping_removed():
    untrusted.check_markdown_escaping()
    with pytest.raises(AssertionError):
        untrusted.check_markdown_escaping(lambda text: text)
    with pytest.raises(AssertionError):  # half an escaper: tags only
        untrusted.check_markdown_escaping(lambda text: text.replace("<", "&lt;"))


def in_process(entries: Any, timeout: float) -> dict[int, Any]:
    """audit as it was: every bound module imported in audit's own process."""
    from provable.reports.binding import Outcome, actual_params, resolve

    outcomes = {}
    for index, module, function in entries:
        try:
            params, returns = actual_params(resolve(module, function))
        except LookupError as exc:
            outcomes[index] = Outcome(error=str(exc))
        else:
            outcomes[index] = Outcome(params=params, returns=returns)
    return outcomes


def test_004_catches_audit_importing_in_its_own_process(tmp_path):
    untrusted.check_audit_not_decided_by_bindings(tmp_path / "real")
    with pytest.raises(AssertionError):
        untrusted.check_audit_not_decided_by_bindings(tmp_path / "defect", resolver=in_process)


def test_005_catches_a_reader_that_ignores_validates_findings(tmp_path, monkeypatch):
    from provable.contracts.loading import ReadResult

    untrusted.check_commands_refuse_what_validate_refuses(tmp_path / "real")
    monkeypatch.setattr(ReadResult, "refusals", property(lambda self: []))
    with pytest.raises(AssertionError):
        untrusted.check_commands_refuse_what_validate_refuses(tmp_path / "defect")


def test_006_catches_the_physical_sense_check_skipped(tmp_path, monkeypatch):
    import aprlib.config.modelconfig

    untrusted.check_configs_within_physical_sense(tmp_path / "real")
    monkeypatch.setattr(aprlib.config.modelconfig, "check_physical", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="no real model has was loaded"):
        untrusted.check_configs_within_physical_sense(tmp_path / "defect")


def test_002_catches_a_merge_that_follows_links_and_unsafe_ids(tmp_path, monkeypatch):
    """merge as it was: plain reads that follow symlinks, ids taken as paths."""
    import json
    import os

    import provable.reports.merge

    untrusted.check_merge_stays_inside(tmp_path / "real")

    def listing(root, names):
        folder = Path(root, *names)
        if not folder.is_dir():
            return None
        return [
            (n, "folder" if (folder / n).is_dir() else "file") for n in sorted(os.listdir(folder))
        ]

    def read(root, names, max_bytes):
        path = Path(root, *names)
        return path.read_bytes()[:max_bytes] if path.is_file() else None

    def read_json(root, names, max_bytes):
        data = read(root, names, max_bytes)
        return None if data is None else json.loads(data)

    def tail(root, names, max_bytes):
        return (read(root, names, max_bytes) or b"").split(b"\n"), False

    monkeypatch.setattr(provable.reports.merge, "list_below", listing)
    monkeypatch.setattr(provable.reports.merge, "read_below", read)
    monkeypatch.setattr(provable.reports.merge, "read_json_below", read_json)
    monkeypatch.setattr(provable.reports.merge, "tail_lines", tail)
    monkeypatch.setattr(provable.reports.merge, "is_safe_name", lambda name: True)
    with pytest.raises(AssertionError, match=r"a symlinked file was merged|wrote outside"):
        untrusted.check_merge_stays_inside(tmp_path / "defect")
