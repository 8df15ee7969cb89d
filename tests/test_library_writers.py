"""Several writers of one library (expertise.library.locking): two processes adding members at once
both land and the manifest holds them all; a writer waits for a live holder of the writer lock, a
bounded time, and then names it with its last heartbeat; a claim left by a dead process on another
host is reported with its age while waited for, and taken over once stale, never waited on forever."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import expertise
from expertise.errors import LibraryError
from expertise.library import Library, MemberInfo, locking
from expertise.models.backbones import BACKBONES, ExpertModel

WRITER = """
import sys, time
from pathlib import Path
import torch
from expertise.library import Library, MemberInfo, locking, transaction
from expertise.models.backbones import BACKBONES, ExpertModel

lib_path, prefix, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real_commit, real_try = transaction.Transaction.commit, locking.try_acquire
waits = []

def slow_commit(self, write):  # hold the lock a while, so the two writers must take turns
    time.sleep(0.3)
    real_commit(self, write)

def counting_try(lock):
    who = real_try(lock)
    if who is not None:
        waits.append(who)
    return who

transaction.Transaction.commit, locking.try_acquire = slow_commit, counting_try
(go.parent / f"ready.{prefix}").touch()
while not go.exists():
    time.sleep(0.01)
lib = Library.open(lib_path)
for i in range(3):
    torch.manual_seed(i)
    info = MemberInfo(name=f"{prefix}{i}", kind="baseline", parent=None, domain=None, upstream_images=1, parameters=0,
                      embedding_dim=0, upstream_accuracy=None, preprocessing={})
    lib.add(info, ExpertModel(BACKBONES["bit_xs"], num_outputs=3))
print("waited", len(waits))
"""


def _info(name: str) -> MemberInfo:
    return MemberInfo(name=name, kind="baseline", parent=None, domain=None, upstream_images=1, parameters=0,
                      embedding_dim=0, upstream_accuracy=None, preprocessing={})


@pytest.mark.slow
def test_two_writer_processes_both_land_and_the_manifest_holds_them_all(tmp_path) -> None:
    lib = Library.create(tmp_path / "lib", None)
    go = tmp_path / "go"
    root = str(Path(expertise.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(lib.path), prefix, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for prefix in ("a", "b")]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready.{p}").exists() for p in "ab") and time.monotonic() < deadline:
        time.sleep(0.05)  # both have imported torch: start them together
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    waited = sum(int(out.split()[-1]) for out, _ in outs)
    assert waited > 0  # they did contend for the lock
    lib = Library.open(lib.path)
    assert sorted(lib.names()) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert lib.verify() == [] and not (lib.path / ".lock").exists()
    assert all(lib.load(n) is not None for n in lib.names())


def test_a_writer_waits_for_a_live_holder_then_lands(tmp_path) -> None:
    lib = Library.create(tmp_path / "lib", None)
    lock = lib.path / ".lock"
    assert locking.try_acquire(lock) is None  # another writer of this process holds it ...
    release = threading.Timer(0.5, lock.unlink)  # ... and is done half a second later
    release.start()
    t0 = time.monotonic()
    lib.add(_info("a"), ExpertModel(BACKBONES["bit_xs"], num_outputs=3))
    release.join()
    assert time.monotonic() - t0 >= 0.4 and "a" in Library.open(lib.path)


def test_a_held_lock_is_reported_with_its_heartbeat_after_the_wait(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(locking, "LOCK_WAIT_S", 1.0)
    lib = Library.create(tmp_path / "lib", None)
    lock = lib.path / ".lock"
    lock.write_text("4242\nbuild-node-7\n")
    t0 = time.monotonic()
    with pytest.raises(LibraryError) as e:
        lib.add(_info("a"), ExpertModel(BACKBONES["bit_xs"], num_outputs=3))
    assert 1.0 <= time.monotonic() - t0 < 10
    line = str(e.value)
    assert "pid 4242 on build-node-7" in line and "last heartbeat 1 s ago" in line and "waited 1 s" in line
    assert f"taken over after {locking.STALE_AFTER_S:.0f} s without one" in line and str(lock) in line
    assert "a" not in Library.open(lib.path)


def test_a_claim_of_a_dead_process_on_another_host_is_reported_and_taken_over_once_stale(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(locking, "STALE_AFTER_S", 1.5)
    lib = Library.create(tmp_path / "lib", None)
    claim = lib.path / ".claims" / "e1"
    claim.parent.mkdir()
    claim.write_text("777\nother-host\n")  # fresh now; its process died and will never touch it again
    logs: list[str] = []
    t0 = time.monotonic()
    with pytest.warns(UserWarning, match=r"pid 777 on host other-host has shown no sign of life for \d+ s"):
        with lib.claim("e1", log=logs.append, poll_s=0.05) as build:
            assert build
            lib.add(_info("e1"), ExpertModel(BACKBONES["bit_xs"], num_outputs=3))
    assert 1.5 <= time.monotonic() - t0 < 30
    assert len(logs) == 1 and "being built by pid 777 on other-host" in logs[0]
    assert "last heartbeat 0 s ago; taken over after 2 s without one" in logs[0]
    assert "e1" in Library.open(lib.path) and not claim.exists()
