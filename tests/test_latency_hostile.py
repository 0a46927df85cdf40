"""Hostile latency tables (issue 20, items 14 and 17): files too large, too deeply nested or with
numbers of thousands of digits; negative overheads and corrections that could predict a negative
latency; absurd or inverted spaces; and tables that do not cover the space of the run they are
given to. Each is one line (exit 2) at ``pssnet lut show`` and at ``pssnet train --lut``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pssnet.cli import main
from pssnet.errors import UserError
from pssnet.latency import FitSettings, LatencyTable, build_table, enumerate_configs
from pssnet.latency import table as table_module
from pssnet.latency.correction import fit_correction
from pssnet.latency.keys import layout_parts
from pssnet.schema import FieldError, number
from pssnet.supernet import Supernet
from pssnet.supernet_config import SupernetConfig
from pssnet.timing import MeasureSettings

# The space `pssnet train --arch mobilenet_v2 --data fashion-mnist-mini --resolutions 28:28:4` trains.
RUN = SupernetConfig("mobilenet_v2", num_classes=10, in_chans=1, small_input=True, resolutions=(28, 28, 4))
TRAIN = ["train", "--arch", "mobilenet_v2", "--data", "fashion-mnist-mini", "--resolutions", "28:28:4",
         "--constraint", "latency_cpu:auto:4", "--max-iters", "1", "--batch-size", "8", "--threads", "1",
         "--no-progress", "--map-samples", "2000"]


def synthetic_table(config: SupernetConfig = RUN, method: str = "exhaustive", seed: int = 0) -> dict:
    """The JSON form of a table with an entry for every block of ``config``'s space (no timing)."""
    rng = np.random.default_rng(seed)
    entries = {key: float(rng.uniform(0.05, 1.0)) for key in enumerate_configs(config.layout(), config.space())}
    table = LatencyTable(entries, {"type": "cpu", "cpu": "test cpu", "threads": 1}, config.to_dict(),
                         overhead_ms=0.2, method=method)
    return json.loads(json.dumps(table.to_dict()))


def write(tmp_path, data, name: str = "lut.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def one_line(capsys, command: str, printed: str | None = None) -> str:
    """The one error line the command printed (``printed``: what it must have printed on stdout)."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith(f"pssnet {command}: error: "), err
    assert printed is None or captured.out == printed
    return err


# ---------------------------------------------------------------- item 14: files that break the JSON reader


def test_a_deeply_nested_array_is_a_damaged_table(tmp_path):
    path = write(tmp_path, '{"format": "pssnet-lut/2", "device": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UserError, match=r"is a damaged latency table \(nested too deeply\): rebuild it") as info:
        LatencyTable.load(path)
    assert str(path) in str(info.value)
    # Shallow enough for the reader, but deeper than any table: refused before it reaches a printer or a hash.
    nested = json.loads("[" * 900 + "]" * 900)
    with pytest.raises(UserError, match="nested more than 16 levels deep"):
        LatencyTable.load(write(tmp_path, {**synthetic_table(), "settings": {"x": nested}}))


def test_integers_of_thousands_of_digits_are_a_damaged_table(tmp_path):
    text = json.dumps(synthetic_table()).replace('"batch": 1', '"batch": ' + "9" * 5000)
    with pytest.raises(UserError, match=r"damaged latency table \(Exceeds the limit \(4300 digits\)"):
        LatencyTable.load(write(tmp_path, text))
    # 400 digits parse, but overflow a float: not finite.
    text = json.dumps(synthetic_table()).replace('"overhead_ms": 0.2', '"overhead_ms": ' + "9" * 400)
    with pytest.raises(UserError, match="'overhead_ms' must be a finite number"):
        LatencyTable.load(write(tmp_path, text))
    with pytest.raises(FieldError, match="must be a finite number"):
        number(10**400, "x")


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    with open(path, "wb") as file:
        file.truncate(3 << 30)  # 3 GiB, sparse: nothing is written
    with pytest.raises(UserError, match=r"is 3,072 MiB, larger than 128 MiB, more than any latency table pssnet "
                                        "writes: it is no latency table"):
        LatencyTable.load(path)
    # A device or pipe has no size: at most the cap (and one byte) is read.
    monkeypatch.setattr(table_module, "MAX_TABLE_BYTES", 1000)
    with pytest.raises(UserError, match="/dev/zero holds more than 0 MiB"):
        LatencyTable.load("/dev/zero")


@pytest.mark.slow
def test_the_size_cap_is_far_above_the_largest_real_table():
    # The largest table a build writes: every block of ResNet-50's ImageNet space measured (half a
    # day), each entry a key and a full-precision float, as `indent=1` JSON writes it.
    config = SupernetConfig("resnet50", num_classes=1000)
    keys = enumerate_configs(config.layout(), config.space())
    size = sum(len(json.dumps({key: 0.12345678901234567}, indent=1)) for key in keys)
    assert len(keys) == 340_144 and 25e6 < size < table_module.MAX_TABLE_BYTES / 3


# ---------------------------------------------------------------- item 17: what a table must not hold


def _set(key: str, value):
    def change(data):
        data[key] = value
    return change


def _set_in(outer: str, key: str, value):
    def change(data):
        data[outer][key] = value
    return change


REFUSED = [
    ("negative-overhead", _set("overhead_ms", -0.5),
     r"has a negative overhead \(-0.5 ms\), with which a subnet could be predicted a negative latency: run the "
     "pssnet lut build command that built it again"),
    ("tiny-scale", _set_in("correction", "scale", 0.01), r"'correction.scale' must be >= 0.5, got 0.01"),
    ("negative-memory-price", _set_in("correction", "weight_ms_per_mb", -1.0),
     r"'correction.weight_ms_per_mb' must be >= 0"),
    ("inverted-width-range", _set("width_range", [1.0, 0.75]), r"bad width range \[1.0, 0.75\]; need 0 < min <= max"),
    ("width-range-beyond-8", _set("width_range", [0.75, 80.0]), r"'width_range\[1\]' must be in \(0, 8\], got 80"),
    ("absurd-resolutions", _set("resolutions", [24, 1e9, 4]), r"'resolutions\[1\]' must be at most 2048, got 1000000000"),
    ("inverted-resolutions", _set("resolutions", [32, 24, 4]), "bad resolution range 32:24:4"),
    ("absurd-in-chans", _set("in_chans", 100_000), "'in_chans' must be at most 64, got 100000"),
    ("absurd-num-classes", _set("num_classes", 10**9), "'num_classes' must be at most 100000"),
    ("unknown-arch", _set("arch", "vgg16"), "unknown architecture 'vgg16'"),
    ("ill-typed-build-record", _set("build", {"seconds": None, "rounds": [1]}), "'build.seconds' must be a number"),
    ("held-out-error-without-mape", _set_in("correction", "heldout", {"bias_pct": 1.0}),
     r"'correction.heldout.mape' is missing"),
]


@pytest.mark.parametrize("change, message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_the_reader_refuses_what_a_table_must_not_hold(change, message, tmp_path):
    data = synthetic_table()
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(UserError, match=message) as info:
        LatencyTable.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("change, message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_lut_show_refuses_it_in_one_line(change, message, tmp_path, capsys):
    data = synthetic_table()
    change(data)
    assert main(["lut", "show", str(write(tmp_path, data))]) == 2
    assert re.search(message, one_line(capsys, "lut", printed=""))


def test_timed_subnets_must_be_of_the_tables_space():
    # A resumed build refits the table on them: another space's subnets would fail deep inside it.
    data = synthetic_table()
    parts = len(layout_parts(RUN.layout()))
    subnet = {"resolution": 28, "widths": [1.0] * len(RUN.layout().base_channels)}
    good = {"subnet": subnet, "parts_ms": [0.1] * parts, "total_ms": 2.0}
    assert len(LatencyTable.from_dict({**data, "subnets": [good]}).timings) == 1
    outside = {**good, "subnet": {**subnet, "resolution": 2048}}
    with pytest.raises(UserError, match=r"'subnets\[0\].subnet' is outside the table's space \(resolution 2048"):
        LatencyTable.from_dict({**data, "subnets": [outside]})
    with pytest.raises(UserError, match=rf"'subnets\[0\].parts_ms' must have {parts} items"):
        LatencyTable.from_dict({**data, "subnets": [{**good, "parts_ms": [0.1]}]})


def test_an_entry_key_that_cannot_be_a_block_is_refused_when_the_table_is_used(tmp_path):
    data = synthetic_table()
    data["entries"]["conv|s70000|in1|out8|mid8|k3|st1|x"] = 1.0
    table = LatencyTable.load(write(tmp_path, data))  # keys are parsed at first use: lut show stays fast
    res, widths = RUN.space().sample_arrays(10, np.random.default_rng(0))
    with pytest.raises(UserError, match=r"damaged latency table \(field 'entries\['conv\|s70000"):
        table.predict_arrays(RUN.layout(), res, widths)


def _huge_entries(data):
    data["entries"] = {key: 1e308 for key in data["entries"]}


@pytest.mark.parametrize("change", [_set_in("correction", "scale", 1e308), _huge_entries],
                         ids=["huge-scale", "huge-entries"])
def test_absurdly_large_values_are_refused_where_they_overflow(change):
    # Finite, so the reader takes them; their sum is not, and no prediction may be infinite.
    data = synthetic_table()
    change(data)
    table = LatencyTable.from_dict(data, source="t.json")
    res, widths = RUN.space().sample_arrays(10, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning before the one line
        with pytest.raises(UserError, match=r"t.json is a damaged latency table \(it predicts an infinite latency"):
            table.predict_arrays(RUN.layout(), res, widths)
        with pytest.raises(UserError, match="predicts an infinite latency"):
            table.predict(RUN.layout(), RUN.space().smallest())


# ---------------------------------------------------------------- no table predicts a negative latency


def test_the_fitted_correction_never_has_a_negative_overhead():
    # Blocks timed alone that overcount (their own call overheads, a busy machine): the scale absorbs it.
    rng = np.random.default_rng(0)
    totals = rng.uniform(1.0, 4.0, 40)
    sums = 1.3 * totals + rng.normal(0, 0.01, 40)
    overhead, correction = fit_correction(sums, rng.uniform(1, 5, 40), rng.uniform(1, 5, 40), totals)
    assert overhead >= 0 and correction.form in ("scale", "memory")
    assert correction.scale == pytest.approx(1 / 1.3, rel=0.02) and correction.heldout["mape"] < 2
    # Too few subnets for a scale: the offset form, at 0 rather than below.
    for count in (1, 3):
        overhead, correction = fit_correction(sums[:count], sums[:count] * 0, sums[:count] * 0, totals[:count])
        assert overhead == 0.0 and correction.scale == 1.0


def test_an_older_table_with_a_negative_overhead_is_refitted_by_its_build_command(tmp_path, capsys):
    # Older builds wrote negative overheads. A run that trained with one still evaluates with it; the
    # file itself is refused until its build command runs again, which measures nothing and refits.
    net = Supernet(RUN)
    path = tmp_path / "old.json"
    settings = MeasureSettings(threads=1, warmup=0, repeats=1, rounds=1, min_sample_ms=0.0)
    table = build_table(net, settings, path, progress=False, plan=FitSettings(exhaustive=True, first_sample=4))
    data = json.loads(path.read_text())
    data.update(overhead_ms=-50.0, correction={"form": "offset", "scale": 1.0, "subnets": 4})
    path.write_text(json.dumps(data))
    assert main(["lut", "show", str(path)]) == 2
    assert "negative overhead (-50 ms)" in one_line(capsys, "lut")
    assert LatencyTable.from_dict(data, allow_negative_overhead=True).overhead_ms == -50.0
    from pssnet.evaluation.evaluator import meter_for

    assert meter_for(net, {"latency_cpu": data}).measure("latency_cpu", net.space.largest()) < 0  # as it trained

    rebuilt = build_table(net, settings, path, progress=False, plan=FitSettings(exhaustive=True, first_sample=4))
    assert rebuilt.entries == table.entries and rebuilt.timings == table.timings  # nothing measured again
    assert rebuilt.overhead_ms >= 0 and LatencyTable.load(path).overhead_ms == rebuilt.overhead_ms
    res, widths = net.space.sample_arrays(1000, np.random.default_rng(0))
    assert (rebuilt.predict_arrays(net.layout, res, widths) > 0).all()


# ---------------------------------------------------------------- a table must cover the run's space


def _config(**changes) -> SupernetConfig:
    return SupernetConfig(**{**{k: v for k, v in RUN.to_dict().items() if k != "layout_version"}, **changes})


COVERS = [
    ("another-arch", _config(arch="resnet50"), "exhaustive", "(arch resnet50, not the run's mobilenet_v2):"),
    ("every-mismatch", _config(arch="resnet50", num_classes=1000, resolutions=(128, 224, 8), width_range=(0.9, 1.0)),
     "fitted", "(arch resnet50, not the run's mobilenet_v2; num_classes 1000, not the run's 10; resolutions 128:224:8 "
               "lack the run's 28; width range 0.9:1 does not hold the run's 0.75:1):"),
    ("imagenet-input", _config(small_input=False), "exhaustive", "small_input False, not the run's True"),
    ("other-classes", _config(num_classes=1000), "exhaustive", "num_classes 1000, not the run's 10"),
    ("other-channels", _config(in_chans=3), "exhaustive", "in_chans 3, not the run's 1"),
    ("other-resolutions", _config(resolutions=(24, 32, 8)), "exhaustive", "resolutions 24:32:8 lack the run's 28"),
    ("fitted-on-fewer", _config(resolutions=(32, 40, 4)), "fitted", "resolutions 32:40:4 lack the run's 28"),
    ("narrower-widths", _config(width_range=(0.8, 1.0)), "exhaustive",
     "width range 0.8:1 does not hold the run's 0.75:1"),
]


@pytest.mark.parametrize("config, method, mismatch", [c[1:] for c in COVERS], ids=[c[0] for c in COVERS])
def test_a_table_that_does_not_cover_the_runs_space_is_refused_naming_the_mismatch(config, method, mismatch):
    data = json.loads(json.dumps(LatencyTable({}, {"type": "cpu"}, config.to_dict(), method=method).to_dict()))
    table = LatencyTable.from_dict(data, source="other.json")
    with pytest.raises(UserError) as info:
        table.check_covers(RUN)
    text = str(info.value)
    assert text.startswith("latency table other.json does not cover this run's search space (") and mismatch in text
    assert text.endswith("build one for it with `pssnet lut build --arch mobilenet_v2 --small-input --num-classes 10 "
                         "--in-chans 1 --resolutions 28:28:4 --width-range 0.75:1 --device cpu -o FILE`")


def test_a_covering_table_is_accepted():
    # Its own space; a wider one (a fitted table predicts between its resolutions, an exhaustive one
    # has every resolution of the run's); the run's resolutions among an exhaustive table's.
    for config, method in [(RUN, "exhaustive"), (_config(resolutions=(24, 32, 2), width_range=(0.5, 1.5)), "fitted"),
                           (_config(resolutions=(20, 36, 4)), "exhaustive")]:
        LatencyTable({}, {"type": "cpu"}, config.to_dict(), method=method, source="t.json").check_covers(RUN)
    assert set(table_module.load_tables([])) == set()


# ---------------------------------------------------------------- the command line: one line, exit 2


HOSTILE_FOR_TRAIN = [
    ("another-arch", lambda: synthetic_table(_config(arch="mobilenet_v1", resolutions=(28, 28, 4))),
     "does not cover this run's search space (arch mobilenet_v1, not the run's mobilenet_v2"),
    ("negative-overhead", lambda: {**synthetic_table(), "overhead_ms": -3.0}, "negative overhead (-3 ms)"),
    ("inverted-width-range", lambda: {**synthetic_table(), "width_range": [1.0, 0.75]}, "bad width range"),
    ("absurd-in-chans", lambda: {**synthetic_table(), "in_chans": 10_000}, "'in_chans' must be at most 64"),
    ("deep-nesting", lambda: '{"format": "pssnet-lut/2", "device": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nested too deeply"),
]


@pytest.mark.parametrize("make, message", [h[1:] for h in HOSTILE_FOR_TRAIN], ids=[h[0] for h in HOSTILE_FOR_TRAIN])
def test_train_lut_refuses_it_at_start_up_in_one_line(make, message, tmp_path, capsys):
    path, out = write(tmp_path, make()), tmp_path / "run"
    assert main(TRAIN + ["--lut", str(path), "--out", str(out)]) == 2
    err = one_line(capsys, "train")
    assert message in err and str(path) in err
    assert not out.exists()  # refused before the run directory is kept


def test_a_matching_table_trains(tmp_path, capsys):
    # The same command with a table of the run's own space trains: the refusals above are the table's.
    path, out = write(tmp_path, synthetic_table()), tmp_path / "run"
    assert main(TRAIN + ["--lut", str(path), "--out", str(out)]) == 0
    assert (out / "final.pt").is_file()


def test_lut_show_of_hostile_files_in_a_subprocess(tmp_path):
    deep = write(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.json")
    digits = write(tmp_path, json.dumps(synthetic_table()).replace('"batch": 1', '"batch": ' + "1" * 5000), "d.json")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as file:
        file.truncate(5 << 30)
    for path, message in [(deep, "nested too deeply"), (digits, "Exceeds the limit (4300 digits)"),
                          (huge, "is 5,120 MiB, larger than 128 MiB")]:
        result = subprocess.run([sys.executable, "-m", "pssnet", "lut", "show", str(path)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("pssnet lut: error: ")
        assert message in result.stderr


def test_train_lut_with_another_architectures_table_in_a_subprocess(tmp_path):
    path, out = write(tmp_path, synthetic_table(_config(arch="resnet50", small_input=False))), tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pssnet", *TRAIN, "--lut", str(path), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pssnet train: error: latency table ")
    assert "arch resnet50, not the run's mobilenet_v2; small_input False, not the run's True" in result.stderr
    assert not out.exists()
