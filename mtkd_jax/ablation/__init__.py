"""Ablation studies: run a sweep, store its results, report on them.

  driver.py  runs a sweep (in process, as parallel subprocesses, or with the
             seeds of a variant vmapped into one program), resumably;
  store.py   <sweep dir>/results.jsonl, one line per finished run;
  stats.py   mean ± std over seeds, metric direction, Δm, paired tests;
  report.py  markdown tables; plots.py  PNG figures.
"""
