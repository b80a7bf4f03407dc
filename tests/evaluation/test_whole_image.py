"""Whole-image evaluation (the default), tiles only as memory needs, the paper's patch protocol on
request (issue 20): equalities between the protocols, the record, option checks, progress."""
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sjunet.calibration import calibrate
from sjunet.cli.main import main
from sjunet.conversion.recipe import convert
from sjunet.data import get_dataset
from sjunet.evaluation import (Protocol, activation_cost, ann_fn, evaluate, evaluate_model, evaluate_snn, make_protocol,
                               plan, predict, snn_fn)
from sjunet.models import UNet

from helpers import init_random

DEMO = {"size": 40, "num_items": 2}


class Local(nn.Module):
    """A fully convolutional net of receptive-field radius ``radius`` (3x3 convs, zero padding)."""

    size_multiple = 1

    def __init__(self, radius: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        k = 3 if radius else 1
        layers, c = [], 1
        for i in range(max(radius, 1)):
            layers += [nn.Conv2d(c, 4, k, padding=k // 2), nn.ReLU()]
            c = 4
        self.body = nn.Sequential(*layers, nn.Conv2d(c, 2, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data = torch.randn(m.weight.shape, generator=g)
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1

    def forward(self, x):
        return self.body(x)


class Images(torch.utils.data.Dataset):
    """A segmentation split of ``n`` random ``h x w`` images (labels 0/1), optionally declaring the
    paper's ``eval_patch`` like DRIVE."""

    task, in_channels, num_classes, name = "segmentation", 1, 2, "images"

    def __init__(self, n=2, h=80, w=80, eval_patch=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, h, w, generator=g)
        self.y = (torch.rand(n, h, w, generator=g) > 0.7).long()
        if eval_patch:
            self.eval_patch = eval_patch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def unet(seed=0):
    return init_random(UNet(in_channels=1, out_channels=2, base_width=4, depth=2), seed).eval()


# ------------------------------------------------------------------------------ whole vs patch

def test_patch_protocol_equals_whole_away_from_window_borders():
    """Under patch(48, 16) each pixel is the mean over the 9 windows holding it; a window's own
    zero padding changes the outputs within the receptive-field radius of its border, so whole ==
    patch exactly where every window holding the pixel sees all of its receptive field (pixel mod 16
    in [r, 16 - r)), and only there; with a point-wise net (radius 0), everywhere."""
    x = torch.rand(1, 1, 80, 80, generator=torch.Generator().manual_seed(1))  # 80 = 48 + 2 * 16: no padding
    for r in (0, 2):
        fn = ann_fn(Local(r))
        whole = predict(fn, x, None, 1)[None]
        patch = predict(fn, x, None, 1, Protocol("patch", patch=48, stride=16))[None]
        inner = torch.zeros(80, dtype=torch.bool)
        inner[[i for i in range(80) if r <= i % 16 < 16 - r]] = True
        inner = inner[:, None] & inner[None, :]
        assert torch.allclose(whole[..., inner], patch[..., inner], atol=1e-5)
        if r:
            assert not torch.allclose(whole[..., ~inner], patch[..., ~inner], atol=1e-3)
        else:
            assert torch.allclose(whole, patch, atol=1e-5)


def test_metric_of_whole_equals_patch_for_a_pointwise_net_and_is_close_otherwise():
    ds = Images(n=2, eval_patch=(48, 16))
    whole = evaluate_model(Local(0), ds, progress=False)
    patch = evaluate_model(Local(0), ds, progress=False, protocol="patch")  # the dataset's 48/16
    assert whole["protocol"]["protocol"] == "whole" and patch["protocol"]["protocol"] == "patch"
    strip = lambda m: {k: v for k, v in m.items() if k != "protocol"}  # noqa: E731
    assert strip(whole) == strip(patch)
    w2, p2 = (evaluate_model(Local(2), ds, progress=False, protocol=p) for p in ("whole", "patch"))
    assert w2["accuracy"] != p2["accuracy"]  # window borders change some pixels...
    assert w2["accuracy"] == pytest.approx(p2["accuracy"], abs=0.05)  # ...not many


# ------------------------------------------------------------------------------ tiled vs whole

def test_tiled_equals_whole_when_the_margin_covers_the_receptive_field():
    """The depth-2 U-Net's outputs depend on inputs up to 22 pixels away (its receptive-field
    radius): with a margin of 24 the tiles give the whole-image prediction; with 8 they do not."""
    net = unet()
    x = torch.rand(1, 1, 101, 90, generator=torch.Generator().manual_seed(2))  # padded to 104 x 92
    fn = ann_fn(net)
    whole = predict(fn, x, None, 4)[None]
    p = Protocol("tiled", tile=16, overlap=22)  # rounded up to 24, a multiple of 4
    lay = plan(p, x.shape[-2:], 4)
    assert lay.kind == "tiled" and lay.windows > 4 and lay.overlap == 24
    assert max(t[1] - t[0] for t in lay.tiles) < 104 and max(t[3] - t[2] for t in lay.tiles) < 92  # real tiles
    cover = torch.zeros(lay.padded, dtype=torch.int)
    for y0, y1, x0, x1, cy0, cy1, cx0, cx1 in lay.tiles:
        assert all(v % 4 == 0 for v in (y0, y1, x0, x1, cy0, cy1, cx0, cx1))  # pooling grids stay aligned
        assert y0 <= cy0 < cy1 <= y1 and x0 <= cx0 < cx1 <= x1
        cover[cy0:cy1, cx0:cx1] += 1
    assert (cover == 1).all()  # every pixel from exactly one tile's core
    tiled = predict(fn, x, None, 4, p)[None]
    assert tiled.shape == whole.shape == (1, 2, 101, 90)
    assert torch.allclose(tiled, whole, atol=1e-6, rtol=0)
    assert torch.equal(tiled.argmax(1), whole.argmax(1))
    # a margin smaller than the receptive field is not enough
    assert not torch.allclose(predict(fn, x, None, 4, Protocol("tiled", tile=16, overlap=8))[None], whole, atol=1e-4)


def test_whole_tiles_only_over_the_memory_budget():
    net = unet()
    cost = activation_cost(net, 1, 4)
    assert cost == pytest.approx(4.0)  # its largest activations: 4 channels at full resolution
    p = make_protocol("whole")
    assert plan(p, (100, 100), 4, cost).kind == "whole"
    assert plan(p, (100, 100), 4, 1e6).kind == "tiled"
    assert plan(Protocol(max_pixels=50 * 50), (100, 100), 4).kind == "tiled"
    assert plan(Protocol(max_pixels=50 * 50), (40, 40), 4).kind == "whole"
    assert plan(p, (100, 100), 4).kind == "whole"  # no cost known: whole


def test_a_network_of_one_input_size_tiles_only_by_windows_of_that_size():
    """A conversion specialised on its example (a ViT's position embeddings) holds for that size only:
    a volume is tiled by non-overlapping windows of exactly it, and any other tiling is refused."""
    one = Protocol("tiled", tile=16, overlap=0)
    lay = plan(one, (30, 128, 64), 16, tileable=(16, 64, 64))  # whatever the multiple: windows of the one size
    assert lay.kind == "tiled" and lay.windows == 2 * 2 * 1
    assert all((t[1] - t[0], t[3] - t[2], t[5] - t[4]) == (16, 64, 64) for t in lay.tiles)
    with pytest.raises(ValueError, match="16x64x64 inputs"):
        plan(Protocol("tiled", tile=16, overlap=8), (30, 128, 64), (16, 64, 64), tileable=(16, 64, 64))
    with pytest.raises(ValueError, match="cannot be tiled"):
        plan(one, (30, 128, 64), (16, 64, 64), tileable=False)
    assert plan(make_protocol("whole"), (16, 64, 64), (16, 64, 64), tileable=(16, 64, 64)).kind == "whole"
    assert plan(Protocol("tiled"), (30, 128, 64), 16, tileable=(16, 64, 64)).windows == 4  # no margin by default


# ------------------------------------------------------------------------------ record, options

def test_protocol_is_recorded():
    ds = Images(n=2, h=72, w=64, eval_patch=(48, 16))
    r = evaluate(ds, model=Local(1), progress=False)
    assert r["protocol"]["protocol"] == "whole" and r["protocol"]["windows_per_image"] == 1
    assert r["protocol"]["patch"] is None and r["timing"]["ann_seconds_per_image"] > 0
    r = evaluate(ds, model=Local(1), progress=False, protocol=Protocol("whole", max_pixels=32 * 32, overlap=8))
    assert r["protocol"]["protocol"] == "tiled" and r["protocol"]["overlap"] == 8 and r["protocol"]["tile"] == 16
    r = evaluate(ds, model=Local(1), progress=False, protocol=Protocol("patch", stride=24))
    rec = r["protocol"]
    assert (rec["protocol"], rec["patch"], rec["stride"], rec["pad"]) == ("patch", 48, 24, "zero")
    assert rec["windows_per_image"] == 4  # 72 x 64 zero-padded to 72 x 72: 2 x 2 windows
    assert json.loads(json.dumps(r))["protocol"] == rec


@pytest.mark.parametrize("kw,needle", [
    (dict(stride=0), "--stride"), (dict(stride=-3), "--stride"), (dict(stride=49), "--stride"),
    (dict(patch=0), "--patch"), (dict(tile=32), "--tile"),
])
def test_patch_options_are_checked(kw, needle):
    with pytest.raises(ValueError, match=needle) as e:
        make_protocol("patch", Images(eval_patch=(48, 16)), **kw)
    assert "\n" not in str(e.value)


def test_other_options_are_checked():
    for args, needle in [(("whole",), dict(stride=8)), (("tiled",), dict(tile=0)), (("tiled",), dict(overlap=-1)),
                         (("bogus",), {})]:
        with pytest.raises(ValueError):
            make_protocol(*args, **needle)
    with pytest.raises(ValueError, match="--patch"):
        make_protocol("patch", Images())  # no eval_patch and no --patch
    assert make_protocol("patch", Images(), patch=32).stride == 32
    with pytest.raises(ValueError, match="multiple of 4"):
        evaluate_model(unet(), Images(), progress=False, protocol=Protocol("patch", patch=30, stride=10))


@pytest.mark.parametrize("extra,needle", [
    (["--protocol", "patch", "--stride", "0"], "--stride"),
    (["--protocol", "patch", "--patch", "16", "--stride", "17"], "--stride"),
    (["--protocol", "patch", "--stride", "-1"], "--stride"),
    (["--protocol", "patch", "--tile", "64"], "--tile"),
    (["--stride", "8"], "--stride"),
])
def test_cli_refuses_bad_protocol_options_in_one_line(extra, needle):
    r = CliRunner().invoke(main, ["evaluate", "-d", "demo-seg", *extra])
    assert r.exit_code != 0 and needle in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output


def test_cli_evaluate_records_the_protocol(tmp_path):
    net = unet()
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    arch = ["--arch", "sjunet.models:UNet", "--arch-kwargs",
            json.dumps({"in_channels": 1, "out_channels": 2, "base_width": 4, "depth": 2}), "--weights", str(weights)]
    data = ["-d", "demo-seg", "--opt", "size=40", "--opt", "num_items=2"]
    for extra, want in [([], ("whole", None, None)), (["--protocol", "patch", "--patch", "24", "--stride", "8"],
                                                       ("patch", 24, 8))]:
        out = tmp_path / f"e{len(extra)}.json"
        r = CliRunner().invoke(main, ["evaluate", *arch, *data, "-o", str(out), *extra], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        rec = json.loads(out.read_text())["protocol"]
        assert (rec["protocol"], rec["patch"], rec["stride"]) == want
        assert "protocol:" in r.output


# ------------------------------------------------------------------------------ SNN, progress

@pytest.fixture(scope="module")
def snn_pair():
    net = unet()
    train = get_dataset("demo-seg", None, "train", **DEMO)
    snn = convert(net, calibrate(net, [train[i][0].unsqueeze(0) for i in range(2)], progress=False))
    return net, snn


def test_snn_tiled_equals_whole(snn_pair):
    net, snn = snn_pair
    x = torch.rand(1, 1, 64, 62, generator=torch.Generator().manual_seed(3))
    fn = snn_fn(snn, [2, 3])
    p = Protocol("tiled", tile=32, overlap=24)  # 2 x 2 tiles, windows of at most 56 x 56
    whole = predict(fn, x, None, 4)
    tiled = predict(fn, x, None, 4, p)
    for t in (2, 3):
        assert torch.allclose(whole[t], tiled[t], atol=1e-5, rtol=0)
    ds = Images(n=1, h=64, w=62)
    a = evaluate_snn(snn, ds, [2, 3], reference=net, progress=False)
    b = evaluate_snn(snn, ds, [2, 3], reference=net, progress=False, protocol=p)
    assert a["protocol"]["protocol"] == "whole" and b["protocol"]["protocol"] == "tiled"
    assert b["protocol"]["windows_per_image"] == 4
    assert a["T"] == b["T"] and a["ann"] == b["ann"]
    assert {"ann_seconds_per_image", "snn_seconds_per_step", "step_cost_vs_ann"} <= set(b["timing"])
    assert b["timing"]["snn_seconds_per_step"] == pytest.approx(b["timing"]["snn_seconds_per_image"] / 3)


class FakeBar:
    made: list = []

    def __init__(self, total=None, **kw):
        self.total, self.n, self.updates, self.unit = total, 0, [], kw.get("unit")
        FakeBar.made.append(self)

    def update(self, n=1):
        self.n += n
        self.updates.append(n)

    def refresh(self):
        pass

    def close(self):
        pass


def test_progress_advances_per_tile_and_per_step(snn_pair, monkeypatch):
    import sjunet.evaluation.loops as ev

    net, snn = snn_pair
    monkeypatch.setattr(ev, "tqdm", FakeBar)
    ds = Images(n=2, h=48, w=44)
    p = Protocol("tiled", tile=24, overlap=8)
    tiles = plan(p, (48, 44), 4).windows
    assert tiles == 4
    FakeBar.made.clear()
    evaluate_model(net, ds, protocol=p)
    bar = FakeBar.made[-1]
    assert bar.unit == "window" and bar.updates == [1] * (2 * tiles) and bar.total == bar.n == 2 * tiles
    for mode in ("step", "multi"):
        FakeBar.made.clear()
        evaluate_snn(snn, ds, [1, 3], protocol=p, mode=mode, chunk=2)
        bar = FakeBar.made[-1]
        assert bar.unit == "step" and bar.total == bar.n == 2 * tiles * 3
        assert len(bar.updates) == 2 * tiles * (3 if mode == "step" else 2)  # multi: chunks of <= 2 steps
    FakeBar.made.clear()
    evaluate_model(net, ds, protocol=Protocol("patch", patch=16, stride=8, batch=5))
    bar = FakeBar.made[-1]
    assert bar.total == bar.n == 2 * plan(make_protocol("patch", patch=16, stride=8), (48, 44), 4).windows
    assert max(bar.updates) == 5


def test_validation_path_is_the_evaluation_path():
    """train/finetune validate with evaluate_model / evaluate_snn: a dataset declaring the paper's
    eval_patch (DRIVE) is still evaluated whole there, unless the patch protocol is asked for."""
    ds = Images(n=1, h=48, w=48, eval_patch=(48, 16))
    r = evaluate_model(unet(), ds, progress=False)
    assert r["protocol"]["protocol"] == "whole" and r["protocol"]["windows_per_image"] == 1
