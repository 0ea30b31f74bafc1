"""ML-Net (Cornia et al., ICPR 2016): the stride-1 'same' pool, the learned prior, the loss, the
VGG-16 and EfficientNet-Lite0 layouts, a training step, bad input, letterboxing, the adapter and
its checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect.backbones import load_backbone
from dissect.errors import DataError
from dissect.models.base import SaliencyModel, load_model
from dissect.models.builtin import MLNetModel, mlnet_model
from dissect.models.mlnet import (
    LearnedPrior,
    MLNet,
    SamePool2x2,
    density_target,
    letterbox,
    load_mlnet,
    mlnet_loss,
    mlnet_optimizer,
    save_mlnet,
    train_mlnet,
    train_step,
    unletterbox,
)
from dissect.preprocess import Preprocess

# ---------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hooked(net: nn.Module, paths: dict[str, str]):
    """Forward hooks recording every output of the modules at ``paths`` (name → list)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in paths}
    handles = []
    for name, path in paths.items():
        def hook(_m, _i, out, name=name):
            seen[name].append(out.detach().clone())
        handles.append(net.get_submodule(path).register_forward_hook(hook))
    return seen, handles


def _synthetic_set(net: MLNet, n: int, seed: int):
    """Dark noisy uint8 images with one bright 24×24 square, and their ground truth: a Gaussian
    blob (σ = 1.5 cells) centred on the square, at the output resolution (float64)."""
    rng = np.random.default_rng(seed)
    H, W = net.input_size
    h, w = net.output_size
    yy, xx = np.mgrid[0:h, 0:w]
    imgs, gts = [], []
    for _ in range(n):
        im = rng.integers(20, 60, size=(H, W, 3)).astype(np.uint8)
        r, c = int(rng.integers(8, H - 32)), int(rng.integers(8, W - 32))
        im[r:r + 24, c:c + 24] = 235
        cy, cx = (r + 12) / 8 - 0.5, (c + 12) / 8 - 0.5
        gts.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2)))
        imgs.append(im)
    return imgs, gts


def _synthetic(net: MLNet, n: int = 4, seed: int = 0):
    """:func:`_synthetic_set` as a preprocessed batch and a float32 target tensor."""
    imgs, gts = _synthetic_set(net, n, seed)
    x = torch.cat([net.preprocess(im) for im in imgs])
    return x, torch.tensor(np.stack(gts), dtype=torch.float32)


# ---------------------------------------------------------------------- 1. the 'same' pool


def test_same_pool_hand_computed():
    x = torch.tensor([[1.0, 5.0, 2.0],
                      [7.0, 3.0, 4.0],
                      [0.0, 6.0, -8.0]])
    # out[i, j] = max of x[i:i+2, j:j+2], cells past the right / bottom edge ignored (-inf):
    expected = torch.tensor([[7.0, 5.0, 4.0],     # max(1,5,7,3) max(5,2,3,4) max(2,4)
                             [7.0, 6.0, 4.0],     # max(7,3,0,6) max(3,4,6,-8) max(4,-8)
                             [6.0, 6.0, -8.0]])   # max(0,6) max(6,-8) -8 (zero padding: 0)
    out = SamePool2x2()(torch.stack([x, -x])[None])
    assert out.shape == (1, 2, 3, 3)
    assert torch.equal(out[0, 0], expected)
    # second channel: -x; out = -min over the same windows
    assert torch.equal(out[0, 1], torch.tensor([[-1.0, -2.0, -2.0],   # -min(1,5,7,3) …
                                                [0.0, 8.0, 8.0],      # -min(7,3,0,6) = 0
                                                [0.0, 8.0, 8.0]]))


# ---------------------------------------------------------------------- 2. the prior


def test_prior_identity_at_initialisation(vgg):
    net = MLNet.from_backbone(vgg, input_size=(160, 240)).eval()
    assert net.output_size == (20, 30)
    assert net.prior.grid == (20 // 10, 30 // 10) == (2, 3)
    assert torch.equal(net.prior.weight, torch.zeros(2, 3))
    assert torch.equal(net.prior_map(), torch.ones(20, 30))
    x = torch.randn(2, 3, 160, 240, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(x)
        base = net.readout(net.encoding(x))[:, 0]  # ReLU(1×1 conv): the map without the prior
        assert out.shape == (2, 20, 30)
        assert torch.equal(out, base)
        assert (out >= 0).all() and (out > 0).any()
        # W = 0.5 everywhere: the prior multiplies by 1.5
        net.prior.weight.fill_(0.5)
        assert torch.allclose(net.prior_map((20, 30)), torch.full((20, 30), 1.5))
        assert torch.allclose(net(x), 1.5 * base)


def test_prior_bilinear_upsampling_hand_computed():
    prior = LearnedPrior((1, 2))
    with torch.no_grad():
        prior.weight.copy_(torch.tensor([[0.0, 1.0]]))
    # 1 + W = [1, 2] onto 4 columns, align_corners=False: source x = (j + 0.5) / 2 - 0.5
    # = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    assert torch.allclose(prior.upsampled((1, 4)), torch.tensor([[1.0, 1.25, 1.75, 2.0]]))
    m = torch.tensor([[[[2.0, 2.0, -1.0, 4.0]]]])
    assert torch.allclose(prior(m), torch.tensor([[[[2.0, 2.5, -1.75, 8.0]]]]))


# ---------------------------------------------------------------------- 3. the loss


def test_loss_hand_computed():
    pred = torch.tensor([[[0.0, 1.0, 2.0],
                          [2.0, 4.0, 0.0],
                          [1.0, 3.0, 4.0]]])
    target = torch.tensor([[[0.0, 0.0, 1.0],
                            [1.0, 2.0, 0.0],
                            [0.0, 1.0, 2.0]]])
    W = torch.tensor([[0.5, -1.0]])
    # ŷ / max ŷ = [0, .25, .5 / .5, 1, 0 / .25, .75, 1];  y / max y = [0, 0, .5 / .5, 1, 0 /
    # 0, .5, 1]. Non-zero terms (ŷ' − y)² / (1.1 − y): pixel (0,1): .0625 / 1.1, pixel (2,0):
    # .0625 / 1.1, pixel (2,1): (.75 − .5)² / .6 = .0625 / .6. Mean over 9 pixels:
    # (.11363636… + .10416666…) / 9 = .02420033670…; λ‖W‖² = (1/2)(.25 + 1) = .625.
    data = (0.0625 / 1.1 + 0.0625 / 1.1 + 0.0625 / 0.6) / 9
    assert data == pytest.approx(0.0242003367003, abs=1e-12)
    got = mlnet_loss(pred, target, W)
    assert float(got) == pytest.approx(0.6492003367003, abs=1e-6)
    assert float(mlnet_loss(pred, target, None)) == pytest.approx(0.0242003367003, abs=1e-7)
    # an explicit loop over the 9 pixels, with α = 1.5
    p, y = [v / 4 for v in pred.flatten().tolist()], [v / 2 for v in target.flatten().tolist()]
    loop = sum((pi - yi) ** 2 / (1.5 - yi) for pi, yi in zip(p, y, strict=True)) / 9
    assert float(mlnet_loss(pred, target, None, alpha=1.5)) == pytest.approx(loop, abs=1e-7)
    # per-image maxima: a second image, scaled copies of the first, has the same loss
    batch = mlnet_loss(torch.cat([pred, 10 * pred]), torch.cat([target, 3 * target]), None)
    assert float(batch) == pytest.approx(0.0242003367003, abs=1e-7)
    # an all-zero prediction (every ReLU off) stays finite: mean(y² / (α − y)), y holding
    # three 0.5 and two 1: (3 · .25 / .6 + 2 · 1 / .1) / 9 = 21.25 / 9
    zero = mlnet_loss(torch.zeros(1, 3, 3), target, None)
    hand = (0.25 / 0.6 + 0.25 / 0.6 + 0.25 / 0.6 + 1 / 0.1 + 1 / 0.1) / 9
    assert hand == pytest.approx(21.25 / 9)
    assert float(zero) == pytest.approx(hand, abs=1e-5)


# ---------------------------------------------------------------------- 4. VGG-16 at 480×640


def test_vgg16_480x640_shapes(vgg):
    net = MLNet.from_backbone(vgg).eval()
    assert net.input_size == (480, 640) and net.output_size == (60, 80)
    assert net.prior.grid == (6, 8)
    assert net.layers == {"conv3_pool": "trunk.16", "conv4_pool": "conv4_pool",
                          "conv5_3": "trunk.29", "encoding": "encode.1"}
    paths = {**{k: v for k, v in net.layers.items() if k != "encoding"},
             "torchvision_pool4": "trunk.23"}
    seen, handles = _hooked(net, paths)
    try:
        with torch.no_grad():
            feats = net.features(torch.randn(1, 3, 480, 640))
            out = net.head(feats)
    finally:
        for h in handles:
            h.remove()
    assert feats.shape == (1, 1280, 60, 80)
    assert out.shape == (1, 60, 80) and bool((out >= 0).all())
    assert [tuple(seen[k][0].shape) for k in ("conv3_pool", "conv4_pool", "conv5_3")] == [
        (1, 256, 60, 80), (1, 512, 60, 80), (1, 512, 60, 80)]  # conv5 at stride 8
    assert seen["torchvision_pool4"] == []  # the stride-2 pool4 is replaced, never run
    assert torch.equal(feats[:, :256], seen["conv3_pool"][0])
    assert torch.equal(feats[:, 768:], seen["conv5_3"][0])


def test_vgg16_dataflow_matches_reference_order(vgg):
    """conv5 runs on the stride-1-pooled conv4_3 of the original backbone's own modules."""
    net = MLNet.from_backbone(vgg).eval()
    f = vgg.model.features
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        p3 = f[:17](x)
        c43 = f[17:23](p3)
        p4 = F.max_pool2d(F.pad(c43, (0, 1, 0, 1), value=float("-inf")), 2, stride=1)
        c53 = f[24:30](p4)
        ref = torch.cat([p3, p4, c53], dim=1)
        assert torch.allclose(net.features(x), ref, atol=1e-6)
    assert net.trunk is not f  # a copy: training never touches the backbone


# ---------------------------------------------------------------------- 5. training


def test_training_steps_lower_the_loss(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128))
    before_trunk = {k: v.clone() for k, v in lite.model.state_dict().items()}
    x, y = _synthetic(net)

    def eval_loss() -> float:
        net.eval()
        with torch.no_grad():
            return float(mlnet_loss(net(x), y, net.prior.weight))

    opt, sched = mlnet_optimizer(net)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (1e-3, 0.9, True)
    start = eval_loss()
    losses = [train_step(net, x, y, opt, sched) for _ in range(8)]
    end = eval_loss()
    assert all(np.isfinite(losses))
    assert end < 0.8 * start, (start, end, losses)
    assert losses[-1] < losses[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 5e-4 * 8))
    assert not torch.equal(net.prior.weight, torch.zeros_like(net.prior.weight))
    # the trunk was fine-tuned, the caller's backbone is untouched
    after = lite.model.state_dict()
    assert all(torch.equal(before_trunk[k], after[k]) for k in before_trunk)


def test_freeze_trunk(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128)).freeze_trunk()
    frozen = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    head = net.encode[0].weight.detach().clone()
    x, y = _synthetic(net, n=2)
    opt, _ = mlnet_optimizer(net)
    train_step(net, x, y, opt)
    assert all(torch.equal(frozen[k], v) for k, v in net.trunk.state_dict().items())
    assert not torch.equal(head, net.encode[0].weight)
    assert not net.trunk.training  # BatchNorm statistics stay frozen in train mode


# ---------------------------------------------------------------------- 6. Lite0 layout


def test_lite0_layout(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128)).eval()
    assert net.layers == {"block4_out": "trunk._blocks.4", "block10_out": "trunk._blocks.10",
                          "block15_out": "trunk._blocks.15", "encoding": "encode.1"}
    assert net.source_layers == ["block4_out", "block10_out", "block15_out"]
    assert net.output_size == (12, 16) and net.prior.grid == (1, 1)
    seen, handles = _hooked(net, net.layers)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad():
            feats = net.features(x)
            enc = net.encoding(x)
            out = net(x)
    finally:
        for h in handles:
            h.remove()
    assert feats.shape == (1, 40 + 112 + 320, 12, 16)
    assert enc.shape == (1, 64, 12, 16) and out.shape == (1, 12, 16)
    assert bool((out >= 0).all())
    b4, b10, head = (seen[k][0] for k in ("block4_out", "block10_out", "block15_out"))
    assert tuple(b4.shape) == (1, 40, 12, 16)      # stride 8
    assert tuple(b10.shape) == (1, 112, 6, 8)      # stride 16
    assert tuple(head.shape) == (1, 320, 3, 4)     # stride 32
    assert torch.equal(seen["encoding"][-1], enc)
    assert len(seen["block15_out"]) == 3  # once per call (features, encoding, forward)
    # the deeper maps are bilinearly upsampled to the stride-8 grid
    assert torch.equal(feats[:, :40], b4)
    up10 = F.interpolate(b10, size=(12, 16), mode="bilinear", align_corners=False)
    up32 = F.interpolate(head, size=(12, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(feats[:, 40:152], up10) and torch.allclose(feats[:, 152:], up32)
    # the module paths are those of the backbone's own network (a copy)
    assert type(net.get_submodule("trunk._blocks.4")) is type(lite.model._blocks[4])
    assert net.map_size((100, 100)) == (13, 13)


def test_unknown_backbone_and_bad_input_size(vgg):
    with pytest.raises(DataError, match="layouts"):
        MLNet.from_backbone(load_backbone("resnet18", weights="random"))
    with pytest.raises(ValueError, match="multiples of 8"):
        MLNet.from_backbone(vgg, input_size=(100, 128))


# ---------------------------------------------------------------------- 7. bad input


def test_bad_ground_truth_and_images(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128))
    x, y = _synthetic(net, n=2)
    opt, _ = mlnet_optimizer(net)
    with pytest.raises(DataError, match=r"ground truth.*shape \(2, 24, 32\).*\(2, 12, 16\)"):
        train_step(net, x, torch.ones(2, 24, 32), opt)
    with pytest.raises(DataError, match=r"ground truth.*shape"):
        mlnet_loss(torch.ones(2, 12, 16), torch.ones(2, 12, 15), None)
    zero = y.clone()
    zero[1] = 0
    with pytest.raises(DataError, match=r"ground truth.*image\(s\) \[1\] are all zero"):
        train_step(net, x, zero, opt)
    nan = y.clone()
    nan[0, 3, 4] = float("nan")
    with pytest.raises(DataError, match=r"ground truth.*1 NaN"):
        train_step(net, x, nan, opt)
    with pytest.raises(DataError, match=r"ground truth.*negative"):
        mlnet_loss(torch.ones(1, 2, 2), -torch.ones(1, 2, 2), None)
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match=r"images.*NaN"):
        train_step(net, bad_x, y, opt)
    pred = torch.ones(2, 12, 16)
    pred[1, 0, 0] = float("nan")
    with pytest.raises(DataError, match=r"prediction.*1 NaN"):
        mlnet_loss(pred, y, None)
    with pytest.raises(ValueError, match="alpha"):
        mlnet_loss(torch.ones(1, 2, 2), torch.ones(1, 2, 2), None, alpha=1.0)


# ---------------------------------------------------------------------- 8. letterbox, adapter


def test_letterbox_geometry():
    wide = np.full((240, 640, 3), 200, dtype=np.uint8)
    canvas, box = letterbox(wide)
    assert canvas.shape == (480, 640, 3) and canvas.dtype == np.uint8
    assert (box.top, box.left, box.height, box.width) == (120, 0, 240, 640)
    assert (canvas[:120] == 0).all() and (canvas[360:] == 0).all()
    assert (canvas[120:360] == 200).all()
    tall = np.full((100, 50), 2.0)  # rows limit: 96 rows, (50 · 96) // 100 = 48 columns
    canvas, box = letterbox(tall, (96, 128))
    assert canvas.dtype == np.float64
    assert (box.top, box.left, box.height, box.width) == (0, 40, 96, 48)
    assert np.allclose(canvas[:, 40:88], 2.0) and (canvas[:, :40] == 0).all()
    assert (canvas[:, 88:] == 0).all()


def test_unletterbox_geometry():
    # an image that fills the canvas: the plain bilinear upsampling of the package
    m = torch.rand(12, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, box = letterbox(np.zeros((192, 256, 3), np.uint8), (96, 128))
    ref = F.interpolate(m[None, None], size=(192, 256), mode="bilinear", align_corners=False)
    assert np.allclose(unletterbox(m, box), ref[0, 0].numpy(), atol=1e-12)
    # a letterboxed image: a map linear in the row index is sampled at the pixel's canvas row.
    # Image 48×128 on 96×128: content rows 24…72, so image row i sits at canvas row
    # 24 + i + 0.5, i.e. map row (24 + i + 0.5) / 8 - 0.5 (8 canvas rows per map row).
    _, box = letterbox(np.zeros((48, 128, 3), np.uint8), (96, 128))
    assert (box.top, box.height) == (24, 48)
    ramp = torch.arange(12, dtype=torch.float64)[:, None].expand(12, 16)
    got = unletterbox(ramp, box)
    assert got.shape == (48, 128)
    rows = (24 + np.arange(48) + 0.5) / 8 - 0.5
    assert np.allclose(got, rows[:, None], atol=1e-12)
    assert got[0, 0] == pytest.approx(2.5625) and got[-1, 0] == pytest.approx(8.4375)


def test_adapter_saliency_map_and_checkpoint_round_trip(lite, tmp_path):
    net = MLNet.from_backbone(lite, input_size=(96, 128))
    with torch.no_grad():
        net.prior.weight.fill_(0.25)
        net.readout[0].bias.fill_(0.1)  # a live map
    model = MLNetModel(net, "mlnet_test")
    assert isinstance(model, SaliencyModel)
    image = np.random.default_rng(5).integers(0, 256, size=(50, 90, 3)).astype(np.uint8)
    sal = model.saliency_map(image)
    assert sal.shape == (50, 90) and sal.dtype == np.float64
    assert np.isfinite(sal).all() and (sal >= 0).all() and sal.max() > 0
    assert model.layer_module("encoding") is net.encode[1]
    assert model.layer_module("block15_out") is net.trunk._blocks[15]
    assert model.module is net

    path = save_mlnet(tmp_path / "mlnet" / "model.pt", net, {"seed": 0, "epochs": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp file left
    loaded, meta = load_mlnet(path, lite)
    assert meta == {"seed": 0, "epochs": 2}
    a, b = net.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (loaded.input_size, loaded.layout, loaded.weights_id) == (
        (96, 128), "efficientnet_lite0", lite.weights_id)
    assert np.array_equal(MLNetModel(loaded).saliency_map(image), sal)

    # the registry factory
    by_name = load_model("mlnet", checkpoint=path, backbone="efficientnet_lite0", name="m")
    assert isinstance(by_name, MLNetModel) and by_name.name == "m"
    assert np.array_equal(by_name.saliency_map(image), sal)
    assert mlnet_model(path, backbone=lite).layers == net.layers


def test_checkpoint_errors(lite, vgg, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mlnet(tmp_path / "absent.pt", lite)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_mlnet(junk, lite)
    other = tmp_path / "other.pt"
    torch.save({"format": "something/1"}, other)
    with pytest.raises(DataError, match="not a dissect.mlnet/1 checkpoint"):
        load_mlnet(other, lite)
    good = save_mlnet(tmp_path / "lite.pt", MLNet.from_backbone(lite, input_size=(96, 128)))
    with pytest.raises(DataError, match="efficientnet_lite0, given backbone 'vgg16'"):
        load_mlnet(good, vgg)


# ---------------------------------------------------------------------- 8. targets, inputs, units


def test_density_target_hand_computed(vgg):
    net = MLNet.from_backbone(vgg, input_size=(80, 80))
    d = np.zeros((80, 80))
    d[0, 0] = 64.0           # cell (0, 0): mean 64 / 64 = 1
    d[8:16, 16:24] = 0.5     # cell (1, 2): 0.5
    d[79, 79] = 6.4          # cell (9, 9): 0.1
    t = density_target(d, net)
    expected = np.zeros((10, 10))
    expected[0, 0], expected[1, 2], expected[9, 9] = 1.0, 0.5, 0.1
    np.testing.assert_allclose(t, expected, atol=1e-12)
    # a half-height map is letterboxed: rows 20..59 of the canvas, zeros above and below
    half = np.ones((40, 80))
    t = density_target(half, net)
    loop = np.array([[np.mean([1.0 if 20 <= r < 60 else 0.0 for r in range(8 * i, 8 * i + 8)])
                      for _ in range(10)] for i in range(10)])
    np.testing.assert_allclose(t, loop, atol=1e-12)
    for bad, words in ((np.zeros((80, 80)), "all zero"), (np.ones((2, 80, 80)), "shape"),
                       (np.full((80, 80), np.nan), "NaN"), (-np.ones((80, 80)), "negative")):
        with pytest.raises(DataError, match=words):
            density_target(bad, net)


def test_prepare_letterboxes_with_normalised_black(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128))
    rng = np.random.default_rng(1)
    same = rng.integers(0, 256, size=(150, 200, 3)).astype(np.uint8)  # the canvas's aspect
    x, box = net.prepare(same)
    assert (box.top, box.left, box.height, box.width) == (0, 0, 96, 128)
    assert torch.equal(x, Preprocess((96, 128), net.mean, net.std)(same))
    wide = rng.integers(0, 256, size=(40, 160, 3)).astype(np.uint8)  # 1:4 → content 32 × 128
    x, box = net.prepare(wide)
    assert (box.top, box.height, box.left, box.width) == (32, 32, 0, 128)
    black = torch.tensor([(0 - m) / s for m, s in zip(net.mean, net.std, strict=True)])
    assert torch.allclose(x[0, :, :32], black.view(3, 1, 1).expand(3, 32, 128))
    assert torch.allclose(x[0, :, 64:], black.view(3, 1, 1).expand(3, 32, 128))
    assert torch.equal(x[:, :, 32:64], Preprocess((32, 128), net.mean, net.std)(wide))
    with pytest.raises(DataError, match="uint8"):
        net.prepare(same.astype(np.float32))


def test_as_backbone_captures_the_encoding_units(lite):
    from dissect.capture import LayerCapture

    net = MLNet.from_backbone(lite, input_size=(96, 128)).eval()
    bb = net.as_backbone()
    assert list(bb.layers) == ["encoding"] and bb.preprocess.size == (96, 128)
    image = np.random.default_rng(2).integers(0, 256, size=(96, 128, 3)).astype(np.uint8)
    x = bb.preprocess(image)
    with LayerCapture(bb, ["encoding"]) as cap, torch.no_grad():
        got = cap.attribute(x)["encoding"]
    with torch.no_grad():
        assert torch.equal(got, net.encoding(x))
    first = bb.weights_id
    assert net.as_backbone().weights_id == first  # the same state, the same id
    with torch.no_grad():
        net.readout[0].bias.add_(1.0)
    assert net.as_backbone().weights_id != first  # any trained weight changes it
    with pytest.raises(DataError, match="no layer"):
        net.as_backbone(["conv9"])


# ---------------------------------------------------------------------- 9. the training loop


def test_train_mlnet_learns_and_keeps_the_best_epoch(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128), seed=0)
    images, targets = _synthetic_set(net, 6, seed=0)
    val_images, val_targets = _synthetic_set(net, 2, seed=1)
    x_val = torch.cat([net.prepare(im)[0] for im in val_images])
    y_val = torch.tensor(np.stack(val_targets), dtype=torch.float32)

    def val_loss() -> float:
        net.eval()
        with torch.no_grad():
            return float(mlnet_loss(net(x_val), y_val, net.prior.weight))

    start = val_loss()
    net, history = train_mlnet(net, images, targets, val_images, val_targets, epochs=4,
                               batch_size=3, patience=4, optimizer="adam", lr=1e-3, seed=0)
    losses = [h["val_loss"] for h in history]
    assert len(history) == 4 and min(losses) < start
    assert history[0]["train_loss"] > history[-1]["train_loss"]
    best = int(np.argmin(losses))
    assert [h["best"] for h in history][best] is True
    # the returned network is the best epoch's (recomputed from scratch on the live trunk)
    assert val_loss() == pytest.approx(losses[best], rel=1e-5)
    assert not net.training


def test_train_mlnet_cached_sources_equal_the_live_trunk(lite):
    """Frozen training computes the trunk once per image; with the trunk frozen, training the
    whole network (the trunk run every step, its weights unchanged) gives the same weights."""
    kw = dict(epochs=2, batch_size=2, patience=2, optimizer="sgd", lr=1e-2, seed=3)
    a = MLNet.from_backbone(lite, input_size=(96, 128), seed=1)
    b = MLNet.from_backbone(lite, input_size=(96, 128), seed=1)
    images, targets = _synthetic_set(a, 4, seed=2)
    a, ha = train_mlnet(a, images, targets, images[:1], targets[:1], frozen=True, **kw)
    b.freeze_trunk()
    # the live path: frozen=False trains every parameter that requires a gradient; freezing
    # the trunk by hand first leaves only the head trainable, as in the cached path
    b.freeze_trunk = lambda frozen=True: b  # keep the hand freezing
    b, hb = train_mlnet(b, images, targets, images[:1], targets[:1], frozen=False, **kw)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6), k
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb],
                                                           rel=1e-5)


def test_train_mlnet_early_stopping_and_bad_targets(lite):
    net = MLNet.from_backbone(lite, input_size=(96, 128))
    images, targets = _synthetic_set(net, 2, seed=4)
    # an absurd learning rate: the validation loss stops improving, patience 1 stops it, and
    # the returned network is the best epoch's, not the last one's
    net, history = train_mlnet(net, images, targets, images, targets, epochs=10, batch_size=2,
                               patience=1, optimizer="sgd", lr=50.0, seed=0)
    assert len(history) < 10 and history[-1]["best"] is False
    x = torch.cat([net.prepare(im)[0] for im in images])
    with torch.no_grad():
        again = float(mlnet_loss(net(x), np.stack(targets), net.prior.weight))
    losses = [h["val_loss"] for h in history]
    assert again == pytest.approx(min(losses), rel=1e-5) and again < losses[-1]
    bad = [targets[0], np.zeros((5, 5))]
    with pytest.raises(DataError, match="training target 1"):
        train_mlnet(net, images, bad, images, targets)
    with pytest.raises(DataError, match="validation target 0.*all zero"):
        train_mlnet(net, images, targets, images[:1], [np.zeros_like(targets[0])])
    with pytest.raises(DataError, match="2 images with 1 targets"):
        train_mlnet(net, images, targets[:1], images, targets)
