"""Patch encoders, learned tissue / artefact segmenters, the extraction engine and the Zarr embedding store.

Public names load on first use (torch is imported only then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Encoder": ".encoders",
    "EncoderConfig": ".encoders",
    "WeightsError": ".encoders",
    "create_encoder": ".encoders",
    "get_encoder_config": ".encoders",
    "list_encoders": ".encoders",
    "register_encoder": ".encoders",
    "extract_features": ".extract",
    "extract_slides": ".extract",
    "ExtractionResult": ".extract",
    "open_store": ".store",
    "SlideStore": ".store",
    "StoreError": ".store",
    "StoreCorruptError": ".store",
    "IncompleteStoreError": ".store",
    "export_h5": ".h5",
    "import_h5": ".h5",
    "segment_tissue": ".segmenters",
    "segment_artefacts": ".segmenters",
    "create_segmenter": ".segmenters",
    "list_segmenters": ".segmenters",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .encoders import (
        Encoder as Encoder,
        EncoderConfig as EncoderConfig,
        WeightsError as WeightsError,
        create_encoder as create_encoder,
        get_encoder_config as get_encoder_config,
        list_encoders as list_encoders,
        register_encoder as register_encoder,
    )
    from .extract import (
        ExtractionResult as ExtractionResult,
        extract_features as extract_features,
        extract_slides as extract_slides,
    )
    from .h5 import export_h5 as export_h5, import_h5 as import_h5
    from .segmenters import (
        create_segmenter as create_segmenter,
        list_segmenters as list_segmenters,
        segment_artefacts as segment_artefacts,
        segment_tissue as segment_tissue,
    )
    from .store import (
        IncompleteStoreError as IncompleteStoreError,
        SlideStore as SlideStore,
        StoreCorruptError as StoreCorruptError,
        StoreError as StoreError,
        open_store as open_store,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
