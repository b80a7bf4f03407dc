"""Figures (sjunet.plots): Figure 3 numbers on a skewed skip net, metric-vs-T, histograms."""
import json

import pytest
import torch

from helpers import SkewedSkipNet, batches
from sjunet.calibration import calibrate
from sjunet.calibration.reader import read_stats
from sjunet.conversion.recipe import convert, load_snn
from sjunet.plots import activation_vs_rate, fit_line, histograms, plot
from sjunet.plots.curves import load_results, metric_vs_T

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def skewed():
    torch.manual_seed(0)
    model = SkewedSkipNet().eval()
    stats = calibrate(model, batches(), progress=False)
    snns = {"layer-wise": convert(model, stats, norm="layer"),
            "connection-wise": convert(model, stats, norm="connection")}
    return model, stats, snns


def test_fit_line_exact():
    x = torch.linspace(0, 1, 50).numpy()
    f = fit_line(x, 2 * x + 0.5)
    assert f["slope"] == pytest.approx(2) and f["intercept"] == pytest.approx(0.5)
    assert f["r"] == pytest.approx(1) and f["n"] == 50
    assert fit_line(x, 3 * x)["slope_origin"] == pytest.approx(3)


def test_activation_vs_rate_connection_wise_is_linear(skewed, tmp_path):
    model, stats, snns = skewed
    images = batches(1, b=2, seed=1)[0]
    out = tmp_path / "fig3.png"
    fits = activation_vs_rate(model, snns, images, T=200, output=out, stats=stats, chunk=50)
    # default layers: the neuron layers right after a concatenation (conv3 here)
    assert list(fits) == ["conv3"]
    conn, layer = fits["conv3"]["connection-wise"], fits["conv3"]["layer-wise"]
    assert conn["n"] == 2 * 4 * 16 * 16
    assert abs(conn["slope"] - 1) < 0.1 and conn["r"] > 0.95
    # layer-wise over-weights the small-scale part of the concatenation: the linear map is lost
    assert abs(layer["slope"] - 1) > 0.1 or layer["r"] < 0.9
    assert layer["r"] < conn["r"] - 0.1
    assert out.read_bytes()[:8] == PNG_MAGIC
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["T"] == 200
    assert side["results"]["conv3"]["connection-wise"]["slope"] == pytest.approx(conn["slope"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_activation_vs_rate_layers_svg_scatter_and_padding(skewed, tmp_path):
    model, _, snns = skewed
    out = tmp_path / "fig3.svg"
    image = torch.rand(1, 15, 17, generator=torch.Generator().manual_seed(2))  # odd size: padded to even
    fits = activation_vs_rate(model, snns, image, T=40, layers=["conv1", "relu3"], output=out, style="scatter",
                              max_points=100, multiple=2)
    assert list(fits) == ["conv1", "conv3"]
    # layers before the concatenation convert the same either way
    assert fits["conv1"]["layer-wise"] == fits["conv1"]["connection-wise"]
    assert abs(fits["conv1"]["connection-wise"]["slope"] - 1) < 0.1
    head = out.read_text()[:400]
    assert "<svg" in head or "<?xml" in head
    with pytest.raises(ValueError, match="not a neuron layer"):
        activation_vs_rate(model, snns, image, T=4, layers=["head"], output=None)


def test_plot_dispatch_activation_vs_rate_from_files(skewed, tmp_path):
    model, stats, _ = skewed
    paths = []
    for norm in ("layer", "connection"):
        p = tmp_path / f"snn_{norm}.pt"
        convert(model, stats, norm=norm, output=p)
        paths.append(p)
    out = tmp_path / "fig.png"
    fits = plot("activation-vs-rate", model=model, snn=[load_snn(p)[0] for p in paths], images=batches(1, b=1)[0],
                T=100, output=out, chunk=50)
    assert set(fits["conv3"]) == {"layer-wise (MT)", "connection-wise (MT)"}
    assert fits["conv3"]["connection-wise (MT)"]["r"] > 0.95
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="unknown plot kind"):
        plot("nope")


def _result(norm, values, ann=0.9):
    return {"ann": {"f1_membrane": ann, "f1_interior": ann - 0.1, "miou": 0.7},
            "T": {str(t): {"f1_membrane": v, "f1_interior": v - 0.1, "miou": v - 0.2} for t, v in values.items()},
            "snn": {"conversion": {"norm": norm, "neuron": "mt"}}}


def test_metric_vs_T(tmp_path):
    r1 = _result("layer", {10: 0.5, 20: 0.6, 50: 0.7})
    r2 = _result("connection", {10: 0.7, 20: 0.8, 50: 0.85})
    p2 = tmp_path / "r2.json"
    p2.write_text(json.dumps(r2))
    out = tmp_path / "mt.png"
    res = metric_vs_T([r1, load_results(p2)], output=out)
    assert set(res) == {"f1_membrane", "f1_interior"}  # every f1_* key by default
    assert res["f1_membrane"]["connection-wise (MT)"] == {"T": [10, 20, 50], "values": [0.7, 0.8, 0.85], "ann": 0.9}
    assert out.read_bytes()[:8] == PNG_MAGIC
    res = plot("metric-vs-T", results=[r1], metric="miou", output=tmp_path / "miou.pdf", labels=["mine"])
    assert res["miou"]["mine"]["values"] == pytest.approx([0.3, 0.4, 0.5])
    assert (tmp_path / "miou.pdf").read_bytes()[:4] == b"%PDF"
    den = {"ann": {"psnr": 30.0, "ssim": 0.9}, "T": {"10": {"psnr": 25.0, "ssim": 0.8}}}
    assert list(metric_vs_T([den], output=tmp_path / "d.png")) == ["psnr"]


def test_histograms_from_hdf5(tmp_path):
    model = SkewedSkipNet().eval()
    h5 = tmp_path / "stats.h5"
    calibrate(model, batches(), output=h5, progress=False, nbins=1 << 12)
    out = tmp_path / "hist.png"
    res = histograms(read_stats(h5), out)
    assert {"relu1", "relu2", "relu3", "cat"} <= set(res)
    assert all(v["percentile"] <= v["max"] for v in res.values())
    assert out.read_bytes()[:8] == PNG_MAGIC
    res = plot("histograms", stats=read_stats(h5), output=tmp_path / "h.svg", nodes=["relu3"], log=False)
    assert list(res) == ["relu3"]
    with pytest.raises(ValueError, match="no statistics"):
        histograms(read_stats(h5), tmp_path / "x.png", nodes=["nope"])
    with pytest.raises(TypeError, match="give the statistics as a CalibrationStats"):
        histograms(h5, tmp_path / "x.png")  # the library takes objects; files are read at the edge


def _frontier(norm, points, ann=0.8):
    """An energy frontier (``sjunet energy -o``) whose points crowd each other and the axes: T labels
    and log-axis tick labels that would overlap if drawn naively."""
    T = {}
    for t, (m, e) in points.items():
        T[str(t)] = {"metrics": {"f1_vessel": m, "agreement": 0.99},
                     "energy": {"energy_paper_J": e * 0.3, "energy_sop_J": e, "energy_neurobench_J": e * 2.1,
                                "energy_ann_J": 1e-4, "spikes": 1.0, "sops": 2.0,
                                "ratios": {"paper": 0.1, "sop": 0.2, "neurobench": 0.3}}}
    return {"T": T, "ann": {"f1_vessel": ann}, "metric": "f1_vessel",
            "snn": {"conversion": {"norm": norm, "neuron": "mt"}}}


def test_no_text_overlaps_in_the_figures(tmp_path, monkeypatch):
    """Every text the renderer draws in the PNG — titles, axis and tick labels, legends, the T labels
    of the energy plot — has a bounding box that meets no other (matplotlib's own renderer measures
    them, after the layout engine, as when saving); the panels name their metric with its unit."""
    import sjunet.plots.figures as figures
    from sjunet.plots.curves import metric_vs_energy

    kept = []
    monkeypatch.setattr(figures.plt, "close", lambda fig=None: kept.append(fig))
    crowded = {1: (0.70, 2.0e-5), 2: (0.75, 2.2e-5), 4: (0.78, 2.6e-5), 8: (0.79, 3.4e-5), 16: (0.795, 5.0e-5),
               32: (0.798, 8.1e-5), 64: (0.799, 1.4e-4)}
    metric_vs_energy([_frontier("connection", crowded), _frontier("layer", {t: (m - 0.05, e * 1.1)
                                                                           for t, (m, e) in crowded.items()})],
                     output=tmp_path / "e.png")
    r = {"ann": {"psnr": 30.0}, "T": {str(t): {"psnr": 20 + t / 20} for t in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25,
                                                                              32, 40, 50, 64, 80, 100, 128)}}
    metric_vs_T([r], output=tmp_path / "t.png")
    model = SkewedSkipNet().eval()
    histograms(calibrate(model, batches(), progress=False), tmp_path / "h.png")
    from sjunet.plots.predictions import predictions_figure
    from sjunet.tasks import DenoisingTask, SegmentationTask

    g = torch.Generator().manual_seed(0)
    labels = ["ANN", "SNN connection-wise T=4", "SNN layer-wise T=4"]
    seg_rows = [{"index": i, "input": torch.rand(48, 48, 1, generator=g).numpy(),
                 "truth": (torch.rand(48, 48, generator=g) > 0.8).long().numpy(),
                 "outputs": {k: (torch.rand(48, 48, generator=g) > 0.8).long().numpy() for k in labels},
                 "scores": {k: 0.61234 for k in labels}} for i in range(2)]
    predictions_figure(seg_rows, SegmentationTask(2, ["background", "vessel"]), tmp_path / "p.png", title="demo seg")
    den_rows = [{**r, "truth": r["input"], "outputs": {k: r["input"] for k in labels}, "scores": {k: 27.1 for k in labels}}
                for r in seg_rows]
    predictions_figure(den_rows, DenoisingTask(), tmp_path / "d.png", title="demo denoise")
    assert len(kept) == 5
    for fig in kept:
        assert figures.text_overlaps(fig) == [], fig
    texts = {t.get_text() for fig in kept[:2] for t, _ in figures.drawn_texts(fig)}
    assert "F1 (vessel)" in texts and "PSNR (dB)" in texts  # each axis names its metric and unit
    panels = {t.get_text() for fig in kept[3:] for t, _ in figures.drawn_texts(fig)}
    assert "ANN\nF1 (vessel) 0.6123" in panels and "ANN\nPSNR 27.10 dB" in panels
    assert sum(t.startswith("T=") for t in texts) >= 2  # the point labels that fit are kept
