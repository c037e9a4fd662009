"""What the Processing algorithms share: the imagery parameters, optional values, their errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..inference.errors import Cancelled, SatsegError
from .sources import ImagerySource, source_of_layer, source_of_url

SOURCE_LAYER = "SOURCE_LAYER"
SOURCE_URL = "SOURCE_URL"


def given(parameters: dict[str, Any], name: str) -> bool:
    """True when the optional parameter ``name`` has a value (not empty, not a temporary output)."""
    return parameters.get(name) not in (None, "", QgsProcessing.TEMPORARY_OUTPUT)


def add_imagery_parameters(algorithm: QgsProcessingAlgorithm) -> None:
    """Add the imagery: a raster or XYZ layer, or else a tile URL."""
    algorithm.addParameter(
        QgsProcessingParameterRasterLayer(SOURCE_LAYER, "Imagery layer (XYZ or raster)", optional=True)
    )
    algorithm.addParameter(
        QgsProcessingParameterString(SOURCE_URL, "or tile URL (used when no layer is given)", optional=True)
    )


def imagery_source(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> ImagerySource:
    """The imagery of the parameters ``add_imagery_parameters`` added: the layer, else the URL."""
    layer = algorithm.parameterAsRasterLayer(parameters, SOURCE_LAYER, context)
    if layer is not None:
        return source_of_layer(layer)
    return source_of_url(algorithm.parameterAsString(parameters, SOURCE_URL, context))


@contextlib.contextmanager
def processing_errors(cancelled: str) -> Iterator[None]:
    """Turn satseg's errors into the ``QgsProcessingException`` Processing shows: its message, or ``cancelled``."""
    try:
        yield
    except Cancelled:
        raise QgsProcessingException(cancelled) from None
    except SatsegError as exc:
        raise QgsProcessingException(str(exc)) from None
