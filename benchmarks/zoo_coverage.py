"""Coverage of the U-Net zoo (spec §11, §15; issues 19, 26): which widely used U-Nets, built with their
frameworks' defaults, sjunet's converter accepts — and, for the others, every blocker at once.

For each named configuration (defaults first, then the variants people also train) the model is
built on 2-D with random weights (no download: ``encoder_weights=None`` / ``pretrained=False``),
kept small, and put through :func:`sjunet.graph.canonical.canonical_graph` on a ``(1, C, 64, 64)`` input
(the graph a conversion would see). Nothing is trained, calibrated or simulated: this measures
*coverage*, not accuracy.

    python -m benchmarks.zoo_coverage          # prints a Markdown table and a coverage line
    python -m benchmarks.zoo_coverage --converge --data ../shared/data   # and the error against the ANN at T

With ``--converge`` every converted configuration is also measured (:func:`converge`): random weights,
BatchNorm statistics from a few forward passes over EM crops (``em``, ``em3d`` for volumes; random
images without ``--data``), calibrated on three batches, converted with the defaults, and simulated on
a held-out batch at T = 16 and 256: the relative L2 error of the decoded output against the ANN's.
A model with instance/group/layer norms is converted a second time with ``norms="exact"`` (Σ-Δ
group-norm neurons): the default's fixed deviations leave an approximation gap no T removes, the exact
route does not. The criterion of issue 26: error at T = 256 at most half the error at T = 16. The
default (fixed σ̂) conversion is simulated a second time with every convolution → neuron chain fused
(:mod:`sjunet.snn.fusion`, small layers included): its error should match the unfused one's to float
rounding (issue 29); the unfused runs are the reference columns.

:func:`coverage` returns one row per configuration: ``{name, family, defaults, converted,
blockers, summary, seconds}``; ``blockers`` holds one line per blocker (node, source line, cause,
remedy), ``summary`` the refusal's first line. A family whose package is not installed gives a
row with ``skipped`` set.
"""
from __future__ import annotations

import importlib
import time
import warnings
from dataclasses import dataclass
from typing import Callable

SIZE = 64


@dataclass(frozen=True)
class Config:
    name: str
    family: str
    defaults: bool
    build: Callable
    in_channels: int = 1
    size: int = SIZE
    note: str = ""
    spatial_dims: int = 2

    def shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.in_channels, *([self.size] * self.spatial_dims))


def _monai(name: str):
    return getattr(importlib.import_module("monai.networks.nets"), name)


def _smp(arch: str, encoder: str, **kw):
    def build():
        smp = importlib.import_module("segmentation_models_pytorch")
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=2, **kw)
    return build


def _nnunet(cls: str, bn_relu: bool):
    def build():
        import torch.nn as nn

        mod = importlib.import_module("dynamic_network_architectures.architectures.unet")
        norm, norm_kw = (nn.BatchNorm2d, {"eps": 1e-5, "affine": True}) if bn_relu else (
            nn.InstanceNorm2d, {"eps": 1e-5, "affine": True})
        act, act_kw = (nn.ReLU, {"inplace": True}) if bn_relu else (nn.LeakyReLU, {"inplace": True})
        per_stage = {"n_conv_per_stage": 2} if cls == "PlainConvUNet" else {"n_blocks_per_stage": (1, 2, 2)}
        return getattr(mod, cls)(input_channels=1, n_stages=3, features_per_stage=(4, 8, 16), conv_op=nn.Conv2d,
                                 kernel_sizes=3, strides=(1, 2, 2), num_classes=2, n_conv_per_stage_decoder=2,
                                 conv_bias=True, norm_op=norm, norm_op_kwargs=norm_kw, nonlin=act,
                                 nonlin_kwargs=act_kw, deep_supervision=False, **per_stage)
    return build


def _sjunet(**kw):
    def build():
        from sjunet.models import UNet, UNetConfig

        return UNet(UNetConfig(in_channels=1, out_channels=2, base_width=4, depth=3, **kw))
    return build


def _padcat(bilinear: bool):
    def build():
        from sjunet.models.zoo_nets import PadCatUNet

        return PadCatUNet(n_channels=3, n_classes=2, bilinear=bilinear, width=4, depth=4)
    return build


def _flexible(backbone: str):
    return lambda: _monai("FlexibleUNet")(in_channels=1, out_channels=2, backbone=backbone, pretrained=False,
                                          spatial_dims=2)


SMALL_DEC = dict(decoder_channels=(32, 16, 16, 8, 8))

CONFIGS: list[Config] = [
    # --- defaults (each framework's own activation / norm choices)
    Config("monai-UNet", "MONAI", True, lambda: _monai("UNet")(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2)), note="PReLU + InstanceNorm"),
    Config("monai-BasicUNet", "MONAI", True, lambda: _monai("BasicUNet")(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)), note="LeakyReLU + InstanceNorm"),
    Config("monai-DynUNet", "MONAI", True, lambda: _monai("DynUNet")(
        spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
        upsample_kernel_size=[2, 2], filters=(4, 8, 16)), note="LeakyReLU + InstanceNorm"),
    Config("monai-SegResNet", "MONAI", True, lambda: _monai("SegResNet")(
        spatial_dims=2, in_channels=1, out_channels=2, init_filters=8, blocks_down=(1, 1, 1), blocks_up=(1, 1)),
        note="GroupNorm + ReLU"),
    Config("monai-AttentionUnet", "MONAI", True, lambda: _monai("AttentionUnet")(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2))),
    Config("monai-FlexibleUNet-resnet18", "MONAI", True, _flexible("resnet18")),
    Config("monai-FlexibleUNet-efficientnet-b0", "MONAI", True, _flexible("efficientnet-b0")),
    Config("monai-UNETR", "MONAI", True, lambda: _monai("UNETR")(
        in_channels=1, out_channels=2, img_size=(SIZE, SIZE), spatial_dims=2, feature_size=4, hidden_size=48,
        mlp_dim=96, num_heads=4)),
    Config("monai-SwinUNETR", "MONAI", True, lambda: _monai("SwinUNETR")(
        in_channels=1, out_channels=2, spatial_dims=2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))),
    Config("nnunet-PlainConvUNet", "nnU-Net", True, _nnunet("PlainConvUNet", False), note="InstanceNorm + LeakyReLU"),
    Config("nnunet-ResidualEncoderUNet", "nnU-Net", True, _nnunet("ResidualEncoderUNet", False),
           note="InstanceNorm + LeakyReLU"),
    Config("smp-Unet-resnet18", "smp", True, _smp("Unet", "resnet18", **SMALL_DEC)),
    Config("smp-Unet-resnet34", "smp", True, _smp("Unet", "resnet34", **SMALL_DEC)),
    Config("smp-Unet-efficientnet-b0", "smp", True, _smp("Unet", "efficientnet-b0", **SMALL_DEC)),
    Config("smp-Unet-tu-resnet18", "smp", True, _smp("Unet", "tu-resnet18", **SMALL_DEC)),
    Config("smp-Unet-tu-efficientnet_b0", "smp", True, _smp("Unet", "tu-efficientnet_b0", **SMALL_DEC)),
    Config("smp-UnetPlusPlus-resnet18", "smp", True, _smp("UnetPlusPlus", "resnet18", **SMALL_DEC)),
    Config("smp-FPN-resnet18", "smp", True, _smp("FPN", "resnet18", decoder_pyramid_channels=32,
                                                 decoder_segmentation_channels=32), note="GroupNorm in the head"),
    Config("smp-PSPNet-resnet18", "smp", True, _smp("PSPNet", "resnet18", psp_out_channels=32)),
    Config("smp-DeepLabV3Plus-resnet18", "smp", True, _smp("DeepLabV3Plus", "resnet18", decoder_channels=32)),
    Config("smp-MAnet-resnet18", "smp", True, _smp("MAnet", "resnet18", **SMALL_DEC)),
    Config("smp-Linknet-resnet18", "smp", True, _smp("Linknet", "resnet18")),
    Config("smp-PAN-resnet18", "smp", True, _smp("PAN", "resnet18", decoder_channels=16), size=128,
           note="needs inputs of 128 or more"),
    Config("smp-Unet-timm-regnety_002", "smp", True, _smp("Unet", "timm-regnety_002", **SMALL_DEC),
           note="squeeze-excitation"),
    Config("monai-VNet", "MONAI", True, lambda: _monai("VNet")(spatial_dims=2, in_channels=1, out_channels=2),
           note="ELU, channel repeat"),
    Config("monai-AttentionUnet-3d", "MONAI", True, lambda: _monai("AttentionUnet")(
        spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2)), size=16, spatial_dims=3),
    Config("monai-UNETR-3d", "MONAI", True, lambda: _monai("UNETR")(
        in_channels=1, out_channels=2, img_size=(32, 32, 32), spatial_dims=3, feature_size=4, hidden_size=48,
        mlp_dim=96, num_heads=4), size=32, spatial_dims=3),
    Config("sjunet-UNet", "sjunet", True, _sjunet()),
    Config("milesial-UNet-transposed", "PyTorch-UNet", True, _padcat(False), in_channels=3),
    Config("milesial-UNet-bilinear", "PyTorch-UNet", True, _padcat(True), in_channels=3),
    # --- variants people also train
    Config("monai-UNet-relu-batch-res2", "MONAI", False, lambda: _monai("UNet")(
        spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=2,
        act="relu", norm="batch")),
    Config("monai-BasicUNet-relu-batch", "MONAI", False, lambda: _monai("BasicUNet")(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4), act="relu", norm="batch")),
    Config("monai-DynUNet-relu-batch", "MONAI", False, lambda: _monai("DynUNet")(
        spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
        upsample_kernel_size=[2, 2], filters=(4, 8, 16), norm_name="batch", act_name="relu")),
    Config("nnunet-PlainConvUNet-bn-relu", "nnU-Net", False, _nnunet("PlainConvUNet", True)),
    Config("nnunet-ResidualEncoderUNet-bn-relu", "nnU-Net", False, _nnunet("ResidualEncoderUNet", True)),
    Config("sjunet-UNet-maxpool-bn", "sjunet", False, _sjunet(pool="max", batch_norm=True)),
]


def _blocker_lines(message: str) -> tuple[str, list[str]]:
    lines = message.splitlines()
    items = [ln.strip()[2:] for ln in lines[1:] if ln.strip().startswith("- ")]
    return lines[0], items or [lines[0]]


def probe(cfg: Config) -> dict:
    """One row: build ``cfg``'s model and try its canonical graph."""
    from sjunet.graph import UnsupportedGraphError, canonical_graph

    row = {"name": cfg.name, "family": cfg.family, "defaults": cfg.defaults, "converted": False, "blockers": [],
           "summary": "", "note": cfg.note, "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cfg.build().eval()
    except ImportError as e:
        row.update(skipped=f"not installed: {e.name or e}", summary=f"skipped (not installed: {e.name or e})")
        return row
    except Exception as e:  # noqa: BLE001 - a model that does not build offline is a row, not a crash
        first = (str(e).strip().splitlines() or [""])[0][:200]
        row.update(skipped=f"does not build: {type(e).__name__}: {first}", summary=row.get("skipped", ""))
        row["summary"] = row["skipped"]
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = canonical_graph(model, cfg.shape())
        side = "x".join([str(cfg.size)] * cfg.spatial_dims)
        row.update(converted=True, summary="converts" + (f" (specialised on {side}: "
                                                          f"{_rule(tr.size_rule)})" if tr.specialised else ""))
        row["model"] = model
    except UnsupportedGraphError as e:
        row["summary"], row["blockers"] = _blocker_lines(str(e))
    except Exception as e:  # noqa: BLE001 - an internal error is reported as such, not hidden
        row["summary"] = f"internal error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        row["blockers"] = [row["summary"]]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _images(cfg: Config, data, n: int, seed: int) -> list:
    """``n`` batches of two: EM crops (``em``; volumes ``em3d``) when ``data`` is given and the model's
    input fits in them, else random (a 32³ UNETR: em3d's training block is 30 sections deep)."""
    import torch

    from sjunet.data import get_dataset
    from sjunet.data.errors import DatasetError

    crop = cfg.size if cfg.spatial_dims == 2 else [cfg.size] * 3
    try:
        ds = None if data is None else get_dataset("em" if cfg.spatial_dims == 2 else "em3d", data, "train",
                                                   crop=crop, seed=seed, samples_per_epoch=2 * n)
    except DatasetError:
        ds = None
    if ds is None:
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(cfg.shape(2), generator=g) for _ in range(n)]
    xs = [ds[i][0] for i in range(2 * n)]
    return [torch.stack(xs[2 * i:2 * i + 2]).repeat_interleave(cfg.in_channels, 1)[:, :cfg.in_channels]
            for i in range(n)]


def converge(cfg: Config, model, data=None, T=(16, 256)) -> dict:
    """The error of the converted SNN against the ANN at each T (module docstring): ``{"fixed":
    {T: relative L2 error}, "exact": … (models with norms), "gap": …}``."""
    import torch

    from sjunet.calibration import calibrate
    from sjunet.conversion.recipe import convert
    from sjunet.snn import fusion
    from sjunet.snn.simulation import simulate

    torch.manual_seed(0)
    batches = _images(cfg, data, 4, seed=1)
    model.train()
    with torch.no_grad():  # BatchNorm statistics of real images (random weights)
        for x in batches[:3]:
            model(x)
    model.eval()
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = calibrate(model, batches[:3], progress=False)
        x = batches[3]
        with torch.no_grad():
            ref = model(x)
        routes = ["fixed"] + (["exact"] if stats.approximation else [])
        for route in routes:
            snn = convert(model, stats, accept_gap=True, norms=route)
            y = simulate(snn, x, list(T), fuse=False)
            out[route] = {str(t): float((y[t] - ref).norm() / ref.norm()) for t in T}
            if route == "fixed":  # the default conversion, fused on every layer, small as they are
                was, fusion.MIN_FUSED = fusion.MIN_FUSED, 0
                try:
                    y = simulate(snn, x, list(T))
                finally:
                    fusion.MIN_FUSED = was
                out["fused"] = {str(t): float((y[t] - ref).norm() / ref.norm()) for t in T}
                out["fused_layers"] = len(fusion.chains(snn)) if fusion.fused(snn, x) is not None else 0
    if stats.approximation:
        out["gap"] = stats.approximation.get("relative_error")
    return out


def _rule(rule: dict | None) -> str:
    from sjunet.graph.sizes import rule_text

    return rule_text(rule, 2) if rule else "no rule"


def coverage(configs: list[Config] | list[str] | None = None, converge_data=None, measure: bool = False) -> list[dict]:
    """Rows for ``configs`` (Config objects or names from :data:`CONFIGS`; all by default), defaults
    first; with ``measure``, each converted model's error against the ANN at T (:func:`converge`, on
    EM crops from ``converge_data`` or random images)."""
    by_name = {c.name: c for c in CONFIGS}
    chosen = [by_name[c] if isinstance(c, str) else c for c in (configs or CONFIGS)]
    chosen = sorted(chosen, key=lambda c: not c.defaults)  # stable: defaults first
    rows = []
    for c in chosen:
        row = probe(c)
        model = row.pop("model", None)
        if measure and model is not None:
            t0 = time.perf_counter()
            try:
                row["errors"] = converge(c, model, converge_data)
            except Exception as e:  # noqa: BLE001 - a failure to simulate is a row, not a crash
                row["errors"] = {"failed": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
            row["seconds_converge"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    return rows


def _reasons(summary: str) -> str:
    """The causes of a refusal in short (``SiLU ×48, attention …``; an untraceable model: the fx error type)."""
    if "torch.fx cannot trace it (" in summary:
        return "torch.fx cannot trace it (" + summary.split("torch.fx cannot trace it (", 1)[1].split(":", 1)[0] + ")"
    return summary.split("blockers: ", 1)[-1].split("blocker: ", 1)[-1] if "blocker" in summary else summary


def _error_cells(r: dict) -> str:
    e = r.get("errors")
    if not e:
        return " — | — | — | — |"
    if "failed" in e:
        return f" failed: {e['failed']} | | | |"
    route = "exact" if "exact" in e else "fixed"
    a, b = e[route]["16"], e[route]["256"]
    floor = f"; fixed σ̂: {e['fixed']['16']:.3f} → {e['fixed']['256']:.3f}" if route == "exact" else ""
    ok = "yes" if b <= a / 2 else "no"
    f = e.get("fused")
    fused = (f" {f['16']:.4f} → {f['256']:.4f} (unfused {e['fixed']['16']:.4f} → {e['fixed']['256']:.4f}; "
             f"{e['fused_layers']} layers)" if f and e.get("fused_layers") else " not fused")
    return f" {a:.4f} → {b:.4f} ({route}{floor}) | {b / a if a else float('nan'):.3f} | {ok} |{fused} |"


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows and the coverage line (with the error columns where measured)."""
    measured = any("errors" in r for r in rows)
    head = "| model | family | defaults | converts | blockers / note |"
    out = [head + (" rel. error T=16 → 256 | ratio | ≤ ½ | fused step, T=16 → 256 (default route) |" if measured else ""),
           "|---|---|---|---|---|" + ("---|---|---|---|" if measured else "")]
    for r in rows:
        conv = "skipped" if r.get("skipped") else ("yes" if r["converted"] else "no")
        text = r["summary"] if r["converted"] or r.get("skipped") or "torch.fx" in r["summary"] else \
            _reasons(r["summary"])
        if r.get("note"):
            text = f"{text} [{r['note']}]"
        out.append(f"| {r['name']} | {r['family']} | {'yes' if r['defaults'] else 'no'} | {conv} | "
                   f"{text.replace('|', '/')} |" + (_error_cells(r) if measured else ""))
    out.append("")
    out.append(coverage_line(rows))
    if measured:
        m = [r for r in rows if r.get("errors") and "failed" not in r["errors"]]
        ok = [r for r in m if "| yes |" in _error_cells(r)]
        out.append(f"error at T = 256 at most half the error at T = 16: {len(ok)} / {len(m)} converted models")
    return "\n".join(out)


def coverage_line(rows: list[dict]) -> str:
    tried = [r for r in rows if not r.get("skipped")]
    ok = [r for r in tried if r["converted"]]
    refused = [r for r in tried if not r["converted"]]
    reasons: dict[str, int] = {}
    for r in refused:
        for label in {p.strip().split(" ×")[0] for p in _reasons(r["summary"]).split(", ")}:
            reasons[label] = reasons.get(label, 0) + 1
    top = "; ".join(f"{k} ({v} models)" if v > 1 else k for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    line = f"converted {len(ok)} / {len(tried)} (refused: {len(refused)}" + (f" — {top})" if top else ")")
    skipped = len(rows) - len(tried)
    return line + (f"; {skipped} skipped" if skipped else "")


def main(argv: list[str] | None = None) -> list[dict]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="configurations to probe (all by default)")
    ap.add_argument("--converge", action="store_true", help="also measure the error against the ANN at T = 16, 256")
    ap.add_argument("--data", default=None, help="the data directory (EM crops for BatchNorm and calibration)")
    args = ap.parse_args(argv)
    rows = coverage(args.names or None, args.data, measure=args.converge)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
