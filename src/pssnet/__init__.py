"""pssnet: resource-adaptive supernets trained with Prioritized Subnet Sampling, and deployed."""

from .api import canonicalize, count_arrays, count_flops, count_macs, count_params, flops_array, params_array
from .architectures import ARCHITECTURES
from .calibration import recalibrate_bn
from .constraints import Constraint
from .deploy import AdaptiveNet
from .pretrained import InitReport, load_pretrained
from .space import SearchSpace, Subnet, make_divisible
from .supernet import StaticSubnet, Supernet, create_supernet, extract_subnet
from .supernet_config import SupernetConfig

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "AdaptiveNet", "Constraint", "InitReport", "SearchSpace", "StaticSubnet", "Subnet",
    "Supernet", "SupernetConfig", "canonicalize",
    "count_arrays", "count_flops", "count_macs", "count_params", "create_supernet",
    "extract_subnet", "flops_array", "load_pretrained", "make_divisible", "params_array", "recalibrate_bn",
]
