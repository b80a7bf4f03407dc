"""Issue 27 (trust, round 4), each audit case through the CLI: small files that asked for gigabytes,
a checkpoint that reached for the network, races on outputs, inputs that were not files.

Every case must end in one line, exit code 2, within bounded memory (the process's peak resident
set grows by less than :data:`MAX_GROWTH_MB`) and :data:`MAX_SECONDS`, write nothing, and open no
socket (sockets are disabled in this process while it runs, :func:`hostile.no_sockets`)."""
from __future__ import annotations

import json
import os
import resource
import stat
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import sjunet
from hostile import (NOT_FILES, adaptive, first, insert_module, late, lock_held_elsewhere, make_not_a_file, module_args,
                     no_sockets, node, pad, png_header_bomb, read_snn, resample, set_string_length, tiff_header_bomb,
                     write_em, write_snn)
from sjunet.cli.main import main
from sjunet.models import UNet

MAX_SECONDS = 15.0
MAX_GROWTH_MB = 600
SEG3D = ["-d", "demo-seg3d", "--opt", "num_items=2", "--T", "2"]
SEG2D = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=2"]


def _listing(d: Path) -> dict:
    return {p.name: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in d.iterdir()}


def refused(args, *needles, where: Path | None = None) -> str:
    """Run the CLI with ``args``: one ``Error:`` line containing every needle, exit 2, bounded
    memory and time, nothing written in ``where``, no socket opened."""
    before = _listing(where) if where is not None else None
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.monotonic()
    with no_sockets() as attempts:
        r = CliRunner().invoke(main, [str(a) for a in args])
    seconds = time.monotonic() - t0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    assert not attempts, f"the network was reached: {attempts}"
    assert seconds < MAX_SECONDS, f"{seconds:.1f} s"
    assert grown < MAX_GROWTH_MB, f"the peak memory grew by {grown:.0f} MB"
    if where is not None:
        assert _listing(where) == before, "the command wrote something"
    return r.output


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A 2-D and a 3-D converted SNN (sjunet U-Nets of depth 2: 4-fold reduction) and a 2-D ANN checkpoint."""
    d = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    out = {}
    for nd, shape in ((2, (2, 1, 32, 32)), (3, (2, 1, 16, 32, 32))):
        ann = UNet(in_channels=1, out_channels=2, base_width=4, depth=2, spatial_dims=nd).eval()
        stats = sjunet.calibrate(ann, [torch.rand(*shape)], progress=False)
        out[nd] = sjunet.save_snn(sjunet.convert(ann, stats), d / f"snn{nd}.safetensors")
    r = CliRunner().invoke(main, ["train", *SEG2D, "--epochs", "1", "--width", "2", "--depth", "1", "-o",
                                  str(d / "ann.pt")])
    assert r.exit_code == 0, r.output
    out["ann"] = d / "ann.pt"
    return out


def crafted(nets, nd: int, mutate, tmp_path: Path) -> Path:
    rec, tensors = read_snn(nets[nd])
    mutate(rec, tensors)
    return write_snn(tmp_path / "crafted.safetensors", rec, tensors)


# ------------------------------------------------------------------ amplifying SNN records

CASES = {  # name: (dims, mutation, needle)
    "size_multiples 256^3": (3, lambda r, t: r["conversion"].update(size_multiples=[256] * 3), "size_multiples"),
    "size_multiples 512^3": (3, lambda r, t: r["conversion"].update(size_multiples=[512] * 3), "size_multiples"),
    "size_multiples an int": (3, lambda r, t: r["conversion"].update(size_multiples=1), "size_multiples"),
    "size_multiple a string": (2, lambda r, t: r["conversion"].update(size_multiple="16"), "size_multiple"),
    "resample x12": (3, lambda r, t: insert_module(r, "rs", resample(scale=12.0), late(r)), "scale_factor"),
    "resample to 16384": (3, lambda r, t: insert_module(r, "rs", resample(size=[16384] * 3), late(r)), "size"),
    "pad 4096": (3, lambda r, t: insert_module(r, "pd", pad([4096] * 6), late(r)), "pad"),
    "pad -4096": (2, lambda r, t: insert_module(r, "pd", pad([-4096] * 4), late(r)), "pad"),
    "reflect pad 4000": (2, lambda r, t: insert_module(r, "pd", pad([4000] * 4, "reflect"), late(r)), "pad"),
    "adaptive pool to 16384": (3, lambda r, t: insert_module(r, "ap", adaptive([16384] * 3), late(r)), "output_size"),
    "conv padding 1024": (3, lambda r, t: module_args(r, first(r, "Conv3d")).update(padding=[1024] * 3), "padding"),
    "dilation 64": (2, lambda r, t: module_args(r, first(r, "Conv2d")).update(dilation=[64, 64]), "dilation"),
    "v_init 1e308": (2, lambda r, t: r["graph"]["modules"][next(
        p for p, s in r["graph"]["modules"].items() if s["type"] == "MultiThresholdNode")]["args"].update(v_init=1e308),
        "v_init"),
    "cat dim -1": (2, lambda r, t: node(r, "cat")["kwargs"]["dict"].update(dim=-1), "dim"),
    "3-D cat dim 7": (3, lambda r, t: node(r, "cat")["kwargs"]["dict"].update(dim=7), "5-D"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_amplifying_or_impossible_record_field_is_one_line_naming_it(nets, tmp_path, case):
    """Reported: every value inside the limits and the hash recomputed, yet evaluation took 9-23 GB
    (size_multiples 256³), tried to allocate up to 70 TB, or failed in torch with exit 1."""
    nd, mutate, needle = CASES[case]
    path = crafted(nets, nd, mutate, tmp_path)
    refused(["evaluate", "--snn", path, *(SEG3D if nd == 3 else [*SEG2D, "--T", "2"])], needle, where=tmp_path)


def test_the_volume_messages_say_5d(nets, tmp_path):
    path = crafted(nets, 3, lambda r, t: node(r, "cat")["kwargs"]["dict"].update(dim=-3), tmp_path)
    out = refused(["evaluate", "--snn", path, *SEG3D], "5-D", "-4")
    assert "4-D" not in out


def test_a_broken_safetensors_header_is_not_a_valid_snn_file(nets, tmp_path):
    raw = bytearray(nets[2].read_bytes())
    raw[20:28] = b"\x00" * 8  # inside the JSON header
    (tmp_path / "broken.safetensors").write_bytes(bytes(raw))
    out = refused(["evaluate", "--snn", tmp_path / "broken.safetensors", *SEG2D], "not a valid SNN file")
    assert "torch checkpoint" not in out


def test_an_snn_with_nan_weights_is_refused(nets, tmp_path):
    def poison(rec, tensors):
        k = next(k for k in tensors if k.endswith("weight"))
        tensors[k] = tensors[k].clone()
        tensors[k].view(-1)[0] = float("nan")
    path = crafted(nets, 2, poison, tmp_path)
    refused(["evaluate", "--snn", path, *SEG2D], "NaN")


# ------------------------------------------------------------------ checkpoints


def _checkpoint(nets, tmp_path, **changes) -> Path:
    from sjunet.models.checkpoint import load_ann

    ann, ckpt = load_ann(nets["ann"])
    ckpt = {**ckpt, **changes}
    path = tmp_path / "ann.pt"
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_naming_a_hub_encoder_is_refused_before_any_import(nets, tmp_path):
    """Reported: segmentation_models_pytorch:Unet with encoder_name "tu-hf-hub:evil/model" made timm fetch a
    config from a model hub (offline: a 55 s stall)."""
    import sys

    path = _checkpoint(nets, tmp_path, arch={"factory": "segmentation_models_pytorch:Unet", "kwargs": {
        "encoder_name": "tu-hf-hub:evil/model", "encoder_weights": None, "in_channels": 1, "classes": 2}})
    had_timm = "timm" in sys.modules
    refused(["evaluate", "-m", path, *SEG2D], "encoder_name")
    assert had_timm or "timm" not in sys.modules  # refused before anything was imported


@pytest.mark.parametrize("verb", ["evaluate", "calibrate"])
def test_a_checkpoint_with_nan_weights_is_refused(nets, tmp_path, verb):
    """Reported: evaluate exited 0 with ordinary-looking metrics; calibrate printed 20 lines of FX traceback."""
    from sjunet.io import model_fingerprint
    from sjunet.models.checkpoint import load_ann

    ann, ckpt = load_ann(nets["ann"])
    sd = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    k = next(k for k in sd if k.endswith("weight"))
    sd[k].view(-1)[0] = float("nan")
    ann.load_state_dict(sd)
    path = _checkpoint(nets, tmp_path, state_dict=sd, fingerprint=model_fingerprint(ann))
    args = ["-o", tmp_path / "stats.h5"] if verb == "calibrate" else []
    refused([verb, "-m", path, *SEG2D, *args], "NaN", where=tmp_path)


# ------------------------------------------------------------------ statistics


def test_a_string_length_edit_of_a_stats_file_is_refused_in_bounded_memory(nets, tmp_path):
    """Reported: setting one string attribute's stored length to 0xffffffff (4 bytes) made libhdf5
    allocate 4.7 GB for 33 s before an error line."""
    from sjunet.calibration import read_stats, write_stats

    ann = UNet(in_channels=1, out_channels=2, base_width=2, depth=1).eval()
    stats = tmp_path / "stats.h5"
    write_stats(sjunet.calibrate(ann, [torch.rand(2, 1, 16, 16)], progress=False), stats)
    read_stats(stats)
    set_string_length(stats, 0, 0xFFFFFFFF)
    refused(["plot", "histograms", stats, "-o", tmp_path / "h.png"], "string", where=tmp_path)
    set_string_length(stats, 0, 0xFFFFFFFF, address=0)  # pointing nowhere: allocated all the same
    refused(["convert", "-m", nets["ann"], "--stats", stats, "-o", tmp_path / "snn.safetensors"], "string",
            where=tmp_path)


# ------------------------------------------------------------------ outputs


def test_two_runs_on_one_output_never_both_succeed(nets, tmp_path):
    """Reported: two `convert -o same.safetensors` at once both exited 0, the last silently replacing
    the first; convert, calibrate and evaluate took no lock."""
    from sjunet.calibration import write_stats

    stats = tmp_path / "stats.h5"
    from sjunet.models.checkpoint import load_ann

    write_stats(sjunet.calibrate(load_ann(nets["ann"])[0], [torch.rand(2, 1, 32, 32)], progress=False), stats)
    for verb, args, out in (
            ("convert", ["-m", nets["ann"], "--stats", stats], tmp_path / "snn.safetensors"),
            ("calibrate", ["-m", nets["ann"], *SEG2D], tmp_path / "again.h5"),
            ("evaluate", ["-m", nets["ann"], *SEG2D], tmp_path / "eval.json")):
        with lock_held_elsewhere(out, result="the first run's result"):  # a first run, still working
            r = CliRunner().invoke(main, [verb, *map(str, args), "-o", str(out)])
            assert r.exit_code == 2 and "another sjunet run" in r.output, (verb, r.output)
        assert out.read_text() == "the first run's result"
        r = CliRunner().invoke(main, [verb, *map(str, args), "-o", str(out)])  # after it: exists, no --force
        assert r.exit_code == 2 and "exists" in r.output and out.read_text() == "the first run's result"


def test_an_output_that_is_not_a_regular_file_is_refused_even_with_force(nets, tmp_path):
    """Reported: -o naming a character device, with --force, replaced the device node by a file."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    targets = [fifo]
    if os.geteuid() == 0:  # a private character device (never /dev/null itself)
        dev = tmp_path / "null.json"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append(dev)
    link = tmp_path / "link.json"
    link.symlink_to(fifo)
    targets.append(link)
    for out in targets:
        refused(["evaluate", "-m", nets["ann"], *SEG2D, "-o", out, "--force"], "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(tmp_path / "null.json").st_mode)


def test_a_dangling_symlink_output_counts_as_existing(nets, tmp_path):
    """Reported: -o that is a dangling symlink was replaced without --force."""
    link = tmp_path / "eval.json"
    link.symlink_to(tmp_path / "nowhere.json")
    refused(["evaluate", "-m", nets["ann"], *SEG2D, "-o", link], "exists")
    assert link.is_symlink()
    r = CliRunner().invoke(main, ["evaluate", "-m", str(nets["ann"]), *SEG2D, "-o", str(link), "--force"])
    assert r.exit_code == 0, r.output
    assert not link.is_symlink() and json.loads(link.read_text())["ann"]
    assert not (tmp_path / "nowhere.json").exists()


# ------------------------------------------------------------------ dataset inputs


@pytest.mark.parametrize("kind", NOT_FILES)
@pytest.mark.parametrize("sub", ["images", "labels"])
def test_a_dataset_entry_that_is_not_a_file_is_refused_naming_it(nets, tmp_path, kind, sub):
    """Reported: images/25.png a dangling symlink, a FIFO or a directory was skipped: the splits
    shifted and evaluate exited 0 on 29 images."""
    root = write_em(tmp_path / "em")
    make_not_a_file(root / sub / "25.png", kind)
    refused(["evaluate", "-m", nets["ann"], "-d", "em", "--data", root], "25.png")


@pytest.mark.parametrize("bomb", ["tiff 60000x60000", "png over PIL's limit", "png 12000x12000"])
def test_an_image_declaring_a_huge_size_is_refused_from_its_header(nets, tmp_path, bomb):
    """Reported: a 4 KB TIFF declaring 60000x60000 and a PNG over PIL's limit gave a 22-frame traceback;
    a 139 KB 12000x12000 PNG was decoded (1.6 GB, 25 s) before the image/label size check."""
    root = write_em(tmp_path / "em")
    target = root / "images" / "27.png"
    if bomb.startswith("tiff"):
        target.unlink()
        target = tiff_header_bomb(root / "images" / "27.tif", 60000, 60000)
        (root / "labels" / "27.png").rename(root / "labels" / "27.tif")
    elif bomb == "png over PIL's limit":
        png_header_bomb(target, 20000, 20000)
    else:
        png_header_bomb(target, 12000, 12000, rows=12000)
        assert target.stat().st_size < 200_000
    refused(["evaluate", "-m", nets["ann"], "-d", "em", "--data", root], target.name)


def test_the_memory_budget_refuses_before_the_run_and_can_be_raised(nets, tmp_path):
    """A run is estimated from the record and the input before anything is allocated; --memory-budget
    sets the limit (default: half of the machine's RAM)."""
    args = ["evaluate", "--snn", nets[3], *SEG3D]
    refused([*args, "--memory-budget", "1M"], "memory budget", "--memory-budget")
    refused([*args, "--memory-budget", "lots"], "--memory-budget")
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--memory-budget", "8G"])
    assert r.exit_code == 0, r.output
