"""Classical (non-deep) saliency models, as baselines for the pop-out arrays (He et al. 2019, §7).

Every model is a dataclass whose fields are its parameters (defaults from the original papers;
``dataclasses.asdict(model)`` is its provenance) with one call, in captum's style::

    IttiKoch().saliency(image_uint8_rgb) -> float64 (H, W) map, same size as the input

Maps are finite, non-negative and scaled to a maximum of 1 (a constant map stays constant, e.g.
all zeros on a blank image). Bad input (not an ``(H, W, 3)`` uint8 array, NaN, too small) raises
``DataError`` naming the item (``source=``) and the problem.

Models (``CLASSICAL_MODELS``): ``itti`` (Itti, Koch & Niebur 1998), ``gbvs`` (Harel, Koch & Perona
2006), ``bms`` (Zhang & Sclaroff 2013), ``spectral_residual`` (Hou & Zhang 2007) and
``fine_grained`` (Montabone & Soto 2010), the last two from OpenCV contrib ``cv2.saliency``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import cv2
import numpy as np
from scipy import ndimage

from dissect.errors import DataError

__all__ = [
    "BMS",
    "CLASSICAL_MODELS",
    "GBVS",
    "ClassicalSaliency",
    "FineGrained",
    "IttiKoch",
    "SpectralResidual",
    "load_classical",
    "stationary_distribution",
]

MIN_SIDE = 16
# feature maps live in [0, 1] units; a map whose maximum is below this is rounding noise and is
# treated as empty (N(·) and GBVS rescale maps by their maximum and would amplify the noise)
NOISE_FLOOR = 1e-6


def _check_image(image: Any, source: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise DataError(source, f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(source, f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise DataError(source, f"image contains NaN/inf (dtype {image.dtype}); "
                                    "expected uint8 RGB")
        raise DataError(source, f"image must be uint8 RGB, got dtype {image.dtype}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise DataError(source, f"image {image.shape[1]}x{image.shape[0]} is smaller than "
                                f"{MIN_SIDE} px on a side")
    return np.ascontiguousarray(image)


def _unit_max(m: np.ndarray) -> np.ndarray:
    m = np.maximum(np.asarray(m, dtype=np.float64), 0.0)
    top = m.max()
    return m / top if top > 0 else m


def _resize(m: np.ndarray, hw: tuple[int, int], interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize a 2-D float map to (h, w)."""
    h, w = hw
    if m.shape == (h, w):
        return m
    return cv2.resize(m, (w, h), interpolation=interp)


class ClassicalSaliency:
    """Base class: validates the input, calls ``_compute`` and checks the output."""

    name: ClassVar[str] = ""

    def saliency(self, image: np.ndarray, *, source: str | None = None) -> np.ndarray:
        """Saliency map of an RGB uint8 ``(H, W, 3)`` image: float64 ``(H, W)``, finite, ≥ 0,
        max 1 unless constant. ``source`` names the item in error messages."""
        src = source or f"{type(self).__name__} input"
        img = _check_image(image, src)
        out = np.asarray(self._compute(img), dtype=np.float64)
        if out.shape != img.shape[:2]:
            out = _resize(out, img.shape[:2])
        if not np.isfinite(out).all():
            raise DataError(src, f"{type(self).__name__} produced a non-finite map")
        return _unit_max(out)

    __call__ = saliency

    def _compute(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# shared feature extraction (Itti et al. 1998, §II)


def _rgb_channels(image: np.ndarray) -> tuple[np.ndarray, ...]:
    """Intensity I = (r+g+b)/3 and the broadly tuned colour channels of Itti et al. (1998):
    r, g, b normalised by I where I > max(I)/10 (0 elsewhere), R = r−(g+b)/2, G = g−(r+b)/2,
    B = b−(r+g)/2, Y = (r+g)/2 − |r−g|/2 − b, negative values set to zero. Values in [0, 1]."""
    rgb = image.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    intensity = (r + g + b) / 3.0
    keep = intensity > intensity.max() / 10.0
    denom = np.where(keep, intensity, 1.0)
    # the normalisation by I decouples hue from intensity; /3 keeps the channels in [0, 1]
    rn, gn, bn = (np.where(keep, c / denom, 0.0) / 3.0 for c in (r, g, b))
    red = np.maximum(rn - (gn + bn) / 2, 0)
    green = np.maximum(gn - (rn + bn) / 2, 0)
    blue = np.maximum(bn - (rn + gn) / 2, 0)
    # (r+g)/2 − |r−g|/2 = min(r, g), written so that it is exactly 0 for pure reds and greens
    yellow = np.maximum(np.minimum(rn, gn) - bn, 0)
    return intensity, red, green, blue, yellow


def _pyramid(m: np.ndarray, levels: int) -> list[np.ndarray]:
    """Dyadic Gaussian pyramid, level 0 = the input (cv2.pyrDown: 5-tap Burt–Adelson filter)."""
    out = [np.ascontiguousarray(m, dtype=np.float32)]
    for _ in range(levels - 1):
        prev = out[-1]
        if min(prev.shape) < 2:
            out.append(prev.copy())
        else:
            out.append(cv2.pyrDown(prev))
    return out


@lru_cache(maxsize=32)
def _gabor_kernels(angles: tuple[float, ...], sigma: float, wavelength: float,
                   aspect: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Quadrature (even, odd) Gabor pairs whose preferred bars lie along each angle (degrees)."""
    half = int(np.ceil(3 * sigma / aspect))
    ks = (2 * half + 1, 2 * half + 1)
    out = []
    for a in angles:
        # cv2's theta is the direction of modulation, measured clockwise on screen (y down); a
        # bar along the counter-clockwise angle `a` is modulated along (sin a, cos a): 90° − a
        theta = np.deg2rad(90.0 - a)
        even = cv2.getGaborKernel(ks, sigma, theta, wavelength, aspect, 0.0, ktype=cv2.CV_32F)
        odd = cv2.getGaborKernel(ks, sigma, theta, wavelength, aspect, np.pi / 2,
                                 ktype=cv2.CV_32F)
        even -= even.mean()  # zero DC: no response to uniform regions
        out.append((even, odd))
    return tuple(out)


def _gabor_energy(m: np.ndarray, kernels: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    even = cv2.filter2D(m, cv2.CV_32F, kernels[0], borderType=cv2.BORDER_REFLECT)
    odd = cv2.filter2D(m, cv2.CV_32F, kernels[1], borderType=cv2.BORDER_REFLECT)
    return np.sqrt(even * even + odd * odd)


# ------------------------------------------------------------------------------------------------
# Itti, Koch & Niebur 1998


@dataclass
class IttiKoch(ClassicalSaliency):
    """Itti, Koch & Niebur (1998), "A model of saliency-based visual attention for rapid scene
    analysis", IEEE TPAMI 20(11).

    Nine-level Gaussian pyramids of intensity I, colour channels R, G, B, Y and Gabor orientation
    energy at 0/45/90/135° (computed on each level of the intensity pyramid). Centre-surround
    feature maps (Eqs. 1–4) at centre levels c ∈ {2, 3, 4} and surrounds s = c + δ, δ ∈ {3, 4}:
    I(c,s) = |I(c) ⊖ I(s)|, RG(c,s) = |(R−G)(c) ⊖ (R−G)(s)|, BY(c,s) = |(B−Y)(c) ⊖ (B−Y)(s)|,
    O(c,s,θ) = |O(c,θ) ⊖ O(s,θ)| (42 maps). Eq. 2 is printed as |(R(c)−G(c)) ⊖ (G(s)−R(s))|;
    read literally (⊖ = difference) that adds centre and surround, so, like the authors'
    SaliencyToolbox, we take the centre-surround difference of the opponent map. Each map goes
    through the normalisation operator N(·): scale to [0, M], find the global maximum M and the
    mean m̄ of the other local maxima, multiply by (M − m̄)². Conspicuity maps at level 4
    (Eqs. 5–7) by across-scale addition, then S = (N(Ī) + N(C̄) + N(Ō)) / 3 (Eq. 8), upsampled
    bilinearly to the input size.

    Implementation choices the paper leaves open: maps with a maximum below ``NOISE_FLOOR`` are
    empty (N would blow rounding noise up to full range); local maxima are 3×3 maxima above M/10
    (as in the authors' SaliencyToolbox); across-scale addition resamples with area averaging;
    the Gabor filters are quadrature pairs (energy) with σ = ``gabor_sigma`` px, wavelength
    ``gabor_wavelength`` px, aspect ratio ``gabor_aspect``, applied to levels ≥ 2 of the
    intensity pyramid.
    """

    name: ClassVar[str] = "itti"
    centre_levels: tuple[int, ...] = (2, 3, 4)
    deltas: tuple[int, ...] = (3, 4)
    map_level: int = 4
    angles: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0)
    gabor_sigma: float = 2.0
    gabor_wavelength: float = 6.0
    gabor_aspect: float = 0.5
    local_max_threshold: float = 0.1

    def normalise(self, m: np.ndarray) -> np.ndarray:
        """The operator N(·) of Itti et al. (1998), §II.A, with M = 1."""
        m = np.maximum(m.astype(np.float64), 0.0)
        top = m.max()
        if top <= NOISE_FLOOR:
            return np.zeros(m.shape)
        m = m / top
        peaks = (m == ndimage.maximum_filter(m, size=3, mode="constant", cval=0.0))
        peaks &= m >= self.local_max_threshold
        vals = np.sort(m[peaks])
        others = vals[:-1]  # all local maxima but the global one (the largest)
        mbar = float(others.mean()) if others.size else 0.0
        return m * (1.0 - mbar) ** 2

    def _compute(self, image: np.ndarray) -> np.ndarray:
        levels = max(self.centre_levels) + max(self.deltas) + 1
        intensity, red, green, blue, yellow = _rgb_channels(image)
        pi = _pyramid(intensity, levels)
        pr, pg, pb, py = (_pyramid(c, levels) for c in (red, green, blue, yellow))
        kernels = _gabor_kernels(tuple(self.angles), self.gabor_sigma, self.gabor_wavelength,
                                 self.gabor_aspect)
        first = min(self.centre_levels)  # finer levels are never used
        po = [[_gabor_energy(lv, k) if i >= first else lv for i, lv in enumerate(pi)]
              for k in kernels]
        out_hw = pi[self.map_level].shape

        def cs(centre: np.ndarray, surround: np.ndarray) -> np.ndarray:
            return np.abs(centre - _resize(surround, centre.shape))

        def to_map(m: np.ndarray) -> np.ndarray:
            return _resize(m.astype(np.float32), out_hw, cv2.INTER_AREA).astype(np.float64)

        i_bar = np.zeros(out_hw)
        c_bar = np.zeros(out_hw)
        o_bars = [np.zeros(out_hw) for _ in self.angles]
        for c in self.centre_levels:
            for d in self.deltas:
                s = c + d
                i_bar += to_map(self.normalise(cs(pi[c], pi[s])))
                rg = cs(pr[c] - pg[c], pr[s] - pg[s])
                by = cs(pb[c] - py[c], pb[s] - py[s])
                c_bar += to_map(self.normalise(rg)) + to_map(self.normalise(by))
                for k in range(len(self.angles)):
                    o_bars[k] += to_map(self.normalise(cs(po[k][c], po[k][s])))
        o_bar = sum((self.normalise(o) for o in o_bars), np.zeros(out_hw))
        sal = (self.normalise(i_bar) + self.normalise(c_bar) + self.normalise(o_bar)) / 3.0
        return _resize(sal, image.shape[:2])


# ------------------------------------------------------------------------------------------------
# GBVS: Harel, Koch & Perona 2006


def stationary_distribution(p: np.ndarray, tol: float = 1e-12, max_iter: int = 100_000
                            ) -> np.ndarray:
    """Equilibrium distribution π = π P of a row-stochastic matrix ``p`` by power iteration
    (L1 change < ``tol``). Raises ``DataError`` if it does not converge."""
    n = p.shape[0]
    pi = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        nxt = pi @ p
        nxt /= nxt.sum()
        if np.abs(nxt - pi).sum() < tol:
            return nxt
        pi = nxt
    raise DataError("stationary_distribution", f"power iteration did not converge in {max_iter}")


@lru_cache(maxsize=8)
def _gbvs_distance2(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    diff = pts[:, None, :] - pts[None, :, :]
    return (diff**2).sum(-1)


@dataclass
class GBVS(ClassicalSaliency):
    """Graph-Based Visual Saliency: Harel, Koch & Perona (2006), NIPS 19.

    Feature maps as Itti's (intensity; colour double-opponency R−G, G−R, B−Y, Y−B, rectified;
    Gabor orientation energy at 0/45/90/135°) at pyramid levels ``levels`` (2, 3, 4), each
    resampled to a graph map whose long side is ``map_size`` (32 nodes, e.g. 24×32). Activation
    (§2.2): a Markov chain on the fully connected graph with weights
    w(i, j) = |log(M(i)/M(j))| · F(i, j), F = exp(−d²/(2σ²)), σ = ``sigma_frac_act`` (0.15) ×
    map width; its equilibrium distribution is the activation map A. Normalisation (§2.3): a
    second chain with weights w(i → j) = A(j) · F(i, j), σ = ``sigma_frac_norm`` (0.06) × map
    width. Maps are averaged within a channel and the three channels summed; the master map is
    blurred with a Gaussian of σ = ``blur_frac`` (0.02) × width (applied on the graph map, where it
    costs nothing) and resized bilinearly to the input.

    Both chains are reversible, so their equilibria have closed forms (detailed balance):
    π(i) ∝ Σⱼ w(i, j) for the symmetric activation weights and π(i) ∝ A(i) Σⱼ F(i, j) A(j) for
    the normalisation weights. ``solver="power"`` computes them by power iteration instead (the
    test suite checks that both agree). Feature maps are scaled to max 1 and offset by ``eps``
    (0.1) before the logarithm: zero-valued nodes get a finite dissimilarity, and on displays
    with a black background the ratios between near-zero background values (noise) do not
    outweigh the item contrasts (ε → 0 is the pure log ratio, ε → ∞ the plain difference).
    """

    name: ClassVar[str] = "gbvs"
    levels: tuple[int, ...] = (2, 3, 4)
    map_size: int = 32
    sigma_frac_act: float = 0.15
    sigma_frac_norm: float = 0.06
    blur_frac: float = 0.02
    eps: float = 0.1
    angles: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0)
    gabor_sigma: float = 2.0
    gabor_wavelength: float = 6.0
    gabor_aspect: float = 0.5
    solver: str = "closed_form"

    def _graph_shape(self, h: int, w: int) -> tuple[int, int]:
        scale = self.map_size / max(h, w)
        return max(int(round(h * scale)), 2), max(int(round(w * scale)), 2)

    def _chain(self, weights: np.ndarray) -> np.ndarray:
        rows = weights.sum(axis=1)
        if self.solver == "power":
            p = np.where(rows[:, None] > 0, weights / np.where(rows > 0, rows, 1.0)[:, None],
                         np.eye(len(rows)))
            return stationary_distribution(p)
        if self.solver != "closed_form":
            raise DataError("GBVS", f"unknown solver {self.solver!r}")
        return rows / rows.sum() if rows.sum() > 0 else np.full(len(rows), 1.0 / len(rows))

    def activation(self, m: np.ndarray, f_act: np.ndarray) -> np.ndarray:
        """Equilibrium of the dissimilarity chain (Harel et al. 2006, §2.2) on map ``m``."""
        top = m.max()
        if top <= NOISE_FLOOR:
            return np.zeros(m.shape)
        lg = np.log(m.ravel() / top + self.eps)
        w = np.abs(lg[:, None] - lg[None, :]) * f_act
        return self._chain(w).reshape(m.shape)

    def normalisation(self, a: np.ndarray, f_norm: np.ndarray) -> np.ndarray:
        """Equilibrium of the mass-concentration chain (§2.3), w(i → j) = A(j) F(i, j)."""
        av = a.ravel()
        if av.max() <= 0:
            return np.zeros(a.shape)
        if self.solver == "closed_form":
            pi = av * (f_norm @ av)
            return (pi / pi.sum()).reshape(a.shape)
        return self._chain(f_norm * av[None, :]).reshape(a.shape)

    def _compute(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        gh, gw = self._graph_shape(h, w)
        d2 = _gbvs_distance2(gh, gw)
        f_act = np.exp(-d2 / (2 * (self.sigma_frac_act * gw) ** 2))
        f_norm = np.exp(-d2 / (2 * (self.sigma_frac_norm * gw) ** 2))
        intensity, red, green, blue, yellow = _rgb_channels(image)
        n_levels = max(self.levels) + 1
        pyr = {k: _pyramid(c, n_levels) for k, c in
               (("I", intensity), ("R", red), ("G", green), ("B", blue), ("Y", yellow))}
        kernels = _gabor_kernels(tuple(self.angles), self.gabor_sigma, self.gabor_wavelength,
                                 self.gabor_aspect)
        channels: dict[str, list[np.ndarray]] = {"C": [], "I": [], "O": []}
        for lv in self.levels:
            i_l = pyr["I"][lv]
            channels["I"].append(i_l)
            rg = pyr["R"][lv] - pyr["G"][lv]
            by = pyr["B"][lv] - pyr["Y"][lv]
            channels["C"] += [np.maximum(rg, 0), np.maximum(-rg, 0), np.maximum(by, 0),
                              np.maximum(-by, 0)]
            channels["O"] += [_gabor_energy(i_l, k) for k in kernels]
        master = np.zeros((gh, gw))
        for maps in channels.values():
            acc = np.zeros((gh, gw))
            for m in maps:
                small = _resize(np.ascontiguousarray(m, dtype=np.float32), (gh, gw),
                                cv2.INTER_AREA).astype(np.float64)
                acc += self.normalisation(self.activation(small, f_act), f_norm)
            master += acc / len(maps)
        sigma = self.blur_frac * gw  # = blur_frac × image width, in graph nodes
        if sigma > 0:
            master = cv2.GaussianBlur(master, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REPLICATE)
        return _resize(master, (h, w))


# ------------------------------------------------------------------------------------------------
# BMS: Zhang & Sclaroff 2013


@dataclass
class BMS(ClassicalSaliency):
    """Boolean Map Saliency: Zhang & Sclaroff (2013), "Saliency detection: a Boolean map
    approach", ICCV (and the TPAMI 2016 extension).

    The image is resized to ``max_dim`` (400) px on its long side and converted to CIE Lab; the
    colour channels are whitened (ZCA, so that no channel dominates by its range) and each is
    rescaled to [0, 255]. Boolean maps B = [channel > θ] for θ ∈ {0, δ, 2δ, …} (δ =
    ``sample_step`` = 8) and their complements. The attention map of a Boolean map keeps its
    surrounded regions — connected components (4-connectivity) that do not touch the image
    border (``scipy.ndimage.label``); it is dilated with a ``dilation_width_1`` (7) square
    kernel and normalised by its L2 norm (emphasising small, compact surrounded regions). The
    mean attention map is dilated with a ``dilation_width_2`` (9) kernel, blurred with a
    Gaussian of σ = ``blur_std`` (9) px, and resized to the input. Widths are in pixels of the
    400-px image, the defaults of the authors' release.
    """

    name: ClassVar[str] = "bms"
    max_dim: int = 400
    sample_step: int = 8
    dilation_width_1: int = 7
    dilation_width_2: int = 9
    blur_std: float = 9.0
    whitening: bool = True

    def _channels(self, image: np.ndarray) -> list[np.ndarray]:
        h, w = image.shape[:2]
        scale = self.max_dim / max(h, w)
        if scale < 1:
            image = cv2.resize(image, (max(int(round(w * scale)), 1),
                                       max(int(round(h * scale)), 1)),
                               interpolation=cv2.INTER_AREA)
        lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        x = lab.reshape(-1, 3).astype(np.float64)
        x -= x.mean(axis=0)
        if self.whitening:
            cov = x.T @ x / len(x)
            vals, vecs = np.linalg.eigh(cov)
            keep = vals > 1e-10 * max(vals.max(), 1e-300)
            scale_v = np.where(keep, 1.0 / np.sqrt(np.where(keep, vals, 1.0)), 0.0)
            x = x @ vecs @ np.diag(scale_v) @ vecs.T
        out = []
        for k in range(3):
            c = x[:, k]
            lo, hi = c.min(), c.max()
            if hi - lo <= 1e-9 * max(1.0, abs(hi)):
                continue  # constant channel: every Boolean map is trivial
            out.append(((c - lo) / (hi - lo) * 255.0).reshape(image.shape[:2]))
        return out

    @staticmethod
    def surrounded(b: np.ndarray) -> np.ndarray:
        """Pixels of ``b`` in connected components (4-connectivity) not touching the border."""
        lab, n = ndimage.label(b)
        if n == 0:
            return np.zeros(b.shape, dtype=bool)
        border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
        touching = np.zeros(n + 1, dtype=bool)
        touching[border] = True
        touching[0] = True
        return ~touching[lab]

    def _compute(self, image: np.ndarray) -> np.ndarray:
        chans = self._channels(image)
        if not chans:
            return np.zeros(image.shape[:2])
        shape = chans[0].shape
        k1 = np.ones((self.dilation_width_1,) * 2, np.uint8) if self.dilation_width_1 > 1 else None
        acc = np.zeros(shape)
        count = 0
        for c in chans:
            for theta in range(0, 256, self.sample_step):
                b = c > theta
                for bm in (b, ~b):
                    count += 1
                    att = self.surrounded(bm)
                    if not att.any():
                        continue
                    att8 = att.astype(np.uint8)
                    if k1 is not None:
                        att8 = cv2.dilate(att8, k1)
                    a = att8.astype(np.float64)
                    acc += a / np.sqrt((a * a).sum())
        mean = acc / max(count, 1)
        if self.dilation_width_2 > 1:
            mean = cv2.dilate(mean, np.ones((self.dilation_width_2,) * 2, np.uint8))
        if self.blur_std > 0:
            mean = cv2.GaussianBlur(mean, (0, 0), sigmaX=self.blur_std, sigmaY=self.blur_std,
                                    borderType=cv2.BORDER_REPLICATE)
        return _resize(mean, image.shape[:2])


# ------------------------------------------------------------------------------------------------
# OpenCV contrib wrappers


@dataclass
class SpectralResidual(ClassicalSaliency):
    """Spectral residual saliency: Hou & Zhang (2007), "Saliency detection: a spectral residual
    approach", CVPR. OpenCV contrib ``cv2.saliency.StaticSaliencySpectralResidual`` (grey image
    resized to 64×64, log-amplitude spectrum minus its 3×3 local mean, inverse FFT squared,
    Gaussian blur), used as is; the map comes back at the input size."""

    name: ClassVar[str] = "spectral_residual"

    def _compute(self, image: np.ndarray) -> np.ndarray:
        return _opencv_saliency(cv2.saliency.StaticSaliencySpectralResidual_create(), image,
                                "SpectralResidual")


@dataclass
class FineGrained(ClassicalSaliency):
    """Fine-grained saliency: Montabone & Soto (2010), "Human detection using a mobile platform
    and novel features derived from a visual saliency mechanism", Image and Vision Computing
    28(3). OpenCV contrib ``cv2.saliency.StaticSaliencyFineGrained`` (centre-surround
    differences of box-filtered intensity on integral images), used as is."""

    name: ClassVar[str] = "fine_grained"

    def _compute(self, image: np.ndarray) -> np.ndarray:
        return _opencv_saliency(cv2.saliency.StaticSaliencyFineGrained_create(), image,
                                "FineGrained")


def _opencv_saliency(algo: Any, image: np.ndarray, name: str) -> np.ndarray:
    """Run an OpenCV contrib ``cv2.saliency`` static algorithm on an RGB image."""
    ok, sal = algo.computeSaliency(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(name, "cv2.saliency computeSaliency failed")
    return np.asarray(sal, dtype=np.float64)


CLASSICAL_MODELS: dict[str, type[ClassicalSaliency]] = {
    cls.name: cls for cls in (IttiKoch, GBVS, BMS, SpectralResidual, FineGrained)
}


def load_classical(name: str, **params: Any) -> ClassicalSaliency:
    """Instantiate the classical model registered as ``name`` (``CLASSICAL_MODELS``) with
    ``params`` overriding its defaults."""
    if name not in CLASSICAL_MODELS:
        raise DataError(name, f"unknown classical saliency model; known: "
                              f"{', '.join(CLASSICAL_MODELS)}")
    try:
        return CLASSICAL_MODELS[name](**params)
    except TypeError as e:
        raise DataError(name, f"bad parameters {sorted(params)}: {e}") from e
