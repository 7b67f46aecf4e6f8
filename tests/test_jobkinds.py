"""The job registry (core/jobkinds.py) is the one place job kinds are spelled out."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from core import jobkinds
from jobs.worker.supervisor import process_plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", jobkinds.JOB_KINDS, ids=lambda k: k.name)
def test_every_target_resolves_to_a_callable(kind: jobkinds.JobKind) -> None:
    # What RQ does with a dotted path (rq.utils.import_attribute), done here in the
    # tests: the web process itself must never import jobs/.
    module = importlib.import_module(kind.module)
    assert callable(getattr(module, kind.target.rpartition(".")[2]))


def test_kinds_and_queues_are_distinct() -> None:
    names = [k.name for k in jobkinds.JOB_KINDS]
    assert len(set(names)) == len(names)
    assert jobkinds.queue_names() == [k.queue for k in jobkinds.JOB_KINDS]


def test_worker_plan_runs_each_kind_its_configured_number_of_times() -> None:
    plan = process_plan()
    for kind in jobkinds.JOB_KINDS:
        assert plan.count(kind) == kind.processes
    assert len(plan) == sum(k.processes for k in jobkinds.JOB_KINDS)


def test_no_dotted_target_is_written_outside_the_registry() -> None:
    targets = [re.escape(k.target) for k in jobkinds.JOB_KINDS]
    pattern = re.compile("|".join(targets))
    found = [
        str(path.relative_to(ROOT))
        for package in ("app", "jobs", "core", "static")
        for path in sorted((ROOT / package).rglob("*"))
        if path.is_file()
        and path.suffix in {".py", ".js", ".sql"}
        and path != ROOT / "core" / "jobkinds.py"
        and pattern.search(path.read_text())
    ]
    assert found == []
