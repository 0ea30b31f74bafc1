"""Propose salient regions from fixations, so a new dataset can be annotated like OSIE-SR.

Recipe (He et al. 2019, §3; ``/work/shared/data/osie_regions/README.md``):

1. pool an image's fixations over observers, leaving out each observer's first fixation (the
   central starting point; ``drop_first=True``);
2. mean-shift clustering with a flat kernel, bandwidth 40 px (:class:`sklearn.cluster.MeanShift`;
   by default ``bin_seeding=True`` and ``cluster_all=False``, i.e. seeds on a bandwidth grid and
   fixations farther than a bandwidth from every mode stay unclustered — these settings
   reproduce the released OSIE regions' (n_fixations, n_subjects, centre) exactly for most
   regions; see ``tests/test_data_proposal.py``);
3. a cluster is a region when it holds ≥ ``min_fixations`` (6) fixations from ≥ ``min_subjects``
   (4) observers; regions are numbered 1..n by decreasing fixation count (ties keep mean-shift's
   order, i.e. decreasing kernel density);
4. region mask = the pixels within ``radius`` (30 px, Euclidean, ≤) of one of the regions'
   fixations, each pixel going to the region of its nearest such fixation, so regions never
   overlap. Fixations are first snapped to their pixel ``(rint(y), rint(x))`` and distances are
   pixel-to-pixel (:func:`scipy.ndimage.distance_transform_edt` with ``return_indices``); this
   reproduces the released OSIE masks pixel for pixel where the clusters agree.

Annotation workflow: :func:`propose_regions` per image → :func:`write_proposals` writes
``SegmentationObject/<id>.png``, ``overlays/<id>.png`` (outlines + numbers, :func:`render_overlay`)
and ``labels.csv`` (``image, region, category`` with category empty, plus statistics) → the
annotator fills ``category`` (a name or code of :mod:`dissect.categories`) → :func:`merge_labels`
writes ``SegmentationClass`` PNGs and ``regions.csv`` and returns the :class:`RegionSet`.

In written files ``cx, cy`` (mean fixation position) are in 1-based pixel coordinates, as in the
OSIE-SR ``regions.csv``; in memory (:class:`RegionProposal`) they are 0-based.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

from dissect.categories import code_of, name_of
from dissect.data.images import read_label_png, read_size, write_label_png
from dissect.data.osie import FixationDataset, inside
from dissect.data.regions import OBJECT_DIR, RegionSet, load_regions, write_regions
from dissect.errors import DataError
from dissect.metrics.conventions import pixel_indices

__all__ = [
    "RegionProposal",
    "propose_from_points",
    "propose_regions",
    "render_overlay",
    "write_proposals",
    "merge_labels",
    "LABELS_CSV",
]

LABELS_CSV = "labels.csv"
OVERLAY_DIR = "overlays"


@dataclass
class RegionProposal:
    """Proposed regions of one image.

    ``mask``: ``(H, W) int32`` region ids (0 = none). ``table``: one row per region —
    ``image, region, n_fixations, n_subjects, cx, cy, area_px`` (cx, cy 0-based mean fixation
    position). ``labels``: the region id of each input fixation (0 = in no region).
    """

    image: str
    mask: np.ndarray
    table: pd.DataFrame
    labels: np.ndarray


def propose_from_points(
    points: np.ndarray,
    subjects: np.ndarray,
    size: tuple[int, int],
    *,
    image: str = "",
    bandwidth: float = 40.0,
    min_fixations: int = 6,
    min_subjects: int = 4,
    radius: float = 30.0,
    bin_seeding: bool = True,
    cluster_all: bool = False,
) -> RegionProposal:
    """Regions from pooled 0-based (x, y) ``points`` with their observer ``subjects`` (recipe
    steps 2–4 of the module docstring; the caller chooses which fixations to pool)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    subj = np.asarray(subjects).ravel()
    h, w = int(size[0]), int(size[1])
    if len(subj) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(subj)} subject labels")
    if np.isnan(pts).any():
        raise DataError(image or None, "fixations with NaN coordinates")
    if not inside(pts, (h, w)).all():
        raise DataError(image or None, "fixations outside the image")
    labels = np.full(len(pts), -1, dtype=np.int64)
    if len(pts):
        from sklearn.cluster import MeanShift  # imported here: sklearn is slow to import

        ms = MeanShift(bandwidth=bandwidth, bin_seeding=bin_seeding, cluster_all=cluster_all)
        try:
            labels = ms.fit(pts).labels_
        except ValueError:  # no seed survives (too few / too sparse fixations): no cluster
            labels = np.full(len(pts), -1, dtype=np.int64)
    kept: list[tuple[int, int, int]] = []  # (n_fixations, mean-shift label, n_subjects)
    for lab in range(int(labels.max(initial=-1)) + 1):
        m = labels == lab
        n, ns = int(m.sum()), len(np.unique(subj[m]))
        if n >= min_fixations and ns >= min_subjects:
            kept.append((n, lab, ns))
    kept.sort(key=lambda t: (-t[0], t[1]))
    region = np.zeros(len(pts), dtype=np.int64)
    rows = []
    for rid, (n, lab, ns) in enumerate(kept, start=1):
        m = labels == lab
        region[m] = rid
        cx, cy = pts[m].mean(axis=0)
        rows.append((image, rid, n, ns, cx, cy))

    mask = np.zeros((h, w), dtype=np.int32)
    if kept:
        # seeds: the pixel of each region fixation; a pixel shared by fixations of two regions
        # goes to the higher region id (assignment below runs in increasing id order)
        order = np.argsort(region, kind="stable")
        order = order[region[order] > 0]
        rr, cc = pixel_indices(pts[order])
        seeds = np.zeros((h, w), dtype=np.int32)
        seeds[rr, cc] = region[order]
        dist, (ir, ic) = distance_transform_edt(seeds == 0, return_indices=True)
        mask = np.where(dist <= radius, seeds[ir, ic], 0).astype(np.int32)
    area = np.bincount(mask.ravel(), minlength=len(kept) + 1)
    table = pd.DataFrame(
        rows, columns=["image", "region", "n_fixations", "n_subjects", "cx", "cy"]
    ).astype({"image": str, "region": np.int64, "n_fixations": np.int64, "n_subjects": np.int64})
    table["area_px"] = area[1:].astype(np.int64)
    return RegionProposal(image, mask, table, region)


def propose_regions(
    dataset: FixationDataset,
    image_id: str,
    *,
    drop_first: bool = True,
    bandwidth: float = 40.0,
    min_fixations: int = 6,
    min_subjects: int = 4,
    radius: float = 30.0,
    bin_seeding: bool = True,
    cluster_all: bool = False,
) -> RegionProposal:
    """Propose the salient regions of one image of ``dataset`` (module docstring recipe)."""
    f = dataset.fixations_of(image_id, drop_first=drop_first)
    return propose_from_points(
        f[["x", "y"]].to_numpy(np.float64),
        f["subject"].to_numpy(),
        dataset[image_id].size,
        image=str(image_id),
        bandwidth=bandwidth,
        min_fixations=min_fixations,
        min_subjects=min_subjects,
        radius=radius,
        bin_seeding=bin_seeding,
        cluster_all=cluster_all,
    )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    path: str | Path | None = None,
    *,
    color: tuple[int, int, int] = (255, 255, 0),
    font_size: int = 28,
) -> Image.Image:
    """Image with each region's outline drawn and its number written at its centre.

    The number sits on the region pixel nearest the region's centroid (inside the region even
    when it is not convex). Saved as PNG when ``path`` is given.
    """
    img = np.asarray(image)
    mask = np.asarray(mask)
    if img.shape[:2] != mask.shape:
        raise DataError(path, f"image size {img.shape[:2]} differs from mask size {mask.shape}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    out = img[..., :3].astype(np.uint8).copy()
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:-1, :] |= mask[1:, :] != mask[:-1, :]
    out[edge] = color
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = _font(font_size)
    for rid in range(1, int(mask.max(initial=0)) + 1):
        ys, xs = np.nonzero(mask == rid)
        if len(xs) == 0:
            continue
        k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        draw.text(
            (int(xs[k]), int(ys[k])),
            str(rid),
            fill=color,
            font=font,
            anchor="mm",
            stroke_width=3,
            stroke_fill=(0, 0, 0),
        )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pil.save(path)
    return pil


def write_proposals(
    dataset: FixationDataset,
    proposals: Iterable[RegionProposal],
    out_dir: str | Path,
    *,
    overlays: bool = True,
) -> Path:
    """Write proposals for annotation: ``SegmentationObject/<id>.png``, ``overlays/<id>.png``
    and ``labels.csv`` (``image, region, category`` — category left empty for the annotator —
    then ``n_fixations, n_subjects, cx, cy, area_px`` with 1-based cx, cy as in OSIE-SR)."""
    out = Path(out_dir)
    tables = []
    for p in proposals:
        write_label_png(out / OBJECT_DIR / f"{p.image}.png", p.mask)
        if overlays:
            overlay = out / OVERLAY_DIR / f"{p.image}.png"
            render_overlay(dataset.load_image(p.image), p.mask, overlay)
        tables.append(p.table)
    cols = ["image", "region", "n_fixations", "n_subjects", "cx", "cy", "area_px"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=cols)
    table = table[cols].copy()
    table.insert(2, "category", "")
    table["cx"] = (table["cx"].astype(float) + 1.0).round(1)  # 0-based -> 1-based (file format)
    table["cy"] = (table["cy"].astype(float) + 1.0).round(1)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / LABELS_CSV, index=False)
    return out


def merge_labels(
    proposal_dir: str | Path,
    labels_csv: str | Path | None = None,
    out_dir: str | Path | None = None,
    dataset: FixationDataset | None = None,
) -> RegionSet:
    """Merge a filled labelling CSV into the release format and return the :class:`RegionSet`.

    ``labels_csv`` (default ``<proposal_dir>/labels.csv``) needs ``image, region, category``;
    category is a name or numeric code. Every region of every proposed mask must be labelled;
    blank or unknown categories, or rows naming regions that are not in the masks, raise
    :class:`DataError`. Writes ``SegmentationObject``, ``SegmentationClass`` and
    ``regions.csv`` (``image, region, category, code`` + the CSV's other columns) to
    ``out_dir`` (default ``proposal_dir``).
    """
    proposal_dir = Path(proposal_dir)
    csv = Path(labels_csv) if labels_csv is not None else proposal_dir / LABELS_CSV
    if not csv.is_file():
        raise DataError(csv, "labelling CSV does not exist")
    df = pd.read_csv(csv, dtype={"image": str, "category": str}, keep_default_na=False)
    for c in ("image", "region", "category"):
        if c not in df.columns:
            raise DataError(csv, f"labelling CSV lacks column {c!r}")
    blank = df["category"].astype(str).str.strip() == ""
    if blank.any():
        todo = [f"{i}/{r}" for i, r in df.loc[blank, ["image", "region"]].itertuples(index=False)]
        raise DataError(csv, f"{int(blank.sum())} region(s) not labelled yet: {todo[:10]}")
    codes = []
    for k, lab in enumerate(df["category"]):
        where = f"{csv} (row {k + 2})"
        text = str(lab).strip()
        codes.append(int(text) if text.isdigit() else code_of(text, where))
        name_of(codes[-1], where)
    extra = [c for c in df.columns if c not in ("image", "region", "category", "code")]
    table = pd.DataFrame(
        {
            "image": df["image"],
            "region": df["region"],
            "category": [name_of(c) for c in codes],
            "code": codes,
        }
    )
    for c in extra:
        table[c] = df[c].to_numpy()
    obj_dir = proposal_dir / OBJECT_DIR
    files = {p.stem: p for p in sorted(obj_dir.glob("*.png"))}
    if not files:
        raise DataError(obj_dir, "no proposal masks found")
    sizes = {i: read_size(p) for i, p in files.items()}
    if dataset is not None:
        for i, s in sizes.items():
            if i not in dataset or dataset[i].size != s:
                want = dataset[i].size if i in dataset else "not in the dataset"
                raise DataError(files[i], f"mask size {s} vs image {want}")

    def reader(image_id: str) -> tuple[np.ndarray, None]:
        return read_label_png(files[image_id]), None

    names = {i: (str(p), str(csv)) for i, p in files.items()}
    rs = RegionSet(table, list(files), reader, sizes, csv, names)
    rs.validate()  # every listed region non-empty, every mask region labelled
    target = Path(out_dir) if out_dir is not None else proposal_dir
    write_regions(rs, target)
    return load_regions(target, dataset)
