"""Coverage of the U-Net zoo (spec §11, issue 19): which widely used U-Nets, built with their
frameworks' defaults, sjunet's converter accepts — and, for the others, every blocker at once.

For each named configuration (defaults first, then the variants people also train) the model is
built on 2-D with random weights (no download: ``encoder_weights=None`` / ``pretrained=False``),
kept small, and put through :func:`sjunet.graph.canonical.canonical_graph` on a ``(1, C, 64, 64)`` input
(the graph a conversion would see). Nothing is trained, calibrated or simulated: this measures
*coverage*, not accuracy.

    python -m benchmarks.zoo_coverage          # prints a Markdown table and a coverage line

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
    Config("smp-PAN-resnet18", "smp", True, _smp("PAN", "resnet18", decoder_channels=16)),
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
            tr = canonical_graph(model, (1, cfg.in_channels, cfg.size, cfg.size))
        row.update(converted=True, summary="converts" + (f" (specialised on {cfg.size}x{cfg.size}: "
                                                          f"{_rule(tr.size_rule)})" if tr.specialised else ""))
    except UnsupportedGraphError as e:
        row["summary"], row["blockers"] = _blocker_lines(str(e))
    except Exception as e:  # noqa: BLE001 - an internal error is reported as such, not hidden
        row["summary"] = f"internal error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        row["blockers"] = [row["summary"]]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _rule(rule: dict | None) -> str:
    from sjunet.graph.sizes import rule_text

    return rule_text(rule, 2) if rule else "no rule"


def coverage(configs: list[Config] | list[str] | None = None) -> list[dict]:
    """Rows for ``configs`` (Config objects or names from :data:`CONFIGS`; all by default), defaults first."""
    by_name = {c.name: c for c in CONFIGS}
    chosen = [by_name[c] if isinstance(c, str) else c for c in (configs or CONFIGS)]
    chosen = sorted(chosen, key=lambda c: not c.defaults)  # stable: defaults first
    return [probe(c) for c in chosen]


def _reasons(summary: str) -> str:
    """The causes of a refusal in short (``SiLU ×48, attention …``; an untraceable model: the fx error type)."""
    if "torch.fx cannot trace it (" in summary:
        return "torch.fx cannot trace it (" + summary.split("torch.fx cannot trace it (", 1)[1].split(":", 1)[0] + ")"
    return summary.split("blockers: ", 1)[-1].split("blocker: ", 1)[-1] if "blocker" in summary else summary


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows and the coverage line."""
    out = ["| model | family | defaults | converts | blockers / note |", "|---|---|---|---|---|"]
    for r in rows:
        conv = "skipped" if r.get("skipped") else ("yes" if r["converted"] else "no")
        text = r["summary"] if r["converted"] or r.get("skipped") or "torch.fx" in r["summary"] else \
            _reasons(r["summary"])
        if r.get("note"):
            text = f"{text} [{r['note']}]"
        out.append(f"| {r['name']} | {r['family']} | {'yes' if r['defaults'] else 'no'} | {conv} | "
                   f"{text.replace('|', '/')} |")
    out.append("")
    out.append(coverage_line(rows))
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
    args = ap.parse_args(argv)
    rows = coverage(args.names or None)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
