"""Datasets by name: `load_dataset(data_config) -> specs.Splits`.

Each entry imports its module on use, so the synthetic path never imports
TFDS. To add a dataset, write `load(cfg) -> Splits` and add one line here.
"""
import importlib

from mtkd_jax import registry
from mtkd_jax.data import columns
from mtkd_jax.data import specs

DATASETS = {
    "synthetic_ctr": "mtkd_jax.data.synthetic:load_synthetic_ctr",
    "mmoe_synthetic": "mtkd_jax.data.synthetic:load_mmoe_synthetic",
    "movielens_100k": "mtkd_jax.data.movielens:load",
    "movielens_1m": "mtkd_jax.data.movielens_1m:load",
    "movielens_latest_small": "mtkd_jax.data.movielens_latest:load",
    "census_income": "mtkd_jax.data.census:load",
    "ali_ccp": "mtkd_jax.data.ali:load_aliccp",
    "aliexpress": "mtkd_jax.data.ali:load_aliexpress",
}


def load_dataset(cfg) -> specs.Splits:
  """Loads the splits of dataset `cfg.name`, each checked against its spec."""
  module_name, fn_name = registry.lookup(DATASETS, cfg.name, "dataset").split(":")
  splits = getattr(importlib.import_module(module_name), fn_name)(cfg)
  for name in ("train", "validation", "test"):
    columns.validate_columns(splits.spec, splits.split(name), name)
  return splits
