"""Every benchmark's ``smoke`` profile runs end to end and writes its Markdown + JSON."""
import json

import pytest

import sjunet.benchmarks.common as common
from sjunet.benchmarks.__main__ import BENCHMARKS, main


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_smoke_profile(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    main([name, "--profile", "smoke"])
    out = capsys.readouterr().out
    assert "|" in out  # a Markdown table was printed
    stem = {"tables12": "tables12", "ladders": "ladders", "energy": "energy", "step_cost": "step_cost",
            "conversion": "conversion", "finetune": "finetune", "flow": "flow"}[name]
    md, js = tmp_path / f"{stem}-smoke.md", tmp_path / f"{stem}-smoke.json"
    assert md.exists() and js.exists()
    payload = json.loads(js.read_text())
    assert "provenance" in payload and payload["provenance"]["versions"]["torch"]
