"""The warm pool (supervisor/pool.py) with a launcher that starts no process: what it keeps, hands out,
refills and discards."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from kernels_gateway.supervisor import pool as pool_module
from kernels_gateway.supervisor.pool import WarmPool


class Manager:
    def __init__(self):
        self.alive = True

    async def is_alive(self) -> bool:
        return self.alive


class Launcher:
    """Kernels that are objects; `failing` names kernelspecs whose launches raise."""

    def __init__(self, failing: frozenset[str] = frozenset()):
        self.launched: list[str] = []
        self.discarded: list[str] = []
        self.failing = failing

    async def launch(self, name: str, requested: dict, pooled: bool = False):
        assert requested == {} and pooled
        if name in self.failing:
            raise RuntimeError("no such interpreter")
        kernel = SimpleNamespace(id=f"{name}-{len(self.launched)}", name=name, manager=Manager())
        self.launched.append(kernel.id)
        return kernel

    async def discard(self, kernel) -> None:
        self.discarded.append(kernel.id)


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_pool_fills_hands_out_refills_and_discards_what_is_left(monkeypatch):
    monkeypatch.setattr(pool_module, "REFILL_AFTER", 0)
    launcher = Launcher()
    pool = WarmPool({"python3": 2, "ir": 0}, launcher)
    assert pool.sizes == {"python3": 2}  # an empty size keeps nothing
    pool.start()
    try:
        await until(lambda: len(launcher.launched) == 2)
        first = await pool.take("python3")
        assert first.id == "python3-0"
        assert await pool.take("ir") is None
        await until(lambda: len(launcher.launched) == 3)  # refilled
    finally:
        await pool.close()
    assert sorted(launcher.discarded) == ["python3-1", "python3-2"]  # the one taken is not the pool's


async def test_a_dead_spare_is_discarded_and_the_next_one_handed_out(monkeypatch):
    monkeypatch.setattr(pool_module, "REFILL_AFTER", 0)
    launcher = Launcher()
    pool = WarmPool({"python3": 2}, launcher)
    pool.start()
    try:
        await until(lambda: len(launcher.launched) == 2)
        pool._ready["python3"][0].manager.alive = False
        assert (await pool.take("python3")).id == "python3-1"
        assert launcher.discarded == ["python3-0"]
    finally:
        await pool.close()


async def test_a_kernelspec_that_fails_is_retried_after_a_pause_and_others_fill(monkeypatch):
    monkeypatch.setattr(pool_module, "RETRY_AFTER", 0.05)
    launcher = Launcher(failing=frozenset({"broken"}))
    pool = WarmPool({"broken": 1, "python3": 1}, launcher)
    pool.start()
    try:
        await until(lambda: launcher.launched == ["python3-0"])
        assert await pool.take("broken") is None
    finally:
        await pool.close()
    assert launcher.discarded == ["python3-0"]
