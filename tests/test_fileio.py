"""Atomic writes: a failed write leaves the old file as it was and no temporary file behind."""

import pytest
import torch

from pssnet.fileio import atomic_write, save_atomic, write_text_atomic


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.json"
    write_text_atomic(path, "old\n")

    def crash(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_save_atomic_round_trips_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt.pt"
    save_atomic({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "lut.json", "{}\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "lut.json").stat().st_mode & 0o777 == 0o644
