"""Output locks that never follow a link and never race, and a full disk that costs one clean line
and no result (issue 18)."""
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fulldisk import fill, full_tmpfs
from hostile import lock_held_elsewhere
from sjunet.cli.main import main
from sjunet.io import (ArtifactError, NoSpaceError, lock_path, output_guard, torch_save_atomic, write_bytes_atomic,
                       write_json)

DATA = ["-d", "demo-seg", "--opt", "size=32", "--opt", "num_items=4"]
NET = ["--width", "2", "--depth", "1"]


# ------------------------------------------------------------------ locks

def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "ann.pt"
    lock_path(out).symlink_to(victim)
    with pytest.raises(ArtifactError, match="symbolic link"):
        with output_guard(out):
            pass
    assert victim.read_text() == "keep me"
    r = CliRunner().invoke(main, ["train", *DATA, *NET, "--epochs", "1", "-o", str(out)])
    assert r.exit_code == 2 and "symbolic link" in r.output and victim.read_text() == "keep me"
    assert len(r.output.strip().splitlines()) == 1


def test_a_hard_linked_lock_file_is_refused(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "ann.pt"
    os.link(victim, lock_path(out))
    with pytest.raises(ArtifactError, match="not a plain file"):
        with output_guard(out):
            pass
    assert victim.read_text() == "keep me"


def test_the_lock_file_is_kept_so_every_run_locks_the_same_inode(tmp_path):
    """The race of issue 18: run A unlinks the lock at its end while B waits on the old inode and C
    creates a new one — both "hold" it. A kept lock file is one inode for everyone."""
    out = tmp_path / "ann.pt"
    with output_guard(out):
        inode = lock_path(out).stat().st_ino
    assert lock_path(out).stat().st_ino == inode  # kept after the run
    with lock_held_elsewhere(out):
        for _ in range(3):  # a second and a third run are refused while the first holds it
            with pytest.raises(ArtifactError, match="another sjunet run"):
                with output_guard(out):
                    pass
    with output_guard(out):  # released with the process
        assert lock_path(out).stat().st_ino == inode


# ------------------------------------------------------------------ a full disk

def _no_temporaries(d: Path):
    return not [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("writer", ["bytes", "json", "torch", "snn", "stats"])
def test_a_write_on_a_full_disk_is_one_line_and_keeps_the_previous_file(writer):
    with full_tmpfs(256) as d:
        out = d / f"result.{writer}"
        out.write_bytes(b"previous result")
        fill(d)
        big = {"x": list(range(50_000))}
        with pytest.raises(NoSpaceError) as e:
            if writer == "bytes":
                write_bytes_atomic(b"x" * 100_000, out)
            elif writer == "json":
                write_json(big, out)
            elif writer == "torch":
                torch_save_atomic({"w": torch.zeros(50_000)}, out)
            elif writer == "snn":
                from sjunet.models import UNet
                from sjunet.snn import file as snnfile
                from helpers import batches
                import sjunet

                ann = UNet(in_channels=1, out_channels=2, base_width=2, depth=1).eval()
                snn = sjunet.convert(ann, sjunet.calibrate(ann, batches(n=1, size=8)))
                sjunet.save_snn(snn, out)
            else:
                from calibration.store import write_stats
                from sjunet.models import UNet
                from helpers import batches
                import sjunet

                ann = UNet(in_channels=1, out_channels=2, base_width=2, depth=1).eval()
                write_stats(sjunet.calibrate(ann, batches(n=1, size=8)), out)
        msg = str(e.value)
        assert "no space left" in msg and str(out) in msg and "\n" not in msg
        assert out.read_bytes() == b"previous result" and _no_temporaries(d)


def test_the_cli_on_a_full_disk_says_so_in_one_line_before_the_work(tmp_path):
    ann, stats = tmp_path / "ann.pt", tmp_path / "stats.h5"
    for args in (["train", *DATA, *NET, "--epochs", "1", "-o", str(ann)],
                 ["calibrate", "-m", str(ann), *DATA, "-o", str(stats)]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    with full_tmpfs(256) as d:
        out = d / "ann.pt"
        out.write_bytes(b"previous result")
        fill(d)
        for args in (["train", *DATA, *NET, "--epochs", "1", "--force", "-o", str(out)],
                     ["calibrate", "-m", str(ann), *DATA, "-o", str(d / "stats.h5")],
                     ["convert", "-m", str(ann), "--stats", str(stats), "-o", str(d / "snn.safetensors")],
                     ["evaluate", "-m", str(ann), *DATA, "--limit", "1", "-o", str(d / "eval.json")]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code != 0 and "no space left" in r.output, (args[0], r.output)
            assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
        assert out.read_bytes() == b"previous result" and _no_temporaries(d)
