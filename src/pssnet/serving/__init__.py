"""Adaptive serving (``pssnet serve``): an HTTP server that keeps a latency target by switching
the subnets of a bundle.

The controller is importable without the ``serve`` extra; the HTTP app (:mod:`.app`) needs
``pip install 'pssnet[serve]'``.
"""

from .controller import Decision, ServiceModel, SloConfig, SloController, SubnetProfile, subnet_profiles

__all__ = ["Decision", "ServiceModel", "SloConfig", "SloController", "SubnetProfile", "subnet_profiles"]
