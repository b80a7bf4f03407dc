"""Every benchmark's ``smoke`` profile runs end to end and writes its Markdown + JSON."""
import json

import pytest

import sjunet.benchmarks.common as common
from sjunet.benchmarks.__main__ import BENCHMARKS, main


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One results folder for every smoke benchmark: the paper tables' cached smoke ANNs and
    statistics are trained once and reused, as the benchmarks reuse them on a real machine."""
    return tmp_path_factory.mktemp("results")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_smoke_profile(name, results, monkeypatch, capsys):
    tmp_path = results
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    main([name, "--profile", "smoke"])
    out = capsys.readouterr().out
    assert "|" in out  # a Markdown table was printed
    stem = {"tables12": "tables12", "ladders": "ladders", "energy": "energy", "step_cost": "step_cost",
            "conversion": "conversion", "finetune": "finetune", "flow": "flow",
            "ablation": "ablation", "zoo": "zoo", "ftrecipe": "ftrecipe", "peers": "peers",
            "calibration": "calibration", "protocol": "protocol", "ftladder": "ftladder", "volume": "volume",
            "ladderstudy": "ladderstudy", "demos": "demos", "gap": "gap"}[name]
    md, js = tmp_path / f"{stem}-smoke.md", tmp_path / f"{stem}-smoke.json"
    assert md.exists() and js.exists()
    if name in ("conversion", "ladders"):  # a metric-vs-T figure beside the table
        assert (tmp_path / f"{stem}-smoke.png").stat().st_size > 1000
    if name == "peers":  # every system in the table, and Figures 4/5 per dataset
        from sjunet.benchmarks.peer_table import SYSTEMS

        rows = json.loads(js.read_text())["rows"]
        assert sorted(r["system"] for r in rows) == sorted(SYSTEMS) and "demo-seg" in md.read_text()
        assert all(0 <= r["metrics"]["accuracy"] <= 1 and r["metrics"]["num_images"] == 2 for r in rows)
        assert all("converted" in r for r in rows if r["system"].endswith("FT"))
        assert (tmp_path / "peers-smoke-demo-seg.png").stat().st_size > 1000
    payload = json.loads(js.read_text())
    if name == "ftladder":  # the rows were converted with the named ladder, and say so
        assert all(r["thresholds"] == [0.5, 0.25, 0.125, 0.0625] for r in payload["rows"])
    if name == "tables12":  # a paper table names the paper's ladder: its numbers do not move with the default
        from sjunet.conversion.recipe import load_snn

        for d in ("demo-seg", "demo-denoise"):
            rec = load_snn(tmp_path / "smoke" / d / "snn.safetensors")[1]
            assert rec["conversion"]["options"]["thresholds"] == [2.0, 1.0, 0.5, 0.25]
    if name == "ladderstudy":  # every candidate converted as named, at every T, with the three energies
        for d in payload["datasets"].values():
            f = d["frontiers"]
            assert f["paper"]["conversion"]["options"]["thresholds"] == [2.0, 1.0, 0.5, 0.25]
            assert f["auto"]["conversion"]["options"]["thresholds"] == "auto" and f["auto"]["conversion"]["ladders"]
            assert all(set(v["energy"]["ratios"]) == {"paper", "sop", "neurobench"} for c in f.values()
                       for v in c["T"].values())
    if name == "protocol":  # the same images whole and by patches: the same ANN on each, so comparable
        runs = payload["runs"]
        assert {r["protocol"]["protocol"] for r in runs.values()} == {"whole", "patch"}
        assert all(r["timing"]["step_cost_vs_ann"] > 0 for r in runs.values())
    assert "provenance" in payload and payload["provenance"]["versions"]["torch"]
    if name == "tables12":  # a second run resumes: every dataset's row is reused, nothing is evaluated again
        import sjunet.evaluation

        def refuse(*a, **k):
            raise AssertionError("tables12 re-evaluated a dataset whose row was already there")

        monkeypatch.setattr(sjunet.evaluation, "evaluate_snn", refuse)
        main([name, "--profile", "smoke"])
        assert capsys.readouterr().out.split("\n-> ")[0] == out.split("\n-> ")[0]



def test_peer_table_puts_the_papers_figures_and_orderings_beside_ours():
    """The completed Tables 1/2 show the paper's row under ours (the metric it stands beside) and
    both orderings; a system the paper has no figure for is a dash, not a number."""
    from sjunet.benchmarks.peer_table import PAPER, SYSTEMS, _table, ordering

    assert ordering({"a": 0.5, "b": 0.9, "c": 0.898, "d": None}) == "b ≈ c > a"
    ann = {"f1_membrane": 0.70, "f1_interior": 0.90, "accuracy": 0.9}
    vals = dict(zip(SYSTEMS, [0.10, 0.20, 0.60, 0.30, 0.65, 0.40, 0.69]))
    rows = [{"dataset": "em", "system": s, "T": 4, "ann": ann, "converted": {"f1_membrane": 0.6, "f1_interior": 0.8},
             "metrics": {"f1_membrane": v - 0.05, "f1_interior": v}} for s, v in vals.items() if s != "ML FT"]
    table = _table(rows, {"T": {"*": 4}, "dt_minutes": 4.0, "ft_minutes": 2.0, "limit": 5}, "cpu")
    paper_line = next(line for line in table.splitlines() if line.startswith("| em | paper: F1"))
    assert f"{PAPER['em'][3]['U-Net']:.3f}" in paper_line and paper_line.count("—") == 2  # no Spiking-FCN; no converted
    ours_line = next(line for line in table.splitlines() if line.startswith("| em | f1_interior"))
    assert "| — |" in ours_line  # ML FT was not run
    # direct training below half the U-Net is marked, with its budget; fine-tuned systems never are
    cells = dict(zip(SYSTEMS, [c.strip() for c in ours_line.split("|")[5:5 + len(SYSTEMS)]]))
    assert [s for s, c in cells.items() if "under-trained" in c] == ["Spiking-FCN DT", "ML DT", "RS DT", "MT DT"]
    assert any(line.startswith("‡ em MT DT: 0.444 × the U-Net on f1_interior") for line in table.splitlines())
    orders = [line for line in table.splitlines() if line.count("|") == 5 and line.startswith("| em |")]
    assert orders == ["| em | f1_interior | MT FT > RS FT > MT DT > RS DT > ML DT > Spiking-FCN DT | "
                      "MT FT > RS FT > MT DT ≈ ML DT > RS DT |"]
