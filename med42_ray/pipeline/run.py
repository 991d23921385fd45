"""`med42-ray pipeline`: the paper's comparison as one resumable program.

    prepare ─► [pretrain_prepare ─► pretrain] ─► evaluate_base ─► train_full ─► train_lora
            ─► evaluate_full ─► evaluate_lora ─► report

(one train_<run> and evaluate_<run> per entry of pipeline.strategies: full, lora, dora, ...)

Each stage is one call into the package (run_prepare, run_train, run_evaluate, build_report) on a
config derived from the run config, and writes a marker when it finishes (markers.py). Rerunning
the same run dir, by hand or by resubmitting the job, skips finished stages; an unfinished
training stage resumes from its last Ray Train checkpoint, because its storage path and run
name are the same on every attempt.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from med42_ray.errors import ConfigError
from med42_ray.layout import EXPORT_ADAPTER, EXPORT_MODEL, export_names, layout_for, prepared_dir_for
from med42_ray.pipeline.config import merged_eval_config, merged_train_config, pipeline_train_config
from med42_ray.pipeline.markers import StageMarkers, fingerprint
from med42_ray.train.run_record import train_inputs
from med42_ray.upload import upload_outputs

if TYPE_CHECKING:  # annotations only: a stage never imports the config composition at run time
    from med42_ray.config import RunConfig

log = logging.getLogger(__name__)

# Settings that change how a stage runs, not what it computes: a resubmission on a different
# cluster shape must still find its finished stages. Training's are train/run_record.py's (one home:
# a standalone `train` checks its checkpoints' configuration on the same keys).
OPERATIONAL_EVAL_KEYS = {"num_actors", "cpus_per_actor", "gpus_per_actor", "progress", "questions_per_task",
                         "max_batch_tokens", "max_task_retries", "output_dir", "models", "compare_with", "cost_questions"}


@dataclass
class Stage:
    name: str
    inputs: Any                      # what the stage computes from; part of its fingerprint
    run: Callable[[], dict]          # does the work; returns what the marker records
    upstream: list[str] = field(default_factory=list)
    output: Path | None = None       # the directory it writes (uploaded to upload_to when it finishes)


class Pipeline:
    def __init__(self, cfg: RunConfig):
        self.layout = layout_for(cfg)  # absolute: every derived config names the same directory
        # Every stage sees `pipeline.train` / `pipeline.evaluate` applied, as if they were `train:` / `evaluate:`.
        self.cfg = cfg.model_copy(update={
            "run_dir": str(self.layout.root),
            "train": merged_train_config(cfg.train, cfg.pipeline.train),
            "evaluate": merged_eval_config(cfg.evaluate, cfg.pipeline.evaluate)}, deep=True)
        self.markers = StageMarkers(self.layout.stages)
        self.outputs: dict[str, dict] = {}
        self._refuse_shared_resume_path()

    def _refuse_shared_resume_path(self) -> None:
        """A checkpoint in `train.resume` (or pipeline.train's) would seed every training stage,
        full and adapters alike, from one run's checkpoint: only pipeline.<run>.resume may name one."""
        from med42_ray.train.run_record import AUTO, NEVER

        resume = self.cfg.train.resume
        if resume not in (AUTO, NEVER):
            runs = ", ".join(f"pipeline.{s}.resume" for s in self.cfg.pipeline.strategies)
            raise ConfigError(f"train.resume (or pipeline.train.resume) = {resume!r}: in the pipeline a checkpoint "
                              f"there would seed every training stage; name it for one run instead ({runs})")

    # ---- the stages -------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        cfg, p = self.cfg, self.cfg.pipeline
        prepared = prepared_dir_for(cfg).root
        stages = [Stage("prepare", {"prepare": self._prepare_inputs(cfg.prepare), "model": cfg.model,
                                    "seed": cfg.seed},
                        lambda: self._prepare(cfg.prepare.model_copy(update={"output_dir": str(prepared)})),
                        output=prepared)]
        base, base_stage = cfg.model, []
        if p.pretrain is not None:
            pre_prepare = cfg.prepare.model_copy(update={
                "sources": [s for s in cfg.prepare.sources if s.domain == p.pretrain.domain],
                "output_dir": str(self.layout.pretrain_prepared.root)})
            if not pre_prepare.sources:
                raise ConfigError(f"pipeline.pretrain: no source has domain {p.pretrain.domain!r}")
            stages.append(Stage("pretrain_prepare",
                                {"prepare": self._prepare_inputs(pre_prepare), "model": cfg.model},
                                lambda: self._prepare(pre_prepare), output=self.layout.pretrain_prepared.root))
            pre_train = merged_train_config(
                cfg.train, p.pretrain.train, strategy="full", export=True, run_name=f"{cfg.train.run_name}_pretrain",
                data_dir=str(self.layout.pretrain_prepared.root), output_dir=str(self.layout.pretrain_train.root))
            stages.append(Stage("pretrain", self._train_inputs(pre_train, cfg.model),
                                lambda: self._train("pretrain", cfg.model, pre_train), ["pretrain_prepare"],
                                self.layout.pretrain_train.root))
            base, base_stage = str(self.layout.pretrain_train.export(EXPORT_MODEL)), ["pretrain"]

        if p.evaluate_base:
            stages.append(self._eval_stage("base", base, None, base_stage))
        trained = []
        for s in p.strategies:
            tcfg = pipeline_train_config(
                cfg.train, p, s, export=True, run_name=f"{cfg.train.run_name}_{s}",
                data_dir=str(prepared), output_dir=str(self.layout.train(s).root))
            stages.append(Stage(f"train_{s}", self._train_inputs(tcfg, base),
                                (lambda s=s, tcfg=tcfg: self._train(f"train_{s}", base, tcfg)),
                                ["prepare", *base_stage], self.layout.train(s).root))
            trained.append(s)
        for s in trained:
            out = self.layout.train(s)
            model, adapter = ((str(out.export(EXPORT_MODEL)), None) if s == "full"
                              else (base, str(out.export(EXPORT_ADAPTER))))
            stages.append(self._eval_stage(s, model, adapter, [f"train_{s}"]))
        evals = [st.name for st in stages if st.name.startswith("evaluate_")]
        stages.append(Stage("report", {}, self._report, evals + [f"train_{s}" for s in trained], self.layout.report))
        return stages

    def _eval_stage(self, label: str, model: str, adapter: str | None, upstream: list[str]) -> Stage:
        ecfg = self.cfg.evaluate
        inputs = {"evaluate": ecfg.model_dump(exclude=OPERATIONAL_EVAL_KEYS | {"also_protocols"}),
                  "model": model, "adapter": adapter}
        if ecfg.protocols[1:]:  # only then: a run dir evaluated before also_protocols existed keeps its markers
            inputs["evaluate"]["also_protocols"] = ecfg.protocols[1:]
        return Stage(f"evaluate_{label}", inputs, lambda: self._evaluate(label, model, adapter), upstream,
                     self.layout.eval(label).root)

    @staticmethod
    def _prepare_inputs(prepare) -> dict:
        return prepare.model_dump(exclude={"output_dir"})

    @staticmethod
    def _train_inputs(tcfg, model: str) -> dict:
        return train_inputs(tcfg, model)

    # ---- what each stage does ---------------------------------------------------------------

    def _prepare(self, prepare) -> dict:
        from med42_ray.data.pipeline import run_prepare

        manifest = run_prepare(self.cfg.model_copy(update={"prepare": prepare}))
        return {"output_dir": prepare.output_dir, "sequences": manifest["sequences"], "tokens": manifest["tokens"]}

    def _train(self, stage: str, model: str, tcfg) -> dict:
        from med42_ray.train.faults import KillWorkerOnce
        from med42_ray.train.trainer import run_train

        kill = self.cfg.pipeline.kill_worker
        hook = None
        if kill is not None and kill.stage == stage:
            hook = KillWorkerOnce(step=kill.step, rank=kill.rank,
                                  marker=str(self.layout.stages / f"{stage}.worker_killed"))
            self.markers.dir.mkdir(parents=True, exist_ok=True)
        result = run_train(self.cfg.model_copy(update={"model": model, "train": tcfg}), step_hook=hook)
        last = result.metrics[-1] if result.metrics else {}
        missing = [n for n in export_names(tcfg.strategy, tcfg.export_merged) if n not in result.exported]
        if missing:
            raise RuntimeError(f"{stage}: training finished but did not export {', '.join(missing)} "
                               f"to {result.output_dir}")
        return {"output_dir": str(result.output_dir), "steps": last.get("step"), "final_loss": last.get("loss"),
                "checkpoint": result.checkpoint_path, **{k: str(v) for k, v in result.exported.items()}}

    def _evaluate(self, label: str, model: str, adapter: str | None) -> dict:
        from med42_ray.eval.config import EvalModel
        from med42_ray.eval.run import run_evaluate

        ecfg = self.cfg.evaluate.model_copy(update={
            "models": [EvalModel(name=label, path=model, adapter=adapter)],
            "output_dir": str(self.layout.eval(label).root), "compare_with": [],
            "progress": self.cfg.evaluate.progress and sys.stdout.isatty()})
        summary = run_evaluate(self.cfg.model_copy(update={"evaluate": ecfg}))
        if label in self.cfg.pipeline.strategies:  # each export of that run: its card shows the evaluation
            from med42_ray import model_card

            for name, path in self.layout.train(label).exported(label).items():
                if (path / model_card.FACTS_FILE).is_file():  # not an export trained before model cards
                    model_card.write_card(path, name, [self.layout.eval_root.root])
        accuracy = {b: m["acc"] for b, m in summary["models"][label]["benchmarks"].items()}
        out = self.layout.eval(label)
        also = {p: str(out.protocol(p).summary) for p in ecfg.protocols[1:]}
        return {"results": str(out.summary), "accuracy": accuracy, **({"also_results": also} if also else {})}

    def _report(self) -> dict:
        from med42_ray.report import build_report

        return {"report": str(build_report(self.layout.root, self.layout.report))}

    # ---- running ----------------------------------------------------------------------------

    def plan(self) -> list[tuple[Stage, str]]:
        """The stages in order, each with its fingerprint (its inputs and those of its upstream)."""
        fingerprints: dict[str, str] = {}
        planned = []
        for stage in self.stages():
            fp = fingerprint(stage.inputs, [fingerprints[u] for u in stage.upstream if u in fingerprints])
            fingerprints[stage.name] = fp
            planned.append((stage, fp))
        return planned

    def run(self) -> dict[str, dict]:
        planned = self.plan()
        print(f"pipeline {self.layout.root}: " + " -> ".join(s.name for s, _ in planned), flush=True)
        for stage, fp in planned:
            marker = self.markers.finished(stage.name, fp)
            if marker is not None:
                print(f"[pipeline] {stage.name}: already finished at {marker['finished_at']}, skipped", flush=True)
                self.outputs[stage.name] = marker["outputs"]
                continue
            print(f"[pipeline] {stage.name}: starting", flush=True)
            started = time.perf_counter()
            outputs = stage.run()
            seconds = time.perf_counter() - started
            self.markers.write(stage.name, fp, seconds, outputs)
            self.outputs[stage.name] = outputs
            # After the marker: what is uploaded is a finished stage, marker included.
            upload_outputs(self.cfg, *([stage.output] if stage.output else []), self.markers.dir)
            print(f"[pipeline] {stage.name}: finished in {seconds:.0f} s", flush=True)
        return self.outputs


def run_pipeline(cfg: RunConfig) -> dict[str, dict]:
    """Run (or resume) every stage of the pipeline for `cfg`; returns each stage's outputs."""
    from med42_ray.cluster import connect

    pipeline = Pipeline(cfg)
    connect(pipeline.cfg.ray)  # once, so the dashboard URL prints before the first stage
    return pipeline.run()
