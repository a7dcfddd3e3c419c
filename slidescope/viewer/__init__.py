"""The napari plugin: slides as lazy multiscale images in µm, Analyse and Export widgets, a sample.

Install with the ``viewer`` extra (``pip install 'slidescope[viewer]'``); napari finds the plugin
through ``napari.yaml`` in this folder. Importing this package imports neither napari nor Qt; the
plugin's modules do, when napari calls them. From Python::

    import napari
    from slidescope.viewer import slide_layer_data
    from slidescope.wsi import open_slide

    viewer = napari.Viewer()
    data, kwargs, _ = slide_layer_data(open_slide("slide.svs"))
    viewer.add_image(data, **kwargs)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "read_slide": "._reader",
    "slide_layer_data": "._reader",
    "slide_pyramid": "._reader",
    "make_sample_data": "._sample",
    "prepare_sample": "._sample",
    "AnalysisRequest": "._analysis",
    "run_analysis": "._analysis",
    "result_layers": "._results",
    "write_heatmap_tiff": "._export",
    "tiles_feature_collection": "._export",
    "tile_similarity": "._similarity",
    "similar_tiles": "._similarity",
    "tiles_in_region": "._region",
    "score_region": "._region",
    "zero_shot_region": "._region",
    "read_qupath_geojson": "._annotations",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from ._analysis import AnalysisRequest as AnalysisRequest, run_analysis as run_analysis
    from ._annotations import read_qupath_geojson as read_qupath_geojson
    from ._export import (
        tiles_feature_collection as tiles_feature_collection,
        write_heatmap_tiff as write_heatmap_tiff,
    )
    from ._reader import (
        read_slide as read_slide,
        slide_layer_data as slide_layer_data,
        slide_pyramid as slide_pyramid,
    )
    from ._region import (
        score_region as score_region,
        tiles_in_region as tiles_in_region,
        zero_shot_region as zero_shot_region,
    )
    from ._results import result_layers as result_layers
    from ._sample import make_sample_data as make_sample_data, prepare_sample as prepare_sample
    from ._similarity import similar_tiles as similar_tiles, tile_similarity as tile_similarity

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
