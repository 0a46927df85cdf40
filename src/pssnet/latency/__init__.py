"""Latency look-up tables: per-block latencies measured on the user's device, and the predictor.

- :mod:`.keys`: what identifies a block's computation (table keys);
- :mod:`.blocks`: the distinct configurations of a search space and their static modules;
- :mod:`.features`, :mod:`.grid`: what a block computes as numbers, parts as grids of configurations;
- :mod:`.context`: whole subnets timed block by block (each block in its real context);
- :mod:`.fit`, :mod:`.sampling`, :mod:`.fitting`: block models, which subnets to time, fitting a table;
- :mod:`.correction`: from a sum over blocks to end-to-end latency;
- :mod:`.table`: :class:`LatencyTable` (persistence, prediction), :func:`load_tables` (``--lut`` files);
- :mod:`.build`: building a table (exhaustive or fitted, resumable).
"""

from .blocks import BlockConfig, PooledClassifier, StaticBlock, build_module, config_call, count_configs, enumerate_configs
from .build import AUTO_FIT_ABOVE, FitSettings, build_table
from .context import SubnetTiming, time_in_context
from .correction import Correction
from .fit import BlockModel
from .keys import CLASSIFIER, block_input_sizes, block_key, block_signature, classifier_key, subnet_keys
from .table import FORMAT, LatencyTable, load_tables

__all__ = ["AUTO_FIT_ABOVE", "BlockConfig", "BlockModel", "CLASSIFIER", "Correction", "FORMAT", "FitSettings",
           "LatencyTable", "PooledClassifier", "StaticBlock", "SubnetTiming", "block_input_sizes", "block_key",
           "block_signature", "build_module", "build_table", "classifier_key", "config_call", "count_configs",
           "enumerate_configs", "load_tables", "subnet_keys", "time_in_context"]
