"""The development data (/work/shared/data/README.md): ``../shared/data`` beside the checkout, where CI has it too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.processes import ROOT

# beside the checkout, or beside the folder of worktrees a checkout may sit in (../wt/<branch>)
DEV_DATA = next(
    (found for parent in ROOT.parents if (found := parent / "shared" / "data").is_dir()),
    ROOT.parent / "shared" / "data",
)


def dev_data(name: str) -> Path:
    """The file; without it a skip on a developer's machine, and a failure under CI (``CI`` set, as .ci/run does)."""
    path = DEV_DATA / name
    if not path.is_file():
        where = "the dev data lives in ../shared/data beside the checkout"
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: {where}")
        pytest.skip(f"{path} is not on this machine: {where}")
    return path
