"""Stimuli, fixations, salient regions, fixation maps and splits.

Coordinates everywhere are 0-based pixels, x right, y down; a point belongs to pixel
``(rint(y), rint(x))`` (numpy ``rint``: halves to even). OSIE's 1-based MATLAB coordinates are
converted once, in :func:`dissect.data.osie.load_osie`.
"""

from dissect.data.maps import density_map, fixation_map
from dissect.data.osie import FixationDataset, Stimulus, load_osie
from dissect.data.proposal import (
    RegionProposal,
    merge_labels,
    propose_from_points,
    propose_regions,
    render_overlay,
    write_proposals,
)
from dissect.data.regions import RegionSet, load_labelme, load_regions, write_regions
from dissect.data.splits import ensure_split, load_split, make_split, save_split

__all__ = [
    "load_osie",
    "FixationDataset",
    "Stimulus",
    "load_regions",
    "RegionSet",
    "load_labelme",
    "write_regions",
    "fixation_map",
    "density_map",
    "make_split",
    "save_split",
    "load_split",
    "ensure_split",
    "propose_regions",
    "propose_from_points",
    "RegionProposal",
    "render_overlay",
    "write_proposals",
    "merge_labels",
]
