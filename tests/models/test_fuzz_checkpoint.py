"""An ANN checkpoint is data: it never chooses code to run, its fingerprint is mandatory, and what it
declares is checked against the tensors it holds before anything is allocated (issue 18)."""
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import refused_cleanly
from sjunet.io import ANN_KIND, ArtifactError, model_fingerprint
from sjunet.models import UNet
from sjunet.models.checkpoint import ALLOWED_ARCHITECTURES, load_ann

# the allow-listed libraries are imported up front: their own import-time probes (matplotlib's
# fc-list) are theirs, not the file's, and would trip the code trap of `refused_cleanly`
for _lib in ("monai.networks.nets", "segmentation_models_pytorch"):
    pytest.importorskip(_lib)

#: examples per fuzz test (SJUNET_FUZZ_EXAMPLES=500 for a longer hunt)
EXAMPLES = int(os.environ.get("SJUNET_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _ckpt(model, **over):
    ck = {"kind": ANN_KIND, "model_config": model.config.to_dict(), "arch": None,
          "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
          "fingerprint": model_fingerprint(model), "task": {"kind": "segmentation", "num_classes": 2}}
    ck.update(over)
    return ck


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UNet(in_channels=1, out_channels=2, base_width=2, depth=1).eval()


def _write(ck, d=None) -> Path:
    d = Path(d or tempfile.mkdtemp())
    p = d / "evil.pt"
    torch.save(ck, p)
    return p


# ------------------------------------------------------------------ a file never chooses code

HOSTILE_FACTORIES = [
    "sjunet.io:os.system", "segmentation_models_pytorch:_torch.os.system",
    "monai.networks.nets:basic_unet.torch.os.system", "sjunet.io:write_json", "builtins:print",
    "os:system", "sjunet.models.unet:UNetConfig", "sjunet.models:UNet.__init__.__globals__",
    "monai.networks.nets:BasicUNet.__init__", "subprocess:run", "sjunet.models.unet:torch.save",
    "sjunet.models.unet:UNet ", "sjunet.models.unet:UNet\n", "", ":", "a:b:c",
]


@pytest.mark.parametrize("factory", HOSTILE_FACTORIES)
def test_a_checkpoint_cannot_name_code_to_run(tiny, tmp_path, factory):
    marker = tmp_path / "pwned"
    kwargs = {"command": f"touch {marker}", "obj": {"x": 1}, "path": str(marker), "cmd": f"touch {marker}"}
    path = _write(_ckpt(tiny, arch={"factory": factory, "kwargs": kwargs}), tmp_path)
    err = refused_cleanly(load_ann, path, "checkpoint")
    assert not marker.exists()
    assert "--arch" in str(err) or "malformed" in str(err)


def test_the_cli_refuses_it_without_running_it_and_blames_no_arch_the_user_did_not_pass(tiny, tmp_path):
    from sjunet.cli.main import main

    marker = tmp_path / "pwned"
    path = _write(_ckpt(tiny, arch={"factory": "sjunet.io:os.system", "kwargs": {"command": f"touch {marker}"}}),
                  tmp_path)
    for verb in (["evaluate", "-m", str(path), "-d", "demo-seg", "--opt", "size=16", "--opt", "num_items=2"],
                 ["calibrate", "-m", str(path), "-d", "demo-seg", "-o", str(tmp_path / "s.h5")]):
        r = CliRunner().invoke(main, verb)
        assert r.exit_code == 2 and not marker.exists(), r.output
        assert "does not build from a file" in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_the_allow_list_is_exact_and_attribute_free():
    for spec, (module, name) in ALLOWED_ARCHITECTURES.items():
        assert spec == f"{module}:{name}" and "." not in name and name.isidentifier()


def test_allowed_architectures_still_load(tmp_path):
    from sjunet.models.fcn import SpikingFCNNet

    m = SpikingFCNNet(in_channels=1, out_channels=2, width=2).eval()
    ck = {"kind": ANN_KIND, "model_config": None, "state_dict": m.state_dict(), "fingerprint": model_fingerprint(m),
          "arch": {"factory": "sjunet.models.fcn:SpikingFCNNet",
                   "kwargs": {"in_channels": 1, "out_channels": 2, "width": 2}}}
    model, _ = load_ann(_write(ck, tmp_path))
    assert model_fingerprint(model) == ck["fingerprint"]


@pytest.mark.parametrize("factory,kwargs", [  # issue 26's trained rows load by their checkpoint alone
    ("monai.networks.nets:AttentionUnet", dict(spatial_dims=2, in_channels=1, out_channels=2, channels=[2, 4],
                                                strides=[2])),
    ("sjunet.models.zoo_nets:unetr", dict(in_channels=1, out_channels=2, img_size=[16, 16], spatial_dims=2,
                                          feature_size=2, hidden_size=8, mlp_dim=8, num_heads=2))])
def test_attention_and_transformer_unets_load_from_the_allow_list(tmp_path, factory, kwargs):
    from sjunet.models.external import build_arch

    m = build_arch(factory, kwargs).eval()
    ck = {"kind": ANN_KIND, "model_config": None, "state_dict": m.state_dict(), "fingerprint": model_fingerprint(m),
          "arch": {"factory": factory, "kwargs": kwargs}}
    model, _ = load_ann(_write(ck, tmp_path))
    assert model_fingerprint(model) == ck["fingerprint"]
    ck["arch"]["kwargs"] = {**kwargs, "save_attn": True}  # an argument outside the closed list: refused
    with pytest.raises(ArtifactError, match="save_attn"):
        load_ann(_write(ck, tmp_path))


def test_a_user_named_arch_is_trusted_only_when_it_is_exactly_the_files(tmp_path):
    from sjunet.models.fcn import SpikingFCNNet

    m = SpikingFCNNet(in_channels=1, out_channels=2, width=2).eval()
    spec = "sjunet.models.fcn:SpikingFCNNet.__call__"  # not on the allow-list: needs the user's --arch
    ck = {"kind": ANN_KIND, "state_dict": m.state_dict(), "fingerprint": model_fingerprint(m),
          "arch": {"factory": "tests:whatever", "kwargs": {}}}
    with pytest.raises(ArtifactError, match="not --arch"):
        load_ann(_write(ck, tmp_path), trust_arch=spec)


# ------------------------------------------------------------------ integrity is mandatory

@pytest.mark.parametrize("fingerprint", ["<deleted>", None, "", "0" * 15, 12345, ["a"], "G" * 16])
def test_the_fingerprint_cannot_be_switched_off(tiny, tmp_path, fingerprint):
    ck = _ckpt(tiny)
    ck["state_dict"] = {k: v.clone() for k, v in ck["state_dict"].items()}
    next(iter(ck["state_dict"].values())).view(-1)[0] = float("nan")  # tampered weights
    if fingerprint == "<deleted>":
        del ck["fingerprint"]
    else:
        ck["fingerprint"] = fingerprint
    err = refused_cleanly(load_ann, _write(ck, tmp_path), "checkpoint")
    assert "fingerprint" in str(err)


def test_tampered_weights_with_the_old_fingerprint_are_refused(tiny, tmp_path):
    ck = _ckpt(tiny)
    next(iter(ck["state_dict"].values())).view(-1)[0] += 1.0
    assert "integrity check failed" in str(refused_cleanly(load_ann, _write(ck, tmp_path), "checkpoint"))


# ------------------------------------------------------------------ declared sizes are checked first

@pytest.mark.parametrize("config", [{"depth": 1000}, {"base_width": 60000}, {"depth": 30, "base_width": 1},
                                    {"in_channels": 10 ** 9}, {"depth": 1.5}, {"batch_norm": "yes"},
                                    {"pool": ["avg"]}, {"unknown": 1}])
def test_a_crafted_config_allocates_nothing(tiny, tmp_path, config):
    ck = _ckpt(tiny)
    ck["model_config"] = {**ck["model_config"], **config}
    t0 = time.monotonic()
    refused_cleanly(load_ann, _write(ck, tmp_path), "checkpoint")
    assert time.monotonic() - t0 < 5


def test_a_crafted_arch_declaring_a_huge_network_allocates_nothing(tmp_path):
    from sjunet.models.fcn import SpikingFCNNet

    m = SpikingFCNNet(in_channels=1, out_channels=2, width=2).eval()
    ck = {"kind": ANN_KIND, "state_dict": m.state_dict(), "fingerprint": model_fingerprint(m),
          "arch": {"factory": "sjunet.models.fcn:SpikingFCNNet",
                   "kwargs": {"in_channels": 1, "out_channels": 2, "width": 60000}}}
    err = refused_cleanly(load_ann, _write(ck, tmp_path), "checkpoint")
    assert "do not fit" in str(err) or "does not build" in str(err)
    ck["arch"]["kwargs"]["width"] = 200000  # beyond what a file may give: refused before anything is built
    assert "'width'" in str(refused_cleanly(load_ann, _write(ck, tmp_path), "checkpoint"))


# ------------------------------------------------------------------ the fuzz layer

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
factories = st.one_of(st.sampled_from(HOSTILE_FACTORIES + list(ALLOWED_ARCHITECTURES)),
                      st.text(max_size=60), st.from_regex(r"[a-z_.]{1,30}:[A-Za-z_.]{1,30}", fullmatch=True))
tensors = st.builds(lambda shape: torch.zeros(shape), st.lists(st.integers(0, 4), max_size=4))


@FUZZ
@given(field=st.sampled_from(["kind", "model_config", "arch", "state_dict", "fingerprint"]), value=json_values)
def test_fuzz_any_field_replaced_by_json(tiny, field, value):
    ck = _ckpt(tiny)
    ck[field] = value
    refused_cleanly(load_ann, _write(ck), "checkpoint", allow_success=field == "arch" and value is None)


@FUZZ
@given(factory=factories, kwargs=json_values)
def test_fuzz_arch_records(tiny, factory, kwargs):
    ck = _ckpt(tiny, arch={"factory": factory, "kwargs": kwargs}, model_config=None)
    refused_cleanly(load_ann, _write(ck), "checkpoint")


@FUZZ
@given(key=st.sampled_from(["in_channels", "out_channels", "base_width", "depth", "batch_norm", "up_relu", "pool"]),
       value=json_values)
def test_fuzz_model_config(tiny, key, value):
    ck = _ckpt(tiny)
    ck["model_config"] = {**ck["model_config"], key: value}
    refused_cleanly(load_ann, _write(ck), "checkpoint", allow_success=value == ck["model_config"].get(key))


@FUZZ
@given(data=st.data())
def test_fuzz_state_dict_tensors(tiny, data):
    ck = _ckpt(tiny)
    sd = dict(ck["state_dict"])
    name = data.draw(st.sampled_from(sorted(sd) + ["ghost.weight"]))
    action = data.draw(st.sampled_from(["reshape", "delete", "dtype", "json"]))
    if action == "reshape":
        sd[name] = data.draw(tensors)
    elif action == "delete":
        sd.pop(name, None)
    elif action == "dtype":
        sd[name] = sd.get(name, torch.zeros(1)).to(torch.float64)
    else:
        sd[name] = data.draw(json_values)
    ck["state_dict"] = sd
    # harmless, may be accepted: the same values in float64 (loaded into the float32 model unchanged),
    # or deleting a tensor the file never had
    harmless = (action == "dtype" and name != "ghost.weight") or (action == "delete" and name == "ghost.weight")
    refused_cleanly(load_ann, _write(ck), "checkpoint", allow_success=harmless)


@FUZZ
@given(data=st.data())
def test_fuzz_bytes_of_a_valid_checkpoint(tiny, data):
    d = Path(tempfile.mkdtemp())
    p = _write(_ckpt(tiny), d)
    raw = bytearray(p.read_bytes())
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    p.write_bytes(bytes(raw))
    refused_cleanly(load_ann, p, "checkpoint", allow_success=True)  # a flip may hit unused bytes



# ------------------------------------------------------------------ no network from a file (issue 27)

HUB_PREFIXES = ["hf-hub:", "hf_hub:", "tu-hf-hub:", "tu-hf_hub:", "HF-HUB:", "tu-HF_HUB:", "http://", "https://",
                "file://", "/", "./", "../", "~/", "local-dir:", "timm/", "tu-timm/", "s3://", "tu-../", "ftp:"]
hub_names = st.builds(lambda p, s: p + s, st.sampled_from(HUB_PREFIXES),
                      st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-./:", max_size=30))
#: per allowed factory, its arguments whose strings a library looks up (names, encoders, layers)
STRING_KWARGS = {
    "segmentation_models_pytorch:Unet": ["encoder_name", "encoder_weights", "decoder_attention_type", "activation",
                                         "decoder_interpolation", "decoder_use_norm"],
    "monai.networks.nets:BasicUNet": ["act", "norm", "upsample", "dropout"],
    "monai.networks.nets:UNet": ["act", "norm", "adn_ordering"],
    "sjunet.models.nnunet:plain_conv_unet": ["norm", "nonlin"],
    "sjunet.models.unet:UNet": ["pool"],
}


@FUZZ
@given(factory=st.sampled_from(sorted(STRING_KWARGS)), data=st.data(),
       value=st.one_of(hub_names, st.text(max_size=40), st.lists(hub_names, min_size=1, max_size=2),
                       st.tuples(hub_names, st.dictionaries(st.text(max_size=8), hub_names, max_size=2))))
def test_fuzz_hub_names_in_factory_kwargs(tiny, factory, data, value):
    """A name a library would look up — an encoder on a model hub, a URL, a path, a layer name — in
    an allowed factory's arguments: refused before any import, or built locally; never a socket."""
    from hostile import no_sockets

    key = data.draw(st.sampled_from(STRING_KWARGS[factory]), label="argument")
    ck = _ckpt(tiny, arch={"factory": factory, "kwargs": {key: list(value) if isinstance(value, tuple) else value}})
    with no_sockets() as attempts:
        err = refused_cleanly(load_ann, _write(ck), "checkpoint")
    assert not attempts, f"{factory} {key}={value!r} reached the network: {attempts}"
    assert isinstance(err, ArtifactError)


@pytest.mark.parametrize("name", ["tu-hf-hub:evil/model", "hf-hub:evil/model", "tu-hf_hub:evil/model",
                                  "https://evil.example/model", "/etc/passwd", "tu-../../x"])
def test_a_hub_encoder_is_refused_before_importing_the_library(tiny, name):
    """Reported: encoder_name "tu-hf-hub:evil/model" made timm fetch a config from a model hub."""
    from hostile import no_sockets

    ck = _ckpt(tiny, arch={"factory": "segmentation_models_pytorch:Unet",
                           "kwargs": {"encoder_name": name, "encoder_weights": None, "in_channels": 1, "classes": 2}})
    t0 = time.monotonic()
    with no_sockets() as attempts:
        err = refused_cleanly(load_ann, _write(ck), "checkpoint")
    assert "encoder_name" in str(err) and not attempts and time.monotonic() - t0 < 5
