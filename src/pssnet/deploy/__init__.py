"""Deployment: the adaptive bundle (:mod:`.bundle`; as a Hub folder: :mod:`.hub`), budget-driven
switching (:mod:`.adaptive`) and static export (:mod:`.export`)."""

from .adaptive import AdaptiveNet
from .bundle import BUNDLE_FORMAT, RetainedSubnet, make_bundle, save_bundle
from .export import (EXPORT_FORMATS, INDEX_FORMAT, STATIC_FORMAT, SUFFIXES, example_input, export_all, export_checked,
                     export_static, load_static, run_export)
from .hub import FOLDER_FORMAT, load_folder, save_folder

__all__ = [
    "AdaptiveNet", "RetainedSubnet", "make_bundle", "save_bundle", "BUNDLE_FORMAT", "FOLDER_FORMAT",
    "save_folder", "load_folder", "STATIC_FORMAT", "EXPORT_FORMATS", "INDEX_FORMAT", "SUFFIXES", "example_input",
    "export_static", "export_checked", "export_all", "load_static", "run_export",
]
