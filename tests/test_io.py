"""Atomic writes and safe loads (pyro_vi._io)."""

from __future__ import annotations

import os

import pytest
import torch

from pyro_vi._io import atomic_write, from_plain, load_tensors, save_tensors, to_plain


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def half(f):
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_round_trip_of_plain_records_and_tensors(tmp_path):
    obj = {"a": torch.arange(3.0), "b": (1, 2.5, None, "x", True), "c": [torch.float32]}
    save_tensors(tmp_path / "o.pt", to_plain(obj))
    back = from_plain(torch.load(tmp_path / "o.pt", weights_only=True), where="o.pt")
    assert back["b"] == obj["b"]
    assert back["c"] == [torch.float32]
    assert torch.equal(back["a"], obj["a"])


def test_objects_of_other_packages_are_not_saved():
    with pytest.raises(TypeError, match="cannot save"):
        to_plain(os.environ)


def test_a_file_naming_a_foreign_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside pyro_vi"):
        from_plain({"__class__": "os:system", "__state__": {}}, where="evil.pt")


class _Payload:
    """Unpickling this would create a marker file: the refusal must happen before."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_vi.result", "x": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="refused to load"):
        load_tensors(path, what="pyro-vi result file")
    assert not marker.exists()
    # the same bytes through plain pickle would have run it: the test has power
    with open(path, "rb") as f:
        assert b"open" in f.read()


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "t.pt"
    save_tensors(path, {"a": torch.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.pt.*not a readable"):
        load_tensors(path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_tensors(tmp_path / "nope.pt")


# ------------------------------------------- every writer: a failed write keeps the old file


def _writers(tmp_path):
    """(name, target, write) for each file the library writes, each through atomic_write."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from benchmarks._common import update_readme, write_results
    from pyro_vi._io import save_figure, write_csv, write_text
    from pyro_vi.models.vae.model import VAE, VAEConfig, save_vae

    fig = plt.figure()
    table = pd.DataFrame({"a": [1.0]})
    vae = VAE(VAEConfig(input_dim=4, hidden=(3,)))
    return [
        ("save_vae", tmp_path / "vae.pt",
         lambda p: save_vae(p, vae, data="digits", split_seed=0)),
        ("figure (demo, diagnose, VAE plots)", tmp_path / "f.png",
         lambda p: save_figure(fig, p, dpi=20)),
        ("CSV (demo, VAE metrics and curves)", tmp_path / "t.csv",
         lambda p: write_csv(table, p, index=False)),
        ("Markdown (VAE metrics)", tmp_path / "m.md", lambda p: write_text(p, "| new |")),
        ("benchmarks write_results", tmp_path / "b.csv",
         lambda p: write_results(p.parent, "b", table=table, markdown="x", info={})),
        ("benchmarks README section", tmp_path / "README.md",
         lambda p: update_readme("demo", "new text", readme=p)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_each_writer_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch, index):
    import matplotlib.pyplot as plt

    name, target, write = _writers(tmp_path)[index]
    target.write_bytes(b"previous <!-- demo:start -->\nold\n<!-- demo:end -->\n")
    before = target.read_bytes()

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pyro_vi._io.os.replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write(target)
    monkeypatch.undo()
    assert target.read_bytes() == before, name
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name], name  # no temporary
    write(target)  # and the same writer does replace it once writing works
    assert target.read_bytes() != before, name
    plt.close("all")
