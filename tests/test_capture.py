"""Preprocessing and layer capture (activations via captum, gradients vs plain autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers_cache import TinyImages, tiny_backbone
from _reference import antialias_matrix, bilinear_matrix, resize

import dissect.capture
from dissect.capture import LayerCapture, class_logit, top1_logit
from dissect.errors import DataError
from dissect.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess


def _all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_preprocess_normalises_exactly():
    img = np.full((10, 12, 3), (0, 128, 255), dtype=np.uint8)
    x = Preprocess(size=None)(img)
    assert x.shape == (1, 3, 10, 12) and x.dtype == torch.float32
    for c, v in enumerate((0, 128, 255)):
        want = (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[0, c], torch.tensor(want, dtype=torch.float32), atol=1e-6)


def test_capture_re_exports_the_one_preprocess():
    """``Preprocess`` lives in dissect.preprocess; dissect.capture re-exports the same objects
    (older callers), and a Backbone's default preprocessing is that class."""
    from dissect.backbones import Backbone

    assert dissect.capture.Preprocess is Preprocess
    assert dissect.capture.IMAGENET_MEAN is IMAGENET_MEAN
    assert Backbone.__dataclass_fields__["preprocess"].default_factory is Preprocess


def test_antialias_reference_by_hand():
    """The reference filter on a case worked by hand: a row 0, 1, 2, 3 halved to two samples.

    Scale s = 2, so the triangle is 2 input pixels wide on each side. Output 0 is centred at 1.0
    (pixel-edge coordinates); input centres 0.5, 1.5, 2.5 are 0.5, 0.5, 1.5 away: weights 0.75,
    0.75, 0.25 (sum 1.75) → (0·0.75 + 1·0.75 + 2·0.25) / 1.75 = 5/7; by symmetry output 1 is
    3 − 5/7 = 16/7. Upsampling 2 → 4 is plain bilinear with half-pixel centres."""
    np.testing.assert_allclose(antialias_matrix(2, 4) @ [0.0, 1.0, 2.0, 3.0], [5 / 7, 16 / 7])
    np.testing.assert_allclose(antialias_matrix(4, 2), [[1, 0], [0.75, 0.25], [0.25, 0.75],
                                                        [0, 1]])
    np.testing.assert_array_equal(bilinear_matrix(4, 2), antialias_matrix(4, 2))


def test_preprocess_resize_is_bilinear_antialias():
    """Preprocess's resize = the triangle-filter reference of tests/_reference.py (PIL's
    BILINEAR resize), per channel, on images of three sizes; and a hand-computed tiny case."""
    ds = TinyImages(3)
    imgs = [ds.load_image(i) for i in ds.ids]  # three different sizes, all larger than 8×9
    x = Preprocess((8, 9), mean=(0, 0, 0), std=(1, 1, 1))(imgs)
    assert x.shape == (3, 3, 8, 9)
    for k, img in enumerate(imgs):
        want = resize(img.transpose(2, 0, 1) / 255.0, (8, 9), antialias=True)
        np.testing.assert_allclose(x[k].numpy(), want, rtol=0, atol=1e-6)
        # without antialiasing the result would differ: the filter matters here
        assert np.abs(resize(img.transpose(2, 0, 1) / 255.0, (8, 9)) - want).max() > 0.05
    # upsampling a 2×4 image to 4×8 (no aliasing to fight): plain bilinear, half-pixel centres
    small = np.arange(8, dtype=np.uint8).reshape(2, 4)[..., None].repeat(3, axis=2) * 30
    up = Preprocess((4, 8), mean=(0, 0, 0), std=(1, 1, 1))(small)[0, 0].numpy()
    row0 = np.array([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]) * 30 / 255
    np.testing.assert_allclose(up[0], row0, atol=1e-6)  # first row = top image row
    np.testing.assert_allclose(up[1], row0 + 0.25 * 120 / 255, atol=1e-6)  # 3/4 top, 1/4 bottom
    # a 1×4 row 0, 1, 2, 3 (×60) halved: 5/7 and 16/7 (test_antialias_reference_by_hand)
    row = (np.arange(4, dtype=np.uint8) * 60)[None, :, None].repeat(3, axis=2)
    half = Preprocess((1, 2), mean=(0, 0, 0), std=(1, 1, 1))(row)[0, 0, 0].numpy()
    np.testing.assert_allclose(half, np.array([5 / 7, 16 / 7]) * 60 / 255, atol=1e-6)
    # deterministic
    torch.testing.assert_close(x, Preprocess((8, 9), mean=(0, 0, 0), std=(1, 1, 1))(imgs),
                               rtol=0, atol=0)


def test_preprocess_bad_input():
    with pytest.raises(DataError, match="uint8"):
        Preprocess()(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match="RGB"):
        Preprocess()(np.zeros((4, 4), dtype=np.uint8)[..., None])
    with pytest.raises(DataError, match="native"):
        Preprocess(size=None)([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(ValueError):
        Preprocess(std=(1, 0, 1))
    ro = np.zeros((4, 4, 3), np.uint8)
    ro.flags.writeable = False
    assert Preprocess((2, 2))(ro).shape == (1, 3, 2, 2)


def test_attribute_matches_plain_forward_and_runs_only_needed_stages():
    bb = tiny_backbone()
    x = torch.randn(2, 3, 16, 16)
    f = bb.model.features
    c1 = f[1](f[0](x))
    c2 = f[4](f[3](f[2](c1)))
    fired = []
    h = bb.model.fc.register_forward_hook(lambda *a: fired.append("fc"))
    h2 = f[3].register_forward_hook(lambda *a: fired.append("conv2"))
    with LayerCapture(bb, ["c1"]) as cap:
        acts = cap.attribute(x)
    assert fired == []  # trunk stops after the deepest requested layer
    torch.testing.assert_close(acts["c1"], c1, rtol=0, atol=0)
    acts = LayerCapture(bb, ["c2", "c1"]).attribute(x)
    assert list(acts) == ["c1", "c2"] and fired == ["conv2"]
    torch.testing.assert_close(acts["c2"], c2, rtol=0, atol=0)
    h.remove()
    h2.remove()
    assert _all_hooks(bb.model) == 0  # captum removed its hooks
    assert not acts["c2"].requires_grad


def test_gradients_match_autograd():
    bb = tiny_backbone()
    x = torch.randn(3, 3, 16, 16)
    f = bb.model.features
    c1 = f[1](f[0](x))
    c1.retain_grad()
    c2 = f[4](f[3](f[2](c1)))
    c2.retain_grad()
    out = bb.model.fc(torch.flatten(bb.model.pool(c2), 1))
    out.max(dim=1).values.sum().backward()
    acts, grads = LayerCapture(bb).gradients(x, top1_logit)
    torch.testing.assert_close(acts["c1"], c1.detach())
    torch.testing.assert_close(acts["c2"], c2.detach())
    torch.testing.assert_close(grads["c1"], c1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads["c2"], c2.grad, rtol=1e-5, atol=1e-7)
    assert grads["c1"].abs().sum() > 0
    # class index target == class_logit(k) == the callable
    _, g_int = LayerCapture(bb, "c2").gradients(x, 2)
    _, g_fn = LayerCapture(bb, "c2").gradients(x, class_logit(2))
    torch.testing.assert_close(g_int["c2"], g_fn["c2"], rtol=0, atol=0)
    assert _all_hooks(bb.model) == 0


def test_gradients_per_image_independent():
    bb = tiny_backbone()
    x = torch.randn(2, 3, 16, 16)
    _, g_batch = LayerCapture(bb, "c1").gradients(x)
    _, g_one = LayerCapture(bb, "c1").gradients(x[1:])
    torch.testing.assert_close(g_batch["c1"][1:], g_one["c1"], rtol=1e-5, atol=1e-7)


def test_bad_target_and_layers_and_hooks_removed_on_error():
    bb = tiny_backbone()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="one scalar per image"):
        LayerCapture(bb).gradients(x, lambda out: out)
    assert _all_hooks(bb.model) == 0
    with pytest.raises(KeyError, match="nope"):
        LayerCapture(bb, ["nope"])
    with pytest.raises(RuntimeError):
        LayerCapture(bb, "c1").attribute(torch.randn(2, 5, 16, 16))  # wrong channels
    assert _all_hooks(bb.model) == 0
