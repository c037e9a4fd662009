"""Errors a user can cause and fix; their message is meant to be shown as is."""


class SatsegError(Exception):
    """A problem with the user's input or environment, worded for a GIS user.

    CLIs print ``str(error)`` and exit with status 2; the plugin shows it in
    the message bar. Anything that is not a ``SatsegError`` is a bug.
    """


class ModelError(SatsegError):
    """The model file is missing, unreadable or not a satseg/Deepness segmentor."""


class SourceError(SatsegError):
    """The imagery source (URL, token, raster file) cannot be used."""


class ExtentError(SatsegError):
    """The extent is empty, invalid or outside the source's coverage."""


class ParameterError(SatsegError):
    """A run parameter (zoom, overlap, batch size, opacity, ...) is outside the values it may take."""


class ConfigError(SatsegError):
    """A configuration file (class config, colour map, filter) is invalid."""


class Cancelled(SatsegError):  # noqa: N818 - reads better at the raise site
    """The user cancelled a long run; nothing half-written was left behind."""
