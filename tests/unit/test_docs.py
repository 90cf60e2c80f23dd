"""The generated docs are current."""

import os

from cgctl.model import docgen

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_parameters_md_is_current():
    with open(os.path.join(ROOT, "docs", "parameters.md")) as f:
        committed = f.read()
    assert committed == docgen.render(), \
        "docs/parameters.md is stale: python -m cgctl.model.docgen > docs/parameters.md"
