"""Issue 12: the ``device`` parameter. Spellings resolve to the right :class:`torch.device` (CUDA
and MPS availability are simulated, so the tests mean the same on any machine); a device the
machine lacks is refused naming ``device`` and what is available; and the resolved device
object is what the extract, extract-finetuned, train and scene stages hand to the model's
``.to(...)`` and to the training functions (a stage that ignored the parameter fails here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _helpers_cache import png_fixation_dataset, tiny_backbone

import dissect.device
from dissect.config import load_params
from dissect.device import DeviceError, check_device_name, resolve_device
from dissect.params_schema import ParamsError
from dissect.stages import common

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "pipelines" / "params.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dissect.device, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA present with two devices, the current one being cuda:0 (simulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dissect.device, "_mps_available", lambda: False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)


def params_with(tmp_path, **overrides):
    return load_params(PARAMS, {"work": str(tmp_path / "work"),
                                "results": str(tmp_path / "results"), "progress": False,
                                **overrides})


# ------------------------------------------------------------------------------ resolution
def test_spellings_on_a_machine_without_gpu(no_gpu):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:0", "cuda:1", "mps"):
        with pytest.raises(DeviceError) as info:
            resolve_device(name)
        text = str(info.value)
        assert text.startswith(f"device: {name!r} requested, but "), text
        assert text.endswith("available on this machine: cpu"), text
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


def test_spellings_with_cuda(two_gpus):
    import os

    assert resolve_device("auto") == torch.device("cuda", 0)  # auto prefers CUDA
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # deterministic cuBLAS
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"'cuda:2' requested.*2 CUDA device.*available on "
                                          r"this machine: cpu, cuda:0, cuda:1$"):
        resolve_device("cuda:2")


def test_mps_only_when_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dissect.device, "_mps_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("auto") == torch.device("cpu")  # auto never picks MPS (no float64)


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:", "cuda:x", "cuda0", "", " cpu", 0, None])
def test_misspelt_devices_are_refused(name):
    with pytest.raises(ValueError, match=r"must be auto, cpu, cuda, cuda:N or mps, got"):
        check_device_name(name)
    if isinstance(name, str):
        with pytest.raises(DeviceError, match=r"^device: must be auto"):
            resolve_device(name)


def test_schema_checks_the_spelling(tmp_path):
    assert params_with(tmp_path)["device"] == "auto"  # the committed default
    for ok in ("cpu", "cuda", "cuda:3", "mps"):
        assert params_with(tmp_path, device=ok)["device"] == ok
    with pytest.raises(ParamsError) as info:
        params_with(tmp_path, device="gpu")
    assert info.value.keys == ["device"]
    assert str(info.value).startswith(f"{PARAMS}: device: must be auto, cpu, cuda, cuda:N or mps")


def test_common_device_names_the_parameter_and_the_file(tmp_path, no_gpu):
    assert common.device(params_with(tmp_path, device="cpu")) == torch.device("cpu")
    with pytest.raises(ParamsError) as info:
        common.device(params_with(tmp_path, device="cuda:1"))
    assert info.value.keys == ["device"]
    assert str(info.value).startswith(f"{PARAMS}: device: 'cuda:1' requested, but CUDA")
    assert "available on this machine: cpu" in str(info.value)


def test_training_stages_refuse_mps_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(dissect.device, "_mps_available", lambda: True)
    params = params_with(tmp_path, device="mps")
    assert common.device(params) == torch.device("mps")  # extraction may use it
    with pytest.raises(ParamsError, match="device: 'mps' cannot run this stage.*float64"):
        common.device(params, float64=True)


# ------------------------------------------------------------------ the device reaches tensors
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    sizes = [(20 + k, 24) for k in range(6)]
    return png_fixation_dataset(tmp_path_factory.mktemp("img"), sizes, n_subjects=2, seed=1)


def test_extraction_runs_on_the_device(images, tmp_path, monkeypatch):
    """extract_store with device "cpu": the model's parameters and every captured tensor (and
    the batches fed to the trunk) are on it."""
    from dissect.capture import LayerCapture
    from dissect.stages.extract import extract_store

    seen = []
    original = LayerCapture.attribute

    def spy(self, x):
        out = original(self, x)
        seen.append((x.device, [t.device for t in out.values()]))
        return out

    monkeypatch.setattr(LayerCapture, "attribute", spy)
    params = params_with(tmp_path, device="cpu")
    bb = tiny_backbone()
    extract_store(params, images, bb, ["c1", "c2"], tmp_path / "act.zarr")
    assert {p.device for p in bb.model.parameters()} == {torch.device("cpu")}
    assert seen and all(d == torch.device("cpu") and set(outs) == {torch.device("cpu")}
                        for d, outs in seen)


def test_training_runs_on_the_device(images, monkeypatch):
    import dissect.training
    from dissect.training import train_readout

    devices = []
    original = dissect.training.nss_loss

    def spy(maps, sizes, points):
        devices.append(maps.device)
        return original(maps, sizes, points)

    monkeypatch.setattr(dissect.training, "nss_loss", spy)
    res = train_readout(tiny_backbone(), images, images.ids[:4], images.ids[4:], 1, epochs=1,
                        batch_size=2, lr_schedule=None, patience=None, device="cpu")
    assert {p.device for p in res.model.parameters()} == {torch.device("cpu")}
    assert devices and set(devices) == {torch.device("cpu")}


# -------------------------------------------------- stages hand the resolved device object on
@pytest.fixture
def resolved(monkeypatch):
    """``resolve_device`` returns one particular device object; the tests check that this very
    object (``is``) reaches ``.to(...)`` and the training functions."""
    dev = torch.device("cpu")
    calls = []

    def fake(name="auto"):
        calls.append(name)
        return dev

    monkeypatch.setattr(dissect.device, "resolve_device", fake)
    return SimpleNamespace(device=dev, calls=calls)


def spied_backbone():
    from unittest import mock

    bb = tiny_backbone()
    bb.model.to = mock.Mock(wraps=bb.model.to)
    return bb


def _moved_to(bb) -> list:
    return [c.args[0] for c in bb.model.to.call_args_list if c.args]


def test_extract_stage_moves_the_model_to_the_resolved_device(images, tmp_path, monkeypatch,
                                                              resolved):
    import json

    from dissect.stages.extract import run_extract

    params = params_with(tmp_path, device="cpu", **{"backbone.layers": ["c1", "c2"]})
    bb = spied_backbone()
    monkeypatch.setattr(common, "inputs", lambda p: (images, None))
    monkeypatch.setattr(common, "ids_of", lambda p, which: images.ids[:3])
    monkeypatch.setattr(common, "backbone", lambda p: bb)
    run_extract(params)
    assert resolved.calls and set(resolved.calls) == {"cpu"}  # the params value was resolved
    assert any(d is resolved.device for d in _moved_to(bb))
    record = json.loads((tmp_path / "work" / "provenance" / "extract.json").read_text())
    assert record["device"] == "cpu"


def test_extract_finetuned_stage_moves_each_trunk(images, tmp_path, monkeypatch, resolved):
    import dissect.models.base
    import dissect.task_compare
    from dissect.stages.extract import run_extract_finetuned

    params = params_with(tmp_path, device="cpu", **{"backbone.layers": ["c1", "c2"],
                                                    "train.ks": [0, 1], "train.seeds": [0]})
    trunks = []

    def fake_trunk(readout, tag):
        trunks.append(spied_backbone())
        return trunks[-1]

    monkeypatch.setattr(common, "inputs", lambda p: (images, None))
    monkeypatch.setattr(common, "ids_of", lambda p, which: images.ids[:3])
    monkeypatch.setattr(common, "backbone", lambda p: tiny_backbone())
    monkeypatch.setattr(dissect.models.base, "load_model",
                        lambda *a, **kw: SimpleNamespace(readout=None))
    monkeypatch.setattr(dissect.task_compare, "finetuned_trunk", fake_trunk)
    run_extract_finetuned(params)
    assert len(trunks) == 1 and any(d is resolved.device for d in _moved_to(trunks[0]))


class Stop(Exception):
    pass


def test_train_stage_passes_the_resolved_device(images, tmp_path, monkeypatch, resolved):
    import dissect.training
    from dissect.stages.train import run_train

    params = params_with(tmp_path, device="cpu", **{"train.ks": [0], "train.seeds": [0]})
    seen = {}

    def fake_train(*args, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(common, "inputs", lambda p: (images, None))
    monkeypatch.setattr(common, "ids_of",
                        lambda p, which: images.ids[:4] if which == "train" else images.ids[4:])
    monkeypatch.setattr(common, "backbone", lambda p: tiny_backbone())
    monkeypatch.setattr(dissect.training, "train_readout", fake_train)
    with pytest.raises(Stop):
        run_train(params)
    assert seen["device"] is resolved.device
    assert resolved.calls == ["cpu"]


def test_scene_stage_passes_the_resolved_device(images, tmp_path, monkeypatch, resolved):
    import dissect.models.base
    import dissect.scene
    from dissect.stages.scene import one_seed

    params = params_with(tmp_path, device="cpu")
    seen = {}

    def fake_train(*args, **kw):
        seen["train"] = kw
        return SimpleNamespace(model=SimpleNamespace(tune_stage_names=["c2"]))

    def fake_evaluate(*args, **kw):
        seen["evaluate"] = kw
        raise Stop

    monkeypatch.setattr(common, "backbone", lambda p: tiny_backbone())
    monkeypatch.setattr(dissect.models.base, "load_model",
                        lambda *a, **kw: SimpleNamespace(readout=SimpleNamespace(k=1,
                                                                                 n_stages=2)))
    monkeypatch.setattr(dissect.scene, "train_scene_model", fake_train)
    monkeypatch.setattr(dissect.scene, "save_scene_model", lambda model, path: path)
    monkeypatch.setattr(dissect.scene, "evaluate_scene_model", fake_evaluate)
    with pytest.raises(Stop):
        one_seed(params, images, None, None, images.ids[:3], images.ids[3:4], images.ids[4:],
                 seed=0, scene_seed=0, sp_name="k1")
    assert seen["train"]["device"] is resolved.device
    assert seen["evaluate"]["device"] is resolved.device
