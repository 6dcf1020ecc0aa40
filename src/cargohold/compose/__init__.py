"""Compose files read with compose's own rules (files, ``.env``, interpolation, merging, names)."""

from cargohold.compose.loader import default_files, load_project, normalize_project_name
from cargohold.compose.model import ComposeProject, Service, ServiceVolume, TopVolume, VolumeType
from cargohold.compose.yamldoc import Loc

__all__ = [
    "ComposeProject",
    "Loc",
    "Service",
    "ServiceVolume",
    "TopVolume",
    "VolumeType",
    "default_files",
    "load_project",
    "normalize_project_name",
]
