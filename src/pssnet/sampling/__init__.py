"""Subnet sampling: constraint-conditioned space maps, subnet pools and samplers."""

from .pool import SubnetPool
from .samplers import SAMPLERS, Draw, PSSSampler, SubnetSampler, UniformSampler, exp_schedule, make_sampler
from .space_map import SpaceMap, build_space_map, default_cache_dir, map_cache_key

__all__ = [
    "SAMPLERS", "Draw", "PSSSampler", "SpaceMap", "SubnetPool", "SubnetSampler", "UniformSampler",
    "build_space_map", "default_cache_dir", "exp_schedule", "make_sampler", "map_cache_key",
]
