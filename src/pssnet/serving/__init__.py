"""Adaptive serving (``pssnet serve``): an HTTP server that keeps a latency target by switching
the subnets of a bundle.

The controller (:mod:`.controller`), its service-time model (:mod:`.service_model`) and its
objective (:mod:`.config`) are importable without the ``serve`` extra; the HTTP app (:mod:`.app`) needs
``pip install 'pssnet[serve]'``.
"""

from .controller import Decision, SloController
from .service_model import ServiceModel, SubnetProfile, subnet_profiles
from .config import SloConfig

__all__ = ["Decision", "ServiceModel", "SloConfig", "SloController", "SubnetProfile", "subnet_profiles"]
