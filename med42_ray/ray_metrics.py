"""Training steps and evaluation progress as Ray metrics, for Prometheus and the dashboard's Grafana.

Figures set here through `ray.util.metrics` reach the metrics agent of the node the process runs
on, which serves them with Ray's own metrics on the node's metrics export port. Prometheus finds
every node's port in Ray's service-discovery file, so nothing here knows about Prometheus
(README: "Metrics in Prometheus and Grafana"). Prometheus names each `ray_<name>`, e.g.
`ray_med42_train_loss{run="train_lora"}`.

Training (rank 0 of each Ray Train run, after every optimizer step; tag `run`: the run's name):
  med42_train_loss, med42_train_lr, med42_train_grad_norm, med42_train_tokens_per_s,
  med42_train_mfu, med42_train_step, med42_train_epoch (gauges: the latest step's value)
Evaluation (the driver of `evaluate`; tag `evaluation`: its output folder's path):
  med42_eval_questions_done{benchmark} (gauge: questions scored so far, over all models)
  med42_eval_questions_total{benchmark} (gauge: questions to score)
  med42_eval_questions_per_s (gauge: since the evaluation started)

Gauges, not counters, for progress: a counter restarts at zero with the process, and Grafana's
`rate()` would read a resumed evaluation as a reset; a gauge of "done so far" is what a progress
panel plots. A metric reaches Prometheus at the agent's export interval (Ray's
`metrics_report_interval_ms`, 10 s by default) and the scrape interval: a figure is the latest
value at that moment, while metrics.jsonl keeps every step.
"""

from __future__ import annotations

import time

PROMETHEUS_PREFIX = "ray_"  # Ray's metrics agent serves `name` as `ray_name`
EVAL_DONE, EVAL_TOTAL, EVAL_RATE = "med42_eval_questions_done", "med42_eval_questions_total", "med42_eval_questions_per_s"

TRAIN_FIGURES = {
    "loss": "Training loss of the latest optimizer step (mean over its answer tokens)",
    "lr": "Learning rate the latest step used",
    "grad_norm": "Global gradient norm of the latest step, before clipping",
    "tokens_per_s": "Non-padding tokens per second of the latest step, all workers together",
    "mfu": "Model FLOPs utilisation of the latest step (train/metrics.py)",
    "step": "Optimizer steps done",
    "epoch": "Epochs completed",
}


class TrainStepMetrics:
    """The per-step gauges of one training run; `record` takes a metrics.jsonl row."""

    def __init__(self, run: str):
        from ray.util.metrics import Gauge

        self.tags = {"run": run}
        self.gauges = {key: Gauge(f"med42_train_{key}", description=text, tag_keys=("run",))
                       for key, text in TRAIN_FIGURES.items()}

    def record(self, row: dict) -> None:
        for key, gauge in self.gauges.items():
            if row.get(key) is not None:  # grad_norm and mfu may be unknown
                gauge.set(float(row[key]), tags=self.tags)


def _ascii_tag(value: str) -> str:
    """Ray's metrics take ASCII tag values only (a non-ASCII one raises UnicodeEncodeError): an
    output folder like /runs/évaluation becomes /runs/\\xe9valuation."""
    return value.encode("ascii", "backslashreplace").decode("ascii")


class EvalProgressMetrics:
    """Questions done per benchmark and questions per second of one `evaluate`."""

    def __init__(self, evaluation: str, totals: dict[str, int]):
        from ray.util.metrics import Gauge

        self.started = time.monotonic()
        self.evaluation = evaluation = _ascii_tag(evaluation)
        keys = ("evaluation", "benchmark")
        self.done = Gauge(EVAL_DONE, description="Questions scored so far", tag_keys=keys)
        total = Gauge(EVAL_TOTAL, description="Questions to score", tag_keys=keys)
        self.rate = Gauge(EVAL_RATE, description="Questions scored per second since the "
                          "evaluation started", tag_keys=("evaluation",))
        for name, n in totals.items():
            total.set(n, tags={"evaluation": evaluation, "benchmark": name})
            self.done.set(0, tags={"evaluation": evaluation, "benchmark": name})

    def record(self, done: dict[str, int]) -> None:
        """`done`: questions scored so far per benchmark."""
        for name, n in done.items():
            self.done.set(n, tags={"evaluation": self.evaluation, "benchmark": name})
        elapsed = time.monotonic() - self.started
        if elapsed > 0:
            self.rate.set(sum(done.values()) / elapsed, tags={"evaluation": self.evaluation})


# -- the Grafana dashboard of these figures ----------------------------------------------------
# Ray provisions every JSON file in <session>/metrics/grafana/dashboards into its Grafana
# (cluster.yaml and README copy this one there): `python -m med42_ray.ray_metrics <that folder>`.

DASHBOARD_FILE = "med42_ray_dashboard.json"
EVAL_PANELS = {
    "Evaluation: questions done / to do": [PROMETHEUS_PREFIX + EVAL_DONE, PROMETHEUS_PREFIX + EVAL_TOTAL],
    "Evaluation: questions per second": [PROMETHEUS_PREFIX + EVAL_RATE],
}


def _panel(i: int, title: str, exprs: list[str], legend: str) -> dict:
    return {"id": i + 1, "type": "timeseries", "title": title, "datasource": "${datasource}",
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "targets": [{"expr": e, "legendFormat": legend, "refId": chr(65 + j)} for j, e in enumerate(exprs)]}


def grafana_dashboard() -> dict:
    """One panel per training figure (a line per run) and the evaluation's progress."""
    panels = [(f"Training: {key}", [f'{PROMETHEUS_PREFIX}med42_train_{key}{{run=~"$run"}}'], "{{run}}")
              for key in TRAIN_FIGURES]
    panels += [(title, exprs, "{{__name__}} {{benchmark}}") for title, exprs in EVAL_PANELS.items()]
    run_values = f"label_values({PROMETHEUS_PREFIX}med42_train_step, run)"
    return {
        "uid": "med42-ray", "title": "med42-ray", "tags": ["med42-ray"], "schemaVersion": 27,
        "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "editable": True,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 2},
            {"name": "run", "label": "run", "type": "query", "datasource": "${datasource}", "refresh": 2,
             "definition": run_values, "query": {"query": run_values, "refId": "runs"},
             "includeAll": True, "multi": True, "allValue": ".+", "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": [_panel(i, *p) for i, p in enumerate(panels)],
    }


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DASHBOARD_FILE).write_text(json.dumps(grafana_dashboard(), indent=1))
    print(f"wrote {folder / DASHBOARD_FILE}")
