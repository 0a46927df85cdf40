"""TrainConfig is the single source of `pssnet train`'s flags; presets; TrainState's checkpoint content."""

import argparse

import pytest
import torch

from pssnet.cli import train_cmd
from pssnet.cli.dataclass_args import flags_of
from pssnet.errors import UserError
from pssnet.training import PRESETS, TrainConfig, apply_preset
from pssnet.training.config import update_config
from pssnet.options import declared_options

# The flags `pssnet train` had before they were generated; every one must still exist.
FLAGS_BEFORE = {
    "--preset", "--arch", "--data", "--constraint", "--lut", "--sampler", "--small-input", "--resolutions",
    "--out", "--resume", "--epochs", "--batch-size", "--max-iters", "--seed", "--holdout", "--device", "--amp",
    "--channels-last", "--num-workers", "--threads", "--log-every", "--no-progress", "--checkpoint-minutes",
    "--checkpoint-iters", "--keep-checkpoints", "--lr", "--momentum", "--no-nesterov", "--weight-decay",
    "--label-smoothing", "--warmup-epochs", "--pool-size", "--ema", "--p-range", "--t-range", "--map-samples",
    "--map-cache",
}
# Flags added since (issue 10): each is one TrainConfig field.
FLAGS_ADDED = {"--image-size", "--dropout", "--init", "--decode-on-device"}


def _parser():
    parser = argparse.ArgumentParser(prog="pssnet")
    train_cmd.register(parser.add_subparsers())
    return parser


def _config(*argv):
    # --resume: build_config then skips the checks that read --lut files.
    return train_cmd.build_config(_parser().parse_args(["train", "--out", "o", "--resume", *argv]))


def test_every_field_has_help_and_a_flag_or_says_it_has_none():
    for opt in declared_options(TrainConfig):
        assert opt.meta.get("help"), opt.path
        assert "flag" in opt.meta or opt.flag == "--" + opt.path[-1].replace("_", "-"), opt.path
    no_flag = {opt.path for opt in declared_options(TrainConfig) if opt.flag is None}
    assert no_flag == {("width_range",), ("batch_is_global",), ("dist_timeout_minutes",), ("recipe", "lr_per_1024")}


def test_every_flag_of_before_exists_and_each_has_help():
    parser = _parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {s: a for a in train._actions for s in a.option_strings}
    assert FLAGS_BEFORE <= set(actions)
    assert {"--no-amp", "--no-channels-last", "--no-small-input"} <= set(actions)
    assert all(actions[f].help for f in FLAGS_BEFORE)


# flag values -> (field path, value); each differs from both the default and the mini-mbv2 preset.
ROUND_TRIP = [
    (["--arch", "resnet50"], ("arch",), "resnet50"),
    (["--data", "cifar10:/d"], ("data",), "cifar10:/d"),
    (["--constraint", "flops:1:2:1", "--constraint", "params:1:2:1"], ("constraints",),
     ["flops:1:2:1", "params:1:2:1"]),
    (["--lut", "a.json", "--lut", "b.json"], ("luts",), ["a.json", "b.json"]),
    (["--sampler", "uniform"], ("sampler", "name"), "uniform"),
    (["--no-small-input"], ("small_input",), False),
    (["--resolutions", "16:24:8"], ("resolutions",), [16, 24, 8]),
    (["--epochs", "7"], ("epochs",), 7),
    (["--batch-size", "9"], ("batch_size",), 9),
    (["--batch-size", "9"], ("batch_is_global",), False),  # a preset's batch is global, an explicit one per process
    (["--max-iters", "11"], ("max_iters",), 11),
    (["--seed", "4"], ("seed",), 4),
    (["--holdout", "0"], ("holdout",), 0),
    (["--device", "cpu"], ("device",), "cpu"),
    (["--amp"], ("amp",), True),
    (["--channels-last"], ("channels_last",), True),
    (["--num-workers", "2"], ("num_workers",), 2),
    (["--threads", "3"], ("threads",), 3),
    (["--log-every", "5"], ("log_every",), 5),
    (["--no-progress"], ("progress",), False),
    (["--checkpoint-minutes", "2.5"], ("checkpoint", "every_minutes"), 2.5),
    (["--checkpoint-iters", "6"], ("checkpoint", "every_iters"), 6),
    (["--keep-checkpoints", "1"], ("checkpoint", "keep"), 1),
    (["--lr", "0.7"], ("recipe", "lr"), 0.7),
    (["--momentum", "0.5"], ("recipe", "momentum"), 0.5),
    (["--no-nesterov"], ("recipe", "nesterov"), False),
    (["--weight-decay", "0.001"], ("recipe", "weight_decay"), 0.001),
    (["--label-smoothing", "0.1"], ("recipe", "label_smoothing"), 0.1),
    (["--warmup-epochs", "2"], ("recipe", "warmup_epochs"), 2.0),
    (["--pool-size", "8"], ("sampler", "pool_size"), 8),
    (["--ema", "0.5"], ("sampler", "ema"), 0.5),
    (["--p-range", "0.9:0.2"], ("sampler", "p0"), 0.9),
    (["--p-range", "0.9:0.2"], ("sampler", "p1"), 0.2),
    (["--t-range", "2:0.5"], ("sampler", "t0"), 2.0),
    (["--t-range", "2:0.5"], ("sampler", "t1"), 0.5),
    (["--map-samples", "123"], ("sampler", "map_samples"), 123),
    (["--map-cache", ""], ("sampler", "map_cache"), ""),
    (["--image-size", "48"], ("image_size",), 48),
    (["--dropout", "0.2"], ("dropout",), 0.2),
    (["--init", "w.pth"], ("init",), "w.pth"),
    (["--decode-on-device"], ("decode_on_device",), True),
]


def _get(config, path):
    for name in path:
        config = getattr(config, name)
    return config


@pytest.mark.parametrize("argv,path,value", ROUND_TRIP, ids=[" ".join(a) + f" {p[-1]}" for a, p, _ in ROUND_TRIP])
def test_flag_sets_its_field_over_the_preset_and_nothing_else(argv, path, value):
    before = _config("--preset", "mini-mbv2")
    config = _config("--preset", "mini-mbv2", *argv)
    assert _get(config, path) == value
    changed = {o.path for o in declared_options(TrainConfig) if _get(config, o.path) != _get(before, o.path)}
    assert changed == {p for a, p, _ in ROUND_TRIP if a == argv}


def test_flags_not_given_keep_the_preset_and_the_defaults():
    expected = TrainConfig(out="o")
    apply_preset(expected, "mini-mbv2")
    assert _config("--preset", "mini-mbv2") == expected
    assert _config() == TrainConfig(out="o")


def test_flag_table_covers_every_flag():
    assert {flag.name for flag in flags_of(TrainConfig)} == (FLAGS_BEFORE | FLAGS_ADDED) - {"--resume"}
    tried = {a[0].replace("--no-small-input", "--small-input") for a, _, _ in ROUND_TRIP}
    assert tried == (FLAGS_BEFORE | FLAGS_ADDED) - {"--resume", "--preset", "--out"}


@pytest.mark.parametrize("argv,message", [
    (["--resolutions", "16:24"], "bad --resolutions '16:24'; write MIN:MAX:STEP"),
    (["--p-range", "1"], "bad --p-range '1'; write P0:P1"),
    (["--t-range", "a:b"], "bad --t-range 'a:b'; write T0:T1"),
])
def test_malformed_compound_values_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        _config(*argv)


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--epochs", "-1"], "--epochs must be at least 1, got -1"),
    (["--log-every", "0"], "--log-every must be at least 1"),
    (["--pool-size", "0"], "--pool-size must be at least 1"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1"),
    (["--holdout", "-1"], "--holdout must be at least 0, got -1"),
    (["--max-iters", "0"], "--max-iters must be at least 1, got 0"),
])
def test_declared_bounds_are_checked_by_validate(argv, message):
    config = _config("--preset", "mini-mbv2", *argv)
    with pytest.raises(UserError, match=message):
        config.validate()


def test_every_preset_applies_and_validates():
    for name in PRESETS:
        config = TrainConfig(out="o", data="fashion-mnist-mini")
        apply_preset(config, name)
        assert config.preset == name and config.validate() is config
    with pytest.raises(UserError, match="unknown setting 'epoch'"):
        update_config(TrainConfig(), {"epoch": 3})


def test_demo_preset_is_the_demo_set_up():
    config = TrainConfig(out="o")
    apply_preset(config, "demo")
    assert (config.arch, config.data, config.constraints, config.resolutions) == \
        ("mobilenet_v2", "fashion-mnist-mini", ["flops:10:20:2.5"], [20, 28, 4])
    assert (config.batch_size, config.max_iters, config.recipe.lr, config.sampler.map_samples) == \
        (32, 281, 0.02, 200_000)


def test_config_round_trips_through_its_dict():
    config = _config("--preset", "mini-mbv2", "--p-range", "0.9:0.2", "--resolutions", "16:24:8")
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({**config.to_dict(), "from_a_newer_version": 1}) == config


def test_train_state_holds_what_a_checkpoint_holds():
    from pssnet.sampling import make_sampler
    from pssnet.supernet import create_supernet
    from pssnet.training.state import TrainState

    net = create_supernet("mobilenet_v2", 10, 1, True, (16, 24, 8))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    sampler = make_sampler("uniform", net.space, seed=0)
    state = TrainState(TrainConfig(out="o"), net, optimizer, scheduler, None, sampler, [], {}, {}, None)
    state.advance(net.space.largest())
    saved = state.state_dict()
    assert set(saved) == {"iteration", "config", "model_config", "state_dict", "optimizer", "scheduler", "scaler",
                          "sampler", "rng", "constraints", "luts", "maps", "sequence", "holdout"}
    other = TrainState(TrainConfig(out="o"), create_supernet("mobilenet_v2", 10, 1, True, (16, 24, 8)),
                       optimizer, scheduler, None, make_sampler("uniform", net.space, seed=0), [], {}, {}, None)
    other.load_state_dict(saved)
    assert other.iteration == 1 and other.sequence == state.sequence and len(other.sequence) == 32
    assert all(torch.equal(v, other.net.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_presets_batch_is_global_and_an_explicit_one_per_process():
    config = _config("--preset", "mbv2-flops")
    assert config.batch_is_global and config.batch_size == 1024
    assert [config.process_batch(w) for w in (1, 2, 8)] == [1024, 512, 128]
    assert {config.global_batch(w) for w in (1, 2, 8)} == {1024}
    explicit = _config("--preset", "mbv2-flops", "--batch-size", "64")
    assert not explicit.batch_is_global
    assert (explicit.process_batch(8), explicit.global_batch(8)) == (64, 512)
    assert not TrainConfig().batch_is_global  # the API's default: per process, as before


def test_a_global_batch_that_does_not_split_names_the_nearest_that_do():
    config = _config("--preset", "mbv2-flops")
    with pytest.raises(UserError) as info:
        config.process_batch(3)
    message = str(info.value)
    assert "preset mbv2-flops's global batch 1024 does not split evenly over 3 processes" in message
    assert "1023 (--batch-size 341 per process) or 1026 (--batch-size 342 per process)" in message
    assert "\n" not in message
    config.batch_size = 2
    with pytest.raises(UserError, match=r"the nearest that does: 3 \(--batch-size 1 per process\)"):
        config.process_batch(3)


def test_run_summary_says_the_batches_and_the_grid():
    from pssnet.constraints import Constraint
    from pssnet.training.config import run_summary

    config = _config("--preset", "mbv2-flops")
    line = run_summary(config, 8, 0.3, [Constraint.parse("flops:80:290:10")])
    assert line == ("training mobilenet_v2 (preset mbv2-flops) with pss: batch 128 per process x 8 processes = "
                    "global batch 1024, lr 0.3; flops:80:290:10 (22 targets)")
