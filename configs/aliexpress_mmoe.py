r"""python -m experiments.run --config configs/aliexpress_mmoe.py --config.data.data_dir=/path/to/AliExpress_US --workdir /tmp/mtkd/aliexpress_mmoe

MMoE on one AliExpress country (PLE / AITM / MTReclib data) in MTReclib's
CSV format.

Smoke (seconds): --config configs/aliexpress_mmoe.py:smoke (needs data_dir
too; torch-rechub's sample files work)

`data.data_dir` is a country folder (AliExpress_NL, _ES, _FR or _US, made by
MTReclib's data/preprocess.py from Tianchi dataset 74690) with train.csv and
test.csv, or the aliexpress_{train,test}_sample.csv files. Validation is a
seeded `data.val_fraction` of train's search ids (whole page views). Tasks
over the impression space: ctr (click) and ctcvr (click and conversion). 16
sparse id fields and 63 normalised dense ones. The checkpoint with the best
validation ctcvr AUC is tested once; MTReclib reports test CTR / CTCVR AUC.
"""
import ml_collections

from configs import aliccp_mmoe


def get_config(arg=None):
  c = aliccp_mmoe.get_config(arg)  # same tasks, selection and smoke sizes
  c.data = ml_collections.ConfigDict({
      "name": "aliexpress",
      "data_dir": "",
      "cache_dir": "",  # "" = ~/.cache/mtkd_jax/columns
      "val_fraction": 0.1,
      "split_seed": 0,
      "max_examples": c.data.max_examples,  # 0 = all
      "embed_dim": c.data.embed_dim})
  if arg != "smoke":
    c.data.embed_dim = 16
    c.model.expert_hidden = (256, 128)
    c.model.bottom_hidden = (256, 128)
    c.model.tower_hidden = (64,)
    c.train.batch_size = 2048
    c.train.num_epochs = 3  # ~18M train rows per country: ~8k steps an epoch
  return c
