r"""Tables, significance tests and plots of a finished (or partial) sweep.

  python -m experiments.report /tmp/mtkd/ablations/mmoe_synthetic \
      [--baseline "correlation=1.0, name=mmoe"] [--metrics y1/rmse,y2/rmse] \
      [--correction holm|bh|none] [--out DIR/report]

Reads <sweep dir>/results.jsonl (one line per finished run, deduplicated by
run name) and each run's metrics.jsonl; writes report.md and PNGs to --out
(default <sweep dir>/report). Metrics are "split/task/metric" (split test
or validation; default test), e.g. y1/rmse or validation/mean/rmse, or
"model/<key>" for a run's size and cost (model/non_embedding_params,
model/flops_per_example, model/latency_ms_per_batch).
"""
import argparse
import shlex
import sys

from mtkd_jax.ablation import report


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m experiments.report",
      description=__doc__.split("\n\n")[0].strip())
  parser.add_argument("sweep_dir")
  parser.add_argument("--baseline", default=None,
                      help="variant for the paired tests (default: the first)")
  parser.add_argument("--metrics", default=None,
                      help="comma-separated metrics (default: each task's "
                      "primary test metric and their mean)")
  parser.add_argument("--gap_closed", default=None,
                      help="TEACHER,STUDENT,DISTILLED[,DISTILLED...] variants: "
                      "the share of the teacher-student gap each distilled "
                      "student closes; DISTILLED/OWN_STUDENT measures (and "
                      "tests) it against OWN_STUDENT instead, e.g. a wider "
                      "student against the same width trained alone")
  parser.add_argument("--correction", default="holm",
                      choices=("holm", "bh", "none"),
                      help="multiple-comparison adjustment of the p-values "
                      "over the rows compared with the baseline (default "
                      "holm; bh = Benjamini-Hochberg)")
  parser.add_argument("--out", default=None,
                      help="output dir (default: <sweep_dir>/report)")
  args = parser.parse_args(argv)
  metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
  command = "python -m experiments.report " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  try:
    gap = args.gap_closed.split(",") if args.gap_closed else None
    path = report.write(args.sweep_dir, args.out, args.baseline, metrics,
                        command=command, gap_closed=gap,
                        correction=args.correction)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(path)


if __name__ == "__main__":
  main()
