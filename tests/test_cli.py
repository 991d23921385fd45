"""Every option of every sub-command sets the config value it claims, typed as parsed (lists are
lists, switches are True), and a bad value is an error that names the option."""

from __future__ import annotations

import pytest

from med42_ray.cli import build_parser, load_from_args, main
from med42_ray.config import load_config
from med42_ray.errors import ConfigError

# option -> (its argument, or None for a switch; {config key: the value it must set})
COMMON = {
    "--run-dir": ("2024", {"run_dir": "2024"}),  # a string, though YAML would read a number
    "--model": ("some-org/some-model", {"model": "some-org/some-model"}),
    "--ray-address": ("auto", {"ray.address": "auto"}),
    "--num-cpus": ("3", {"ray.num_cpus": 3}),
}
TRAIN_STRATEGY = {"--strategy": ("lora", {"train.strategy": "lora"})}
LIMIT = {"--limit": ("5", {"evaluate.limit": 5})}
BENCHMARKS_DIR = {"--benchmarks-dir": ("bench/root", {"prepare.benchmarks_dir": "bench/root",
                                                      "evaluate.benchmarks_dir": "bench/root"})}
OWN = {
    "prepare": {},
    "train": {
        **TRAIN_STRATEGY,
        "--num-workers": ("3", {"train.scaling.num_workers": 3}),
        "--use-gpu": (None, {"train.scaling.use_gpu": True}),
        "--max-steps": ("7", {"train.max_steps": 7}),
        "--data-dir": ("prepared/here", {"train.data_dir": "prepared/here"}),
    },
    "plan": TRAIN_STRATEGY,
    "evaluate": {
        "--benchmarks-dir": ("bench/root", {"evaluate.benchmarks_dir": "bench/root"}),
        "--benchmarks": ("medqa_4options, pubmedqa", {"evaluate.benchmarks": ["medqa_4options", "pubmedqa"]}),
        "--protocol": ("med42_chat", {"evaluate.protocol": "med42_chat"}),
        "--also-protocols": ("harness, med42_chat", {"evaluate.also_protocols": ["harness", "med42_chat"]}),
        "--num-actors": ("3", {"evaluate.num_actors": 3}),
        **LIMIT,
        "--output-dir": ("eval/here", {"evaluate.output_dir": "eval/here"}),
        "--num-fewshot": ("3", {"evaluate.num_fewshot": 3}),
        "--permutations": ("2", {"evaluate.permutations": 2}),
        "--max-new-tokens": ("64", {"evaluate.max_new_tokens": 64}),
    },
    "sweep": {
        "--num-samples": ("6", {"sweep.num_samples": 6}),
        "--max-steps": ("7", {"sweep.max_steps": 7}),
        "--eval-every": ("3", {"sweep.eval_every_steps": 3}),
        "--max-concurrent": ("2", {"sweep.max_concurrent_trials": 2}),
        "--num-workers": ("3", {"train.scaling.num_workers": 3}),
        "--data-dir": ("prepared/here", {"train.data_dir": "prepared/here"}),
    },
    "report": {},
    "pipeline": {**LIMIT, **BENCHMARKS_DIR, "--strategies": ("lora", {"pipeline.strategies": ["lora"]})},
    "demo": {**LIMIT, **BENCHMARKS_DIR, "--seed": ("7", {"seed": 7})},
}
CASES = [(cmd, flag) for cmd, own in OWN.items() for flag in [*COMMON, *own]]


def config_value(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", sorted(OWN))
def test_the_table_names_every_config_option_and_none_is_applied_unless_given(command):
    args = parse(command)
    assert {flag for flag, _ in args.config_flags.values()} == {*COMMON, *OWN[command]}
    assert load_from_args(args) == load_config(None)


@pytest.mark.parametrize(("command", "flag"), CASES)
def test_each_option_sets_the_config_values_it_claims(command, flag):
    argument, expected = {**COMMON, **OWN[command]}[flag]
    cfg = load_from_args(parse(command, flag, *([] if argument is None else [argument])))
    assert {key: config_value(cfg, key) for key in expected} == expected
    untouched = load_config(None)
    assert all(config_value(untouched, key) != value for key, value in expected.items())  # a real change


def test_lists_come_through_as_lists():
    cfg = load_from_args(parse("pipeline", "--strategies", "lora,full"))
    assert cfg.pipeline.strategies == ["lora", "full"]
    cfg = load_from_args(parse("evaluate", "--benchmarks", "pubmedqa"))
    assert cfg.evaluate.benchmarks == ["pubmedqa"]
    assert load_from_args(parse("evaluate", "--benchmarks", "")).evaluate.benchmarks is None  # the config's own


def test_options_win_over_set_overrides():
    cfg = load_from_args(parse("train", "-o", "train.max_steps=3", "--max-steps", "7", "-o", "seed=5"))
    assert (cfg.train.max_steps, cfg.seed) == (7, 5)


def test_a_bad_value_names_the_option(capsys):
    with pytest.raises(ConfigError, match=r"train\.scaling\.num_workers: .*\(got 0, from flag --num-workers\)"):
        load_from_args(parse("sweep", "--num-workers", "0"))
    with pytest.raises(ConfigError, match=r"evaluate\.benchmarks: .*unknown benchmark\(s\) nope.*--benchmarks"):
        load_from_args(parse("evaluate", "--benchmarks", "medqa_4options,nope"))
    with pytest.raises(ConfigError, match=r"pipeline\.strategies\.0: .*from flag --strategies"):
        load_from_args(parse("pipeline", "--strategies", "qlora"))
    assert main(["train", "--num-workers", "0"]) == 2
    assert "from flag --num-workers" in capsys.readouterr().err


def test_demo_full_budget_trains_the_papers_epochs_in_its_own_run_dir():
    from med42_ray.pipeline.cli import demo_config
    from med42_ray.pipeline.config import merged_train_config

    capped, full_budget = demo_config(parse("demo")), demo_config(parse("demo", "--full-budget"))
    assert (capped.run_dir, full_budget.run_dir) == ("runs/demo", "runs/demo-full-budget")
    for strategy, epochs in (("full", 3), ("lora", 8)):
        capped_train = merged_train_config(capped.train, getattr(capped.pipeline, strategy), strategy=strategy)
        train = merged_train_config(full_budget.train, getattr(full_budget.pipeline, strategy), strategy=strategy)
        assert capped_train.max_steps is not None  # the demo caps its runs
        assert (train.max_steps, train.resolved_epochs()) == (None, epochs)
        assert train.model_copy(update={"max_steps": capped_train.max_steps}) == capped_train  # nothing else
    assert demo_config(parse("demo", "--full-budget", "--run-dir", "x")).run_dir == "x"
