"""`med42-ray sweep`: Ray Tune over the adapter method (sweep.space.methods: LoRA alone by default,
or any of rsLoRA, DoRA, IA3, LoHa, LoKr), rank, alpha and learning rate, with ASHA early stopping.

Each Tune trial is the driver of one Ray Train run (`run_train`, the same trainer as `med42-ray
train`). Inside the train loop the validation split is scored every `eval_every_steps` steps
(validation.py); a Train callback forwards those reports to the trial, so ASHA sees val_accuracy
at each rung and stops the trials that fall behind, whose Train runs then end at the next step
(stopping.py). One Train run per trial keeps the LR schedule of a real run (a trial cut into
resumed chunks would restart its cosine schedule at each chunk) and pays the worker start-up once.

Outputs in <run_dir>/sweep/: trials.json (every trial: params, val_accuracy, steps, stopped early),
best_config.yaml (the run config with the best method/r/alpha/lr, for `med42-ray train --config`),
best_adapter/ (the best trial's exported adapter), trials/<trial id>/ (each trial's train
outputs), tune/ (Tune's and Train's storage, unless train.storage_path is set).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from med42_ray.errors import ConfigError
from med42_ray.layout import (EXPORT_ADAPTER, SweepDir, layout_for, storage_path_for, sweep_dir_for,
                              train_data_dir_for)
from med42_ray.paths import resolve_path
from med42_ray.sweep.validation import Validation
from med42_ray.train.config import TrainConfig
from med42_ray.train.trackers import tune_callbacks

if TYPE_CHECKING:  # annotations only: a stage never imports the config composition at run time
    from med42_ray.config import RunConfig

log = logging.getLogger(__name__)

METRIC, MODE, TIME_ATTR = "val_accuracy", "max", "step"


@dataclass
class SweepResult:
    output_dir: Path
    trials: list[dict]
    best: dict
    best_config_path: Path
    best_adapter: Path


def load_validation(cfg: RunConfig) -> Validation:
    """The validation questions, prompted as `evaluate` would (its protocol and limits)."""
    from med42_ray.benchmarks import load_benchmarks

    s = cfg.sweep
    root = resolve_path(s.benchmarks_dir or cfg.evaluate.benchmarks_dir)
    loaded = load_benchmarks(root, [s.benchmark]) if root.is_dir() else {}
    if s.benchmark not in loaded:
        from med42_ray.benchmarks import BENCHMARKS, VALIDATION_BENCHMARKS

        spec = {**BENCHMARKS, **VALIDATION_BENCHMARKS}[s.benchmark]
        raise ConfigError(f"validation benchmark {s.benchmark!r} not found under {root}: missing "
                          f"{', '.join(spec.missing(root)) or 'its files'} (set sweep.benchmarks_dir)")
    items = [it for it in loaded[s.benchmark] if not it.needs_image][: s.limit]
    if not items:
        raise ConfigError(f"validation benchmark {s.benchmark!r} under {root} has no text-only question")
    e = cfg.evaluate
    return Validation.build(items, e.protocol, s.eval_every_steps, cfg.model, e.max_batch_tokens, e.max_length,
                            cfg.prepare.system_prompt)


def trial_base_config(cfg: RunConfig, sweep_dir: SweepDir, cluster_cpus: float) -> RunConfig:
    """The run config every trial starts from: the lora strategy, absolute paths (a Tune trial runs in its own
    working directory), the sweep's step budget, and CPU sizing that leaves room for the trial."""
    base = cfg.model_copy(deep=True)
    t = base.train
    t.strategy = "lora"
    t.export = False  # Tune ends a trial at its last report; only the best is exported, afterwards
    t.data_dir = str(train_data_dir_for(cfg).root)
    t.storage_path = storage_path_for(cfg) if cfg.train.storage_path else str(sweep_dir.tune)
    if cfg.sweep.max_steps is not None:
        t.max_steps = cfg.sweep.max_steps
    base.run_dir = str(layout_for(cfg).root)
    if Path(cfg.model).expanduser().exists():  # a local directory, maybe relative
        base.model = str(Path(cfg.model).expanduser().resolve())
    if not t.scaling.use_gpu and t.scaling.cpus_per_worker is None:
        from med42_ray.train.trainer import cpus_per_worker

        # As `train` sizes workers, less the CPU the trial (this Train run's driver) holds itself.
        t.scaling.cpus_per_worker = cpus_per_worker(t, cluster_cpus, reserved_cpus=cfg.sweep.trial_cpus)
    return base


def total_steps(cfg: RunConfig) -> int:
    """Optimizer steps of one full trial: the ASHA horizon (max_t)."""
    from med42_ray.train.trainer import count_rows, plan_job, read_manifest

    manifest, shards = read_manifest(train_data_dir_for(cfg))
    return plan_job(cfg, manifest, count_rows(shards)).total_steps


def apply_params(base: RunConfig, params: dict) -> RunConfig:
    """A trial's config: its method, its r and alpha in that method's section (none for IA3), its lr."""
    cfg = base.model_copy(deep=True)
    cfg.train.peft.method = params["method"]
    ranks = cfg.train.rank_settings()
    if ranks is not None:
        ranks.r = int(params["r"])
        ranks.alpha = int(params["alpha"])
    cfg.train.lr = float(params["lr"])
    return cfg


def check_methods(base: RunConfig) -> None:
    """Fail before any trial starts when one of sweep.space.methods cannot train with the trials'
    settings (LoHa and LoKr refuse ZeRO-3)."""
    from pydantic import ValidationError

    for method in base.sweep.space.methods:
        tree = base.train.model_dump()
        tree["peft"]["method"] = method
        try:
            TrainConfig.model_validate(tree)
        except ValidationError as e:
            raise ConfigError(f"sweep.space.methods: {method}: {e.errors()[0]['msg']}") from None


def trial_params(config: dict) -> dict:
    """What a trial trained with, from its Tune config: r and alpha are None where the method has none."""
    ranked = TrainConfig(strategy="lora", peft={"method": config["method"]}).rank_settings() is not None
    return {"method": config["method"], "r": int(config["r"]) if ranked else None,
            "alpha": int(config["alpha"]) if ranked else None, "lr": float(config["lr"])}


def run_trial(params: dict, base: RunConfig, validation: Validation, registry, relay, sweep_dir: SweepDir,
              name: str) -> None:
    """One Tune trial: a Ray Train run of this trial's adapter method and r/alpha/lr (runs in the trial actor),
    whose validation reports reach Tune through the sweep's relay (reports.py)."""
    from ray import tune

    from med42_ray.sweep.reports import forward_reports, relay_reports
    from med42_ray.train.trainer import run_train

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_params(base, params)
    cfg.train.output_dir = str(sweep_dir.trial(trial_id).root)
    cfg.train.run_name = f"{name}-{trial_id}"
    cfg.train.report_to = []  # Tune's logger callbacks log each trial (trackers.tune_callbacks)
    relay_reports(relay, trial_id, lambda: run_train(
        cfg, callbacks=[forward_reports(relay, trial_id)],
        validate=replace(validation, stop_registry=registry, trial_id=trial_id)))


def run_sweep(cfg: RunConfig) -> SweepResult:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from med42_ray.cluster import connect
    from med42_ray.model import resolve_model
    from med42_ray.sweep.reports import create_relay
    from med42_ray.sweep.stopping import RegisterStops, create_registry, graceful_trainable

    s = cfg.sweep
    sweep_dir = sweep_dir_for(cfg)
    validation = load_validation(cfg)
    resolve_model(cfg.model)  # fail fast, and build the tiny model once before the trials start
    connect(cfg.ray)
    resources = ray.cluster_resources()
    base = trial_base_config(cfg, sweep_dir, resources.get("CPU", 0))
    check_methods(base)
    horizon = total_steps(base)
    grace = min(s.grace_period or s.eval_every_steps, horizon)
    concurrent = s.max_concurrent_trials or _default_concurrency(base, resources)
    seed = cfg.seed if s.seed is None else s.seed
    space = {"method": tune.choice(s.space.methods), "r": tune.choice(s.space.r), "alpha": tune.choice(s.space.alpha),
             "lr": tune.loguniform(s.space.lr_min, s.space.lr_max) if s.space.lr_min < s.space.lr_max
             else s.space.lr_min}
    print(f"sweep: {s.num_samples} adapter trials ({', '.join(s.space.methods)}) of {horizon} steps, {concurrent} at a time; validation "
          f"{s.benchmark} ({len(validation.items)} questions) every {s.eval_every_steps} steps; ASHA grace "
          f"{grace} steps, reduction factor {s.reduction_factor:g}", flush=True)

    sweep_dir.root.mkdir(parents=True, exist_ok=True)
    registry, relay = create_registry(), create_relay()
    trainable = tune.with_resources(
        graceful_trainable(tune.with_parameters(run_trial, base=base, validation=validation, registry=registry,
                                                relay=relay, sweep_dir=sweep_dir, name=s.name), registry),
        {"cpu": s.trial_cpus})
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=s.num_samples,
            scheduler=ASHAScheduler(time_attr=TIME_ATTR, max_t=horizon, grace_period=grace,
                                    reduction_factor=s.reduction_factor),
            # The generator limits concurrency itself: Tune ignores TuneConfig.max_concurrent_trials
            # when given a generator, and two CPU trials at once would starve each other's data reads.
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=concurrent),
        ),
        run_config=tune.RunConfig(name=s.name, storage_path=base.train.storage_path, verbose=1,
                                  callbacks=[RegisterStops(registry), *tune_callbacks(cfg, sweep_dir.tune)]),
    )
    grid = tuner.fit()

    trials = [_trial_record(r, horizon, sweep_dir) for r in grid]
    trials.sort(key=lambda t: t["trial_id"])
    best = pick_best(trials)
    best["adapter"] = str(_export_trial(base, best, s.name, sweep_dir))
    sweep_dir.trials_json.write_text(json.dumps({
        "metric": METRIC, "mode": MODE, "benchmark": s.benchmark, "questions": len(validation.items),
        "protocol": cfg.evaluate.protocol, "max_steps": horizon, "seed": seed,
        "scheduler": {"name": "ASHA", "time_attr": TIME_ATTR, "max_t": horizon, "grace_period": grace,
                      "reduction_factor": s.reduction_factor},
        "space": s.space.model_dump(), "best": best["trial_id"], "trials": trials}, indent=1) + "\n")

    best_cfg = apply_params(cfg, best["params"])
    best_cfg.train.strategy = "lora"
    best_config_path = sweep_dir.best_config
    best_config_path.write_text(
        f"# med42-ray sweep: best of {len(trials)} trials, trial {best['trial_id']} "
        f"({METRIC} {best['val_accuracy']:.4f} on {s.benchmark})\n"
        + yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    best_adapter = sweep_dir.best_adapter
    shutil.rmtree(best_adapter, ignore_errors=True)
    shutil.copytree(best["adapter"], best_adapter)
    print(format_table(trials, best["trial_id"]), flush=True)
    print(f"best: trial {best['trial_id']} {best['params']['method']} r={best['params']['r']} "
          f"alpha={best['params']['alpha']} "
          f"lr={best['params']['lr']:.3g} {METRIC}={best['val_accuracy']:.4f}\n"
          f"wrote {best_config_path}, {best_adapter}, {sweep_dir.trials_json}", flush=True)
    return SweepResult(sweep_dir.root, trials, best, best_config_path, best_adapter)


def _export_trial(base: RunConfig, trial: dict, name: str, sweep_dir: SweepDir) -> Path:
    """Export a completed trial's adapter (and merged model) from its last checkpoint."""
    from med42_ray.train.trainer import export_finished_run

    cfg = apply_params(base, trial["params"])
    cfg.train.output_dir = trial["output_dir"]
    cfg.train.run_name = f"{name}-{trial['trial_id']}"
    return export_finished_run(cfg)[EXPORT_ADAPTER]


def _default_concurrency(base: RunConfig, resources: dict) -> int:
    """Trials whose Train runs fit the cluster at once: by GPUs, else one (a CPU trial takes every
    core it can get, and two would only slow each other down)."""
    if base.train.scaling.use_gpu:
        return max(1, int(resources.get("GPU", 0) // base.train.scaling.num_workers))
    return 1


def _trial_record(result, horizon: int, sweep_dir: SweepDir) -> dict:
    # Tune adds trial_id to every result; a trial that failed before its first report has none
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    by_step = {}  # a step reported twice (a worker failed, the run resumed): keep the last
    df = result.metrics_dataframe
    if df is not None and METRIC in df:
        for st, acc, gp in zip(df[TIME_ATTR], df[METRIC], df["val_gold_prob"]):
            by_step[int(st)] = {"step": int(st), METRIC: float(acc), "val_gold_prob": float(gp)}
    history = [by_step[k] for k in sorted(by_step)]
    last = history[-1] if history else {}
    out_dir = sweep_dir.trial(trial_id)
    steps = last.get("step", 0)
    status = "error" if result.error else ("completed" if steps >= horizon else "stopped")
    return {
        "trial_id": trial_id,
        "params": trial_params(result.config),
        METRIC: last.get(METRIC),
        "best_" + METRIC: max((h[METRIC] for h in history), default=None),
        "val_gold_prob": last.get("val_gold_prob"),
        "steps": steps,
        "stopped_early": status == "stopped",
        "status": status,
        "error": str(result.error) if result.error else None,
        "history": history,
        "output_dir": str(out_dir.root),
        "adapter": None,  # the best trial's, once exported (run_sweep)
    }


def pick_best(trials: list[dict]) -> dict:
    """The completed trial with the highest final val_accuracy; ties go to the higher probability
    on the gold answers. Stopped trials only reached an earlier rung."""
    done = [t for t in trials if t["status"] == "completed"]
    if not done:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])
        raise RuntimeError(f"no sweep trial completed{': ' + errors if errors else ''}")
    return max(done, key=lambda t: (t[METRIC], t["val_gold_prob"]))


def format_table(trials: list[dict], best_id: str) -> str:
    head = (f"{'trial':<14} {'method':<6} {'r':>3} {'alpha':>5} {'lr':>9} {'steps':>5} {'val_acc':>7} "
            f"{'gold_p':>6}  status")
    lines = [head, "-" * len(head)]
    for t in trials:
        p = t["params"]
        acc = f"{t[METRIC]:.4f}" if t[METRIC] is not None else "-"
        gp = f"{t['val_gold_prob']:.3f}" if t["val_gold_prob"] is not None else "-"
        mark = "  <- best" if t["trial_id"] == best_id else ""
        lines.append(f"{t['trial_id']:<14} {p['method']:<6} {_shown(p['r']):>3} {_shown(p['alpha']):>5} "
                     f"{p['lr']:>9.3g} {t['steps']:>5} "
                     f"{acc:>7} {gp:>6}  {t['status']}{mark}")
    return "\n".join(lines)


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)
