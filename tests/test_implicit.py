"""Implicit saliency (Sun, Prabhushankar & AlRegib, ICIP 2020), Grad-CAM and Guided Backprop as
models of the shared interface (dissect.models.implicit). Every number is checked against an
independent reference: the class statistics against one forward and N plain backward passes
(µ, V, V̂ and S_C computed by hand in numpy from the stacked R_i), Grad-CAM / Guided Backprop
against captum called directly, the ReLU/ReLU6 guided rule against a net small enough to do by
hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, LayerGradCam
from torch import nn

from dissect.backbones import Backbone, load_backbone
from dissect.errors import DataError
from dissect.models.base import SaliencyModel, StimulusImage
from dissect.models.implicit import (
    FeedForwardSaliencyModel,
    GradCamModel,
    GuidedBackpropModel,
    ImplicitSaliencyModel,
    feedforward_map,
    feedforward_saliency_model,
    gradcam_model,
    gradient_statistics,
    guided_backprop,
    guided_backprop_model,
    implicit_map,
    implicit_saliency_model,
    implicit_statistics,
)
from dissect.preprocess import Preprocess

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------- helpers


class Shift(nn.Module):
    """``x − 0.3``, optionally in place (to check that hooked tensors survive in-place ops)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(0.3) if self.inplace else x - 0.3


def tiny_net(inplace: bool = False, seed: int = 0) -> nn.Sequential:
    """Conv-ReLU-Conv-ReLU6 [mid] - shift - Conv-ReLU [last] - GAP - Linear(6 → 7), float64."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU6(inplace=inplace), Shift(inplace), nn.Conv2d(5, 6, 3, stride=2, padding=1),
            nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 7),
        )
        for conv in (net[0], net[2]):
            nn.init.normal_(conv.weight, 0.0, 0.6)
            nn.init.uniform_(conv.bias, 0.0, 0.5)
    return net.double().eval()


def tiny_backbone(net: nn.Module, size: tuple[int, int] = (12, 16)) -> Backbone:
    return Backbone("tiny", net, [("all", net)], {"mid": "3", "last": "6"}, "tiny",
                    Preprocess(size))


def loop_r(model: nn.Module, module: nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """The straightforward reference: one forward, then one backward per class (retain_graph)
    of F.cross_entropy against label i; R_i = |grad| stacked, (N, K, h, w)."""
    held = []
    handle = module.register_forward_hook(lambda _m, _i, out: held.append(out))
    z = model(x)
    handle.remove()
    f = held[0]
    f.retain_grad()
    rs = []
    for i in classes:
        f.grad = None
        F.cross_entropy(z, torch.tensor([i])).backward(retain_graph=True)
        rs.append(f.grad[0].abs().detach().double().numpy())
    return np.stack(rs)


def reference_map(r: np.ndarray) -> np.ndarray:
    """S_C by hand: mean / population variance over classes, min–max of each channel's V map
    (a constant map → 0), mean over channels of (1 − V̂) µ."""
    mu, v = r.mean(axis=0), r.var(axis=0)
    lo, hi = v.min(axis=(1, 2), keepdims=True), v.max(axis=(1, 2), keepdims=True)
    vhat = np.where(hi > lo, (v - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return ((1.0 - vhat) * mu).mean(axis=0)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def upsample_ref(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.as_tensor(m, dtype=torch.float64)[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:40, 0:56]
    blob = 180 * np.exp(-((yy - 15) ** 2 + (xx - 35) ** 2) / 60.0)
    img = blob[..., None] + rng.integers(0, 60, (40, 56, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    """EfficientNet-Lite0 with its ImageNet weights, converted to float64 (exact comparisons)."""
    bb = load_backbone("efficientnet_lite0")
    bb.model.double()
    return bb


# --------------------------------------------------------------------------- class statistics


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_statistics_equal_the_loop_on_a_small_net(chunk):
    net = tiny_net()
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    classes = list(range(7))
    r = loop_r(net, net[3], x, classes)
    mean, var, act, p, idx = gradient_statistics(net, net[3], x, None, chunk)
    assert idx == classes and mean.shape == (5, 12, 16)
    assert rel_err(mean, r.mean(0)) <= 1e-12 and rel_err(var, r.var(0)) <= 1e-12
    assert rel_err(implicit_map(mean, var), reference_map(r)) <= 1e-12
    np.testing.assert_allclose(act, net[:4](x)[0].detach(), rtol=0, atol=0)
    np.testing.assert_allclose(p, torch.softmax(net(x), 1)[0].detach(), rtol=1e-12)


def test_statistics_equal_the_loop_on_lite0(lite0, image):
    x = Preprocess((64, 64))(image).double()
    top1 = int(lite0.model(x).argmax())
    classes = [0, 7, 283, 500, 999] + ([top1] if top1 not in (0, 7, 283, 500, 999) else [])
    module = lite0.module("block10")
    r = loop_r(lite0.model, module, x, classes)
    mean, var, _, _, _ = gradient_statistics(lite0.model, module, x, classes, chunk_size=4)
    assert rel_err(mean, r.mean(0)) <= 1e-6 and rel_err(var, r.var(0)) <= 1e-6
    assert rel_err(implicit_map(mean, var), reference_map(r)) <= 1e-6
    # chunking does not change the result
    mean2, var2, *_ = gradient_statistics(lite0.model, module, x, classes, chunk_size=2)
    assert rel_err(mean2, mean) <= 1e-12 and rel_err(var2, var) <= 1e-12
    # the model of the shared interface: the same map, upsampled to the image
    model = implicit_saliency_model(lite0, "block10", classes=classes, input_size=(64, 64))
    assert isinstance(model, SaliencyModel) and model.name == "implicit_block10"
    s = model.saliency_map(StimulusImage("im1", image))
    assert s.shape == image.shape[:2] and s.dtype == np.float64
    assert rel_err(s, upsample_ref(reference_map(r), image.shape[:2])) <= 1e-6
    assert model.module is lite0.model and model.layers == lite0.layers
    assert model.layer_module("block10") is module
    # the per-unit statistics for caching
    st = implicit_statistics(lite0, image, "block10", classes, input_size=(64, 64))
    assert st.classes == tuple(classes) and st.mean.shape == st.var.shape == st.activation.shape
    assert rel_err(st.var, r.var(0)) <= 1e-6


def test_hooked_tensors_survive_in_place_ops():
    """The layer is followed by in-place ops (x.sub_, ReLU(inplace=True)) and is itself an
    in-place ReLU6: the statistics equal the out-of-place twin's loop."""
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_net, net = tiny_net(inplace=False), tiny_net(inplace=True)
    r = loop_r(ref_net, ref_net[3], x, range(7))
    mean, var, act, *_ = gradient_statistics(net, net[3], x, None, 4)
    assert rel_err(mean, r.mean(0)) <= 1e-12 and rel_err(var, r.var(0)) <= 1e-12
    np.testing.assert_allclose(act, ref_net[:4](x)[0].detach(), rtol=0, atol=1e-15)



class Mixed(nn.Module):
    """A tail that concatenates a prefix tensor with the layer's output ("cat"), a prefix that
    reshapes by the input's batch size ("reshape"), or a tail that mixes the rows of a batch
    ("mix"): the first two need the whole network on the copies, the last cannot be batched."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.a, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.b, self.fc = nn.Conv2d(8, 5, 3, padding=1), nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.mode == "reshape":
            y = y.reshape(x.shape[0], -1).reshape(y.shape)
        h = self.act(y)
        if self.mode == "mix":
            h = h - h.mean(dim=0, keepdim=True) + h
        return self.fc(self.b(torch.cat([h, y], dim=1)).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", ["cat", "reshape"])
def test_networks_whose_prefix_cannot_run_once(mode):
    torch.manual_seed(0)
    net = Mixed(mode).double().eval()
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    r = loop_r(net, net.act, x, range(6))
    mean, var, *_ = gradient_statistics(net, net.act, x, None, 4)
    assert rel_err(mean, r.mean(0)) <= 1e-12 and rel_err(var, r.var(0)) <= 1e-12


def test_networks_mixing_the_rows_of_a_batch_are_refused():
    net = Mixed("mix").double().eval()
    with pytest.raises(DataError, match="rows of a batch are not independent"):
        gradient_statistics(net, net.act, torch.randn(1, 3, 6, 7, dtype=torch.float64), 3)

# ----------------------------------------------------------------------- S_F, flat, zero maps


def test_feedforward_map_of_equal_units():
    """S_F = (1/K) Σ_k |A_k| (µ = |A|, V = 0 → V̂ = 0): equal units give that unit's map,
    constant units give the constant."""
    a = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(feedforward_map(a.expand(8, 3, 5)), a, rtol=1e-15, atol=0)
    torch.testing.assert_close(feedforward_map(torch.full((4, 3, 5), 2.5, dtype=torch.float64)),
                               torch.full((3, 5), 2.5, dtype=torch.float64))
    # through the model: a network whose mid units all share one filter
    net = tiny_net()
    with torch.no_grad():
        net[2].weight.copy_(net[2].weight[:1].expand_as(net[2].weight))
        net[2].bias.fill_(0.1)
    bb = tiny_backbone(net)
    img = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    s = feedforward_saliency_model(bb, "mid").saliency_map(img)
    unit = net[:4](bb.preprocess(img).double())[0, 0].detach().numpy()
    np.testing.assert_allclose(s, upsample_ref(unit, (24, 20)), rtol=1e-12)
    assert isinstance(FeedForwardSaliencyModel(bb, "mid"), SaliencyModel)


def test_flat_map_at_a_layer_feeding_global_average_pooling(lite0, image):
    net = tiny_net()
    bb = tiny_backbone(net)
    img = np.random.default_rng(1).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    st = implicit_statistics(bb, img, "last")  # returned as they are: spatially constant
    assert np.ptp(st.mean, axis=(1, 2)).max() <= 1e-15 * st.mean.max()
    with pytest.raises(DataError, match="spatially constant"):
        ImplicitSaliencyModel(bb, "last", classes=None).saliency_map(img)
    assert implicit_saliency_model(bb, "mid").saliency_map(img).std() > 0
    with pytest.raises(DataError, match="spatially constant.*block10"):
        implicit_saliency_model(lite0, "head", classes=3, input_size=(64, 64)).saliency_map(image)


def test_all_zero_gradients_are_refused():
    net = tiny_net()
    with torch.no_grad():
        net[5].bias.fill_(-1e4)  # the ReLU after the layer is off everywhere
    bb = tiny_backbone(net)
    img = np.random.default_rng(2).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    assert not implicit_statistics(bb, img, "mid").mean.any()
    with pytest.raises(DataError, match="im7: every class gradient is zero at layer mid"):
        implicit_saliency_model(bb, "mid").saliency_map(StimulusImage("im7", img))


def test_bad_inputs(image):
    bb = tiny_backbone(tiny_net())
    img = image[:24, :20]
    with pytest.raises(DataError, match="no layer 'conv9'"):
        implicit_saliency_model(bb, "conv9")
    with pytest.raises(DataError, match="no layer"):
        gradcam_model(bb, "conv9")
    with pytest.raises(DataError, match="N >= 2 classes"):
        implicit_saliency_model(bb, "mid", classes=[3]).saliency_map(img)
    with pytest.raises(DataError, match="N >= 2 classes"):
        implicit_statistics(bb, img, "mid", classes=1)
    with pytest.raises(DataError, match="out of range"):
        implicit_statistics(bb, img, "mid", classes=[0, 7])
    with pytest.raises(DataError, match="unique"):
        implicit_statistics(bb, img, "mid", classes=[1, 1, 2])
    with pytest.raises(DataError, match="chunk_size"):
        implicit_statistics(bb, img, "mid", chunk_size=0)
    with pytest.raises(DataError, match="variance_norm"):
        implicit_saliency_model(bb, "mid", variance_norm="zscore")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="uint8"):
        implicit_saliency_model(bb, "mid").saliency_map(img.astype(np.float32))
    bb.model.train()
    try:
        with pytest.raises(DataError, match="eval mode"):
            implicit_statistics(bb, img, "mid")
    finally:
        bb.model.eval()


def test_global_variance_normalisation():
    """variance_norm="global": one min–max over the whole K × h × w tensor."""
    net = tiny_net()
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    r = loop_r(net, net[3], x, range(7))
    mu, v = r.mean(0), r.var(0)
    ref = ((1 - (v - v.min()) / (v.max() - v.min())) * mu).mean(0)
    mean, var, *_ = gradient_statistics(net, net[3], x)
    assert rel_err(implicit_map(mean, var, "global"), ref) <= 1e-12


# ---------------------------------------------------------------------- Grad-CAM, guided backprop


def test_gradcam_equals_captum_on_vgg16(vgg, image):
    model = gradcam_model(vgg, "conv4_3", input_size=(64, 64))
    assert isinstance(model, GradCamModel) and model.name == "gradcam_conv4_3"
    x = Preprocess((64, 64))(image)
    target = int(vgg.model(x).argmax())
    cam = LayerGradCam(vgg.model, vgg.model.features[22])
    ref = cam.attribute(x, target=target, relu_attributions=True)
    ref = F.interpolate(ref.double(), size=image.shape[:2], mode="bilinear", align_corners=False)
    s = model.saliency_map(image)
    assert s.shape == image.shape[:2] and s.max() > 0
    np.testing.assert_allclose(s, ref[0, 0].detach().numpy(), rtol=1e-6, atol=1e-12)


def test_guided_backprop_uses_captum_on_relu_nets(vgg, image):
    x = Preprocess((64, 64))(image)
    target = int(vgg.model(x).argmax())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GuidedBackprop(vgg.model).attribute(x.clone(), target=target)
    ref_map = upsample_ref(ref[0].abs().amax(0).detach().numpy(), image.shape[:2])
    model = guided_backprop_model(vgg, input_size=(64, 64))
    np.testing.assert_allclose(model.saliency_map(image), ref_map, rtol=1e-6, atol=1e-12)


def test_guided_backprop_through_relu_and_relu6_by_hand():
    """x = (1, 2) → W1 → ReLU6 → W2 → ReLU → W3, target 0. Pre-activations (5, 11, 1) and
    (16, −3, 8). Guided: δ = relu(W3[0]) on the active ReLU units = (1, 0, 0); W2ᵀδ = (1, 2, −1);
    ReLU6 passes unit 0 (unit 1 saturates, unit 2's gradient is negative) → (1, 0, 0); W1ᵀ →
    (1, 2). The plain gradient is (−2, 2); captum's GuidedBackprop alone (ReLU6 unguided)
    gives (2, 1)."""
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU6(), nn.Linear(3, 3, bias=False),
                        nn.ReLU(), nn.Linear(3, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [-1.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [-2.0, 1.0, 1.0], [1.0, 1.0, -3.0]]))
        net[4].weight.copy_(torch.tensor([[1.0, -2.0, -1.0], [2.0, 1.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert guided_backprop(net, x, 0).tolist() == [[1.0, 2.0]]
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.grad(net(xg)[0, 0], xg)[0].tolist() == [[-2.0, 2.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert GuidedBackprop(net).attribute(x.clone(), target=0).tolist() == [[2.0, 1.0]]


def test_guided_backprop_on_lite0_zeroes_negative_gradients_at_every_relu6(lite0, image):
    x = Preprocess((64, 64))(image).double()
    target = int(lite0.model(x).argmax())
    relu6 = [m for m in lite0.model.modules() if isinstance(m, nn.ReLU6)]
    seen: dict[int, torch.Tensor] = {}

    def keep(mod, args):  # the activation's input; its .grad is what reaches the layer below
        args[0].retain_grad()
        seen[id(mod)] = args[0]

    def run(fn):
        seen.clear()
        handles = [m.register_forward_pre_hook(keep) for m in relu6]
        try:
            out = fn()
        finally:
            for h in handles:
                h.remove()
        return out, [t.grad for t in seen.values()]

    guided, grads = run(lambda: guided_backprop(lite0.model, x, target))
    assert len(grads) == 33  # stem, 15 expansions, 16 depthwise, head (two modules never run)
    assert all(g is not None and bool((g >= 0).all()) for g in grads)

    def plain():
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(lite0.model(xg)[0, target], xg)[0]

    grad, plain_grads = run(plain)
    assert any(bool((g < 0).any()) for g in plain_grads)
    assert not torch.allclose(guided, grad, rtol=1e-3, atol=0)
    s = GuidedBackpropModel(lite0, target=target, input_size=(64, 64)).saliency_map(image)
    ref = upsample_ref(guided[0].abs().amax(0).numpy(), image.shape[:2])
    np.testing.assert_allclose(s, ref, rtol=1e-12)


# ------------------------------------------------------- several layers, the statistics cache


def test_several_layers_from_one_backward_equal_each_layer_alone(lite0, image):
    """gradient_statistics_layers (one batched backward for all layers) equals the loop of
    plain backward passes at each layer; the later layers are read from the same pass."""
    from dissect.models.implicit import gradient_statistics_layers

    x = Preprocess((64, 64))(image).double()
    classes = [0, 3, 283, 999]
    names = ["block10", "block12", "block15"]
    stats, p, idx = gradient_statistics_layers(
        lite0.model, [lite0.module(n) for n in names], x, classes, chunk_size=3)
    assert idx == classes and len(stats) == 3
    for name, (mean, var, act) in zip(names, stats, strict=True):
        r = loop_r(lite0.model, lite0.module(name), x, classes)
        assert rel_err(mean, r.mean(0)) <= 1e-6 and rel_err(var, r.var(0)) <= 1e-6, name
        assert mean.shape == act.shape
    # a module listed twice, or none, is refused
    with pytest.raises(DataError, match="distinct"):
        gradient_statistics_layers(lite0.model, [lite0.module("block10")] * 2, x, classes)
    with pytest.raises(DataError, match="distinct"):
        gradient_statistics_layers(lite0.model, [], x, classes)


def test_statistics_cache_and_the_model_reading_it(tmp_path):
    """statistics_backbone through the activation cache stores µ and V per unit (float32); the
    implicit model reads a stored image and gives the map it computes live; a stored image
    whose content changed is refused, an image not stored is computed."""
    from _helpers_cache import png_fixation_dataset

    from dissect.cache import extract_activations, open_activations
    from dissect.models.implicit import statistics_backbone, statistics_id

    net = tiny_net()
    bb = tiny_backbone(net)
    ds = png_fixation_dataset(tmp_path, [(24, 32), (24, 32), (12, 16)], 2, seed=0)
    sbb = statistics_backbone(bb, ["last", "mid"], classes=None, chunk_size=3)
    assert list(sbb.layers) == ["mid", "last", "mid_var", "last_var"]
    assert sbb.weights_id == statistics_id(bb, None, 3) != statistics_id(bb, 5, 3)
    store = extract_activations(ds.subset(["im0", "im1"]), sbb, None, tmp_path / "g.zarr",
                                batch_size=2, dtype="float32", progress=False)
    for i in ("im0", "im1"):
        x = bb.preprocess(ds.load_image(i)).double()
        for layer, module in (("mid", net[3]), ("last", net[6])):
            r = loop_r(net, module, x, range(7))
            np.testing.assert_allclose(open_activations(store, layer).sel(image=i).values,
                                       r.mean(0), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(
                open_activations(store, layer + "_var").sel(image=i).values, r.var(0),
                rtol=1e-5, atol=1e-9)
    cached = implicit_saliency_model(bb, "mid", store=store, images=ds, chunk_size=3)
    live = implicit_saliency_model(bb, "mid", chunk_size=3)
    calls = []
    handle = net[0].register_forward_hook(lambda *_: calls.append(1))
    stim = StimulusImage("im0", ds.load_image("im0"))
    a = cached.saliency_map(stim)
    assert not calls  # read from the store: no forward pass
    handle.remove()
    assert rel_err(a, live.saliency_map(stim)) <= 1e-5
    other = StimulusImage("im2", ds.load_image("im2"))  # not stored: computed
    np.testing.assert_allclose(cached.saliency_map(other), live.saliency_map(other), rtol=1e-12)
    # altered pixels under a stored id (a blurred copy): computed, not read
    altered = StimulusImage("im1", 255 - ds.load_image("im1"))
    np.testing.assert_allclose(cached.saliency_map(altered), live.saliency_map(altered),
                               rtol=1e-12)
    # the image file changed since the store was filled: refused
    from PIL import Image

    f = ds["im1"].file
    Image.fromarray(255 - np.asarray(Image.open(f))).save(f)
    new = StimulusImage("im1", ds.load_image("im1"))
    with pytest.raises(DataError, match="another image content"):
        cached.saliency_map(new)
    with pytest.raises(DataError, match="other weights, classes or code"):
        implicit_saliency_model(bb, "mid", store=store, images=ds, chunk_size=4)
    with pytest.raises(DataError, match="dataset of its images"):
        implicit_saliency_model(bb, "mid", store=store, chunk_size=3)


def test_the_registry_builds_the_four_models(lite0):
    from dissect.models.base import load_model

    kinds = {"implicit_saliency": ImplicitSaliencyModel, "feedforward_saliency":
             FeedForwardSaliencyModel, "gradcam": GradCamModel,
             "guided_backprop": GuidedBackpropModel}
    for name, cls in kinds.items():
        m = load_model(name, backbone=lite0)
        assert isinstance(m, cls) and isinstance(m, SaliencyModel)
    assert load_model("implicit_saliency", backbone=lite0).layer == "block10"


class Branches(nn.Module):
    """stem → two parallel conv+ReLU branches ``a`` and ``b`` → concatenation → conv → GAP →
    linear (float64): layers on sibling branches, neither downstream of the other."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.a = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
        self.double().eval()

    def forward(self, x):
        s = self.stem(x)
        return self.head(torch.cat([self.a(s), self.b(s)], dim=1))


def test_layers_on_sibling_branches():
    from dissect.models.implicit import gradient_statistics_layers

    net = Branches()
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    modules = [net.a, net.b, net.head[1]]
    stats, _, idx = gradient_statistics_layers(net, modules, x, None, chunk_size=2)
    for module, (mean, var, _) in zip(modules, stats, strict=True):
        r = loop_r(net, module, x, idx)
        assert rel_err(mean, r.mean(0)) <= 1e-12 and rel_err(var, r.var(0)) <= 1e-12


def test_models_sharing_a_backbone_on_threads_equal_the_sequential_maps(image):
    """Two models on one backbone, each called from two threads at once: the maps equal the
    sequential ones (the network's lock serialises the hooked passes)."""
    from concurrent.futures import ThreadPoolExecutor

    bb = tiny_backbone(tiny_net(), size=(24, 32))
    implicit = implicit_saliency_model(bb, "mid", chunk_size=3)
    cam = gradcam_model(bb, "last")
    stims = [StimulusImage(f"i{k}", np.roll(image, 5 * k, axis=1)) for k in range(4)]
    want = [(implicit.saliency_map(s), cam.saliency_map(s)) for s in stims]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: (implicit.saliency_map(s), cam.saliency_map(s)),
                            stims * 2))
    for (a, b), (c, d) in zip(want * 2, got, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert implicit.lock is cam.lock  # one lock per network
