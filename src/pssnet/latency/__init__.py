"""Latency look-up tables: per-block latencies measured on the user's device, and the predictor.

- :mod:`.keys`: what identifies a block's computation (table keys);
- :mod:`.blocks`: the distinct configurations of a search space and their static modules;
- :mod:`.table`: :class:`LatencyTable` (persistence, prediction), :func:`load_tables` (``--lut`` files);
- :mod:`.build`: measuring a table (resumable) and calibrating its overhead.
"""

from .blocks import BlockConfig, PooledClassifier, StaticBlock, build_module, config_call, enumerate_configs
from .build import build_table, calibrate_overhead, calibration_subnets
from .keys import CLASSIFIER, block_input_sizes, block_key, block_signature, classifier_key, subnet_keys
from .table import FORMAT, LatencyTable, load_tables

__all__ = ["BlockConfig", "CLASSIFIER", "FORMAT", "LatencyTable", "PooledClassifier", "StaticBlock",
           "block_input_sizes", "block_key", "block_signature", "build_module", "build_table",
           "calibrate_overhead", "calibration_subnets", "classifier_key", "config_call", "enumerate_configs",
           "load_tables", "subnet_keys"]
