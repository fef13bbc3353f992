"""Every built-in method (study.METHODS) through the verbs that take --method: explain with its HTML
report and JSON, and mislabeled's self-score ranking."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_explain import run
from whybox.study import METHODS

EXPECTED = {"influence": "InfluenceFunction", "projected": "ProjectedInfluence", "fastif": "FastIF",
            "gradient_dot": "kind='dot'", "gradient_cosine": "kind='cosine'", "euclidean": "EuclideanSimilarity",
            "representer": "Representer"}


def test_every_method_is_covered():
    assert set(EXPECTED) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_explains_reports_and_ranks_mislabels(method, tmp_path, capsys):
    report = tmp_path / "r.html"
    code, out, err = run(["explain", "--dataset", "iris", "--method", method, "--report", report, "--n-test", "2",
                          "--top-k", "3", "--json", "-q"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["helpful"]) == 3 and len(doc["harmful"]) == 3
    assert "positive = the training point supports" in doc["sign"]
    assert report.read_text().count('class="test"') == 2

    code, out, err = run(["mislabeled", "--dataset", "breast_cancer", "--repeats", "1", "--rankings", "self_influence,random",
                          "--acc-fractions", "", "--method", method, "--out", tmp_path / "m", "--no-progress"], capsys)
    assert code == 0, err
    result = json.loads(next((tmp_path / "m").glob("*.json")).read_text())
    assert EXPECTED[method] in result["setup"]["attributor"]  # its self-scores made the ranking
    assert len(result["found"]["self_influence"][0]) > 1
