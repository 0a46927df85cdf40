"""Deployment: the adaptive bundle (:mod:`.bundle`), budget-driven switching (:mod:`.adaptive`)
and static export (:mod:`.export`)."""

from .adaptive import AdaptiveNet
from .bundle import BUNDLE_FORMAT, RetainedSubnet, make_bundle, save_bundle
from .export import EXPORT_FORMATS, STATIC_FORMAT, example_input, export_static, load_static, run_export

__all__ = [
    "AdaptiveNet", "RetainedSubnet", "make_bundle", "save_bundle", "BUNDLE_FORMAT",
    "STATIC_FORMAT", "EXPORT_FORMATS", "example_input", "export_static", "load_static", "run_export",
]
