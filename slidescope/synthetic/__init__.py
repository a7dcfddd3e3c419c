"""Synthetic data: H&E-like and IHC-like whole-slide images with exact ground truth, and labelled cohorts.

Everything here is generated from seeds, free to share, and says that it is synthetic. It is what the
demo, the napari sample, the tests and the benchmarks run on; it is not part of reading slides
(:mod:`slidescope.wsi`).

* :func:`make_synthetic_slide` writes an Aperio-SVS-style pyramidal tiled TIFF (JPEG tiles, YCbCr
  4:2:0) that OpenSlide (vendor ``aperio``) and tiffslide both open, reporting the same dimensions,
  levels and microns per pixel, and returns a :class:`SyntheticSlide` with its tissue and tumour masks.
* :func:`make_synthetic_ihc_slide` writes a small IHC-like slide (blue counterstain, brown DAB patches).
* :func:`make_artefact_slide` writes an H&E-like slide with blur, pen, folds and bubbles injected at
  known tile-aligned cells (the ground truth of the tile QC).
* :func:`make_synthetic_cohort` writes a labelled cohort of synthetic slides with masks, patients,
  sites and short free-text reports (:func:`synthetic_report`) in a ``manifest.csv``.

The H&E picture is drawn from a small set of low-resolution *layout* fields (tissue, tumour, fat,
stroma density, fibre orientation) sampled at ``mask_mpp``; the returned ``tissue_mask`` and
``tumour_mask`` are exactly those fields thresholded, and every level-0 pixel is classified by
thresholding the same fields, bilinearly interpolated, so the masks and the pixels agree.

The look, in brief:

* glass: ``background`` with faint scanner noise;
* ``n_islands`` irregular tissue islands covering 30-50 % of the glass;
* stroma: eosin-pink wavy collagen fibres, sparse nuclei (elongated fibroblasts, small dark
  lymphocytes, oval others, 6-12 um), patches of fat (white vacuoles with thin pink membranes);
* tumour (``tumour=True``): one to three blobs, 8-16 % of the tissue, with crowded, large (9-15 um),
  pleomorphic, hyperchromatic nuclei on pale purple cytoplasm and little stroma.

Colours follow a Beer-Lambert stain model; nuclei and fat cells are placed in global level-0
coordinates, so they are continuous across tile borders. The same ``seed`` and arguments give the same
bytes. Until the next release ``slidescope.wsi.make_synthetic_slide``, ``make_synthetic_cohort`` and
``SyntheticSlide``, and the modules ``slidescope.wsi.synthetic`` and ``slidescope.wsi.cohort``, still
work and emit a ``DeprecationWarning`` that names the new place.
"""

from __future__ import annotations

from ._artefacts import ARTEFACT_KINDS, ArtefactSlide, make_artefact_slide
from ._cohort import make_synthetic_cohort, synthetic_report
from ._ihc import IHC_OD_COUNTERSTAIN, SyntheticIHCSlide, make_synthetic_ihc_slide
from ._slide import SyntheticSlide, make_synthetic_slide

__all__ = [
    "ARTEFACT_KINDS",
    "ArtefactSlide",
    "IHC_OD_COUNTERSTAIN",
    "SyntheticIHCSlide",
    "SyntheticSlide",
    "make_artefact_slide",
    "make_synthetic_cohort",
    "make_synthetic_ihc_slide",
    "make_synthetic_slide",
    "synthetic_report",
]
