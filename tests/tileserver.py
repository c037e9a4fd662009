"""The loopback tile server, importable from tests as ``tileserver`` (it lives in scripts/)."""

from scripts.tileserver import TileServer, folder_provider, oam_provider

__all__ = ["TileServer", "folder_provider", "oam_provider"]
