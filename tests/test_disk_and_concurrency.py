"""Disk failures are one line and leave nothing half-written; concurrent builders claim members;
stale locks of other hosts are judged by age; identical weights give identical bytes; files
respect the umask."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from expertise.cli import app
from expertise.errors import DiskError, LibraryError
from expertise.io import atomic_write_json, safetensors_bytes
from expertise.library import Library, MemberInfo
from expertise.library import locking
from expertise.models.backbones import BACKBONES, ExpertModel

runner = CliRunner()


def _model(seed: int = 0) -> ExpertModel:
    torch.manual_seed(seed)
    return ExpertModel(BACKBONES["bit_xs"], num_outputs=3)


def _info(name: str) -> MemberInfo:
    return MemberInfo(name=name, kind="baseline", parent=None, domain=None, upstream_images=1, parameters=0,
                      embedding_dim=0, upstream_accuracy=None, preprocessing={})


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _failing(code: int, when=lambda path: True):
    real = Path.write_bytes

    def write_bytes(self, data):
        if when(self):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, data)

    return write_bytes


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])
def test_disk_failures_are_one_line_and_leave_the_library_as_it_was(tmp_path, monkeypatch, code, words) -> None:
    lib = Library.create(tmp_path / "lib", None)
    lib.add(_info("a"), _model())
    before = _snapshot(lib.path)
    monkeypatch.setattr(Path, "write_bytes", _failing(code, lambda p: p.name.startswith(".model.safetensors")))
    with pytest.raises(DiskError, match=words) as e:
        lib.add(_info("b"), _model(1))
    assert "model.safetensors" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DiskError, match=words):
        lib.add(_info("a"), _model(1), overwrite=True)
    monkeypatch.undo()
    assert _snapshot(lib.path) == before and lib.verify() == []


def test_a_full_disk_on_the_command_line_is_one_line(tmp_path, monkeypatch) -> None:
    import safetensors.torch
    import timm

    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    ckpt = tmp_path / "net.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(ckpt))
    monkeypatch.setattr(Path, "write_bytes", _failing(errno.ENOSPC))
    result = runner.invoke(app, ["pool", "add", "--library", str(tmp_path / "lib"), "--timm", "test_resnet",
                                 "--checkpoint", str(ckpt)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "no space left" in result.output and "Traceback" not in result.output


def test_a_read_only_library_is_one_line(tmp_path, monkeypatch) -> None:
    lib = Library.create(tmp_path / "lib", None)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(DiskError, match="read-only") as e:
        lib.add(_info("a"), _model())
    assert ".lock" in str(e.value)
    assert lib.clean() == []  # verify's clean-up is skipped, not an error, on a read-only library


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch) -> None:
    from expertise.select.embed import EmbeddingCache

    monkeypatch.setattr(Path, "write_bytes", _failing(errno.EACCES))
    with pytest.raises(DiskError, match="permission denied"):
        EmbeddingCache(tmp_path / "cache").put("abc", "task", "trainval", {"features": torch.zeros(2, 3)})


def test_leftover_temporary_files_are_cleaned_by_verify(tmp_path) -> None:
    lib = Library.create(tmp_path / "lib", None)
    lib.add(_info("a"), _model())
    leftovers = [lib.path / ".library.json.x1.tmp", lib.path / ".upstream.json.x2.tmp",
                 lib.path / "members" / "a" / ".config.json.x3.tmp"]
    for f in leftovers:
        f.write_text("half")
    assert len(lib.verify()) >= 3
    result = runner.invoke(app, ["library", "verify", str(lib.path)])
    assert result.exit_code == 0 and "removed" in result.output and not any(f.exists() for f in leftovers)
    assert Library.open(lib.path).verify() == []


def test_a_second_builder_waits_for_the_claim_instead_of_building_again(tmp_path) -> None:
    lib = Library.create(tmp_path / "lib", None)
    other = Library.open(lib.path)
    built, logs = [], []
    started = threading.Event()

    def first() -> None:
        with lib.claim("a") as build:
            started.set()
            assert build
            time.sleep(0.5)
            lib.add(_info("a"), _model())
            built.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    started.wait()
    with other.claim("a", log=logs.append, poll_s=0.05) as build:  # held by a live process: waits
        if build:
            built.append("second")
    thread.join()
    assert built == ["first"] and "being built by pid" in logs[0] and "a" in other
    assert not (lib.path / ".claims" / "a").exists()


def test_a_claim_of_a_dead_builder_is_taken_over(tmp_path) -> None:
    lib = Library.create(tmp_path / "lib", None)
    claim = lib.path / ".claims" / "a"
    claim.parent.mkdir()
    claim.write_text(f"999999999\n{socket.gethostname()}\n")  # no such pid on this host
    with pytest.warns(UserWarning, match="no longer running"):
        with lib.claim("a") as build:
            assert build


def test_a_lock_of_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(locking, "LOCK_WAIT_S", 0.3)  # a writer waits for a live holder this long, then says so
    lib = Library.create(tmp_path / "lib", None)
    lock = lib.path / ".lock"
    lock.write_text("12345\nsome-other-host\n")
    with pytest.raises(LibraryError, match="pid 12345 on some-other-host"):
        lib.add(_info("a"), _model())
    old = time.time() - locking.STALE_AFTER_S - 60
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="some-other-host has shown no sign of life"):
        lib.add(_info("a"), _model())
    assert "a" in lib and not lock.exists()


def test_a_held_lock_shows_a_heartbeat(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(locking, "HEARTBEAT_S", 0.05)
    lock = tmp_path / ".lock"
    assert locking.try_acquire(lock) is None
    old = time.time() - 1000
    os.utime(lock, (old, old))
    with locking.held(lock):
        beat = locking._Heartbeat(lock, 0.05)
        time.sleep(0.3)
        beat.stop()
        assert locking.age(lock) < 100
    assert not lock.exists()


def test_identical_weights_give_identical_bytes(tmp_path) -> None:
    metadata = {"format": "pt", "member": "x", "bank": "b", "parent": "p"}
    digests = {hashlib.sha256(safetensors_bytes({"w": torch.ones(3)}, metadata)).hexdigest() for _ in range(20)}
    assert len(digests) == 1
    a, b = Library.create(tmp_path / "a", None), Library.create(tmp_path / "b", None)
    a.add(_info("m"), _model(3))
    b.add(_info("m"), _model(3))
    assert a.info("m").files == b.info("m").files and a.member_hash("m") == b.member_hash("m")


def test_files_respect_the_umask(tmp_path) -> None:
    old = os.umask(0o002)
    try:
        lib = Library.create(tmp_path / "lib", None)
        lib.add(_info("a"), _model())
        atomic_write_json(tmp_path / "x.json", {})
    finally:
        os.umask(old)
    for f in (lib.path / "library.json", lib.path / "members" / "a" / "model.safetensors", tmp_path / "x.json"):
        assert f.stat().st_mode & 0o777 == 0o664, f
    warnings.simplefilter("default")
