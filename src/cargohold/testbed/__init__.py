"""The test bed: a real Docker engine and local test images, built without any registry.

``python -m cargohold.testbed engine|images|second-engine|stop-second-engine|status``
drives it from a shell; the pytest fixtures in ``tests/`` call the same functions.
"""

from cargohold.testbed.engine import (
    DEFAULT_SECOND_BASE,
    ensure_engine,
    ensure_second_engine,
    second_engine_host,
    stop_second_engine,
)
from cargohold.testbed.images import copy_image, ensure_images, image_ref, image_status
from cargohold.testbed.recipes import DATABASES, IMAGE_NAMES, MARIADB, POSTGRES, REDIS, DatabaseRecipe
from cargohold.testbed.resources import Resources, sweep, unique_name, wait_ready

__all__ = [
    "DATABASES",
    "DEFAULT_SECOND_BASE",
    "IMAGE_NAMES",
    "MARIADB",
    "POSTGRES",
    "REDIS",
    "DatabaseRecipe",
    "Resources",
    "copy_image",
    "ensure_engine",
    "ensure_images",
    "ensure_second_engine",
    "image_ref",
    "image_status",
    "second_engine_host",
    "stop_second_engine",
    "sweep",
    "unique_name",
    "wait_ready",
]
