"""Slots: -np sequences with their own KV cache. Requests beyond them wait in FIFO order.

Each generation runs in a worker thread; its tokens come back to the event loop through an
asyncio queue. Cancelling (client gone, SIGTERM) sets a flag that the engine checks between layers.
After close() (shutdown) a request still waiting for a slot gets a 503 and never starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import ApiError

log = logging.getLogger("ollama_airllm.server")


@dataclass
class Event:
    kind: str  # "start" | "token" | "done" | "error"
    token: int = -1
    piece: str = ""
    probs: object = None
    result: object = None
    error: BaseException | None = None


class Generation:
    """One request's run: its events, its slot and its cancel flag."""

    def __init__(self, slot: int, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def push(self, ev: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ev)


class SlotPool:
    """Hands out free slots (longest cached prefix first) and runs generations on them."""

    def __init__(self, engine, n_slots: int) -> None:
        self.engine = engine
        self.n_slots = n_slots
        self._free = list(range(n_slots))
        self._cond: asyncio.Condition | None = None
        self._executor = ThreadPoolExecutor(max_workers=n_slots, thread_name_prefix="slot")
        self._running: set[Generation] = set()
        self._tasks: set[asyncio.Task] = set()
        self.n_processing = 0
        self.n_deferred = 0
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
            self._loop = asyncio.get_running_loop()
        return self._cond

    def _pick(self, prompt: list[int], wanted: int) -> int | None:
        if wanted >= 0:
            return wanted if wanted in self._free else None
        if not self._free:
            return None

        def common(slot: int) -> int:
            n = 0
            for a, b in zip(self.engine.slot_tokens(slot), prompt, strict=False):
                if a != b:
                    break
                n += 1
            return n

        return max(self._free, key=lambda s: (common(s), -s))

    async def acquire(self, prompt: list[int], wanted: int = -1) -> int:
        if wanted >= self.n_slots:  # would wait for ever for a slot that does not exist
            last = self.n_slots - 1
            raise ApiError(f"Field 'id_slot': {wanted} is not a slot: this server has slots 0 to {last}")
        cond = self._condition()
        async with cond:
            self.n_deferred += 1
            try:
                while True:
                    if self.closing:
                        raise ApiError("the server is shutting down", 503)
                    if (slot := self._pick(prompt, wanted)) is not None:
                        break
                    await cond.wait()
            finally:
                self.n_deferred -= 1
            self._free.remove(slot)
            self.n_processing += 1
            return slot

    async def _release(self, slot: int) -> None:
        cond = self._condition()
        async with cond:
            self._free.append(slot)
            self.n_processing -= 1
            cond.notify_all()

    async def start(
        self, prompt: list[int], params, constraint=None, wanted_slot: int = -1, cache_prompt: bool = True
    ) -> Generation:
        """Wait for a slot, then generate in a worker thread. Events: start, token*, done | error."""
        slot = await self.acquire(prompt, wanted_slot)
        loop = asyncio.get_running_loop()
        gen = Generation(slot, loop)
        self._running.add(gen)

        def work() -> None:
            try:
                if not cache_prompt:
                    self.engine.clear_slot(slot)
                gen.push(Event("start"))
                res = self.engine.generate(
                    slot,
                    prompt,
                    params,
                    on_token=lambda tok, piece, probs: gen.push(Event("token", tok, piece, probs)),
                    should_stop=gen.cancelled.is_set,
                    constraint=constraint,
                )
                if res.stop_reason == "cancelled":
                    log.info("slot %d: generation cancelled after %d tokens", slot, res.n_decoded)
                else:
                    log.info(
                        "slot %d: done: %d prompt tokens (%d cached), %d generated, stop %s",
                        slot,
                        res.n_prompt + res.n_cached,
                        res.n_cached,
                        res.n_decoded,
                        res.stop_reason,
                    )
                gen.push(Event("done", result=res))
            except Exception as e:  # reported to the client as an error event
                log.exception("slot %d: generation failed", slot)
                gen.push(Event("error", error=e))

        def finished(_fut) -> None:
            self._running.discard(gen)
            self._spawn(lambda: self._release(slot))

        fut = loop.run_in_executor(self._executor, work)
        fut.add_done_callback(finished)
        return gen

    async def run_without_slot(self, fn, *args):
        """Run a job that needs no slot (embeddings) in a worker thread, beside any running generations."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def cancel_all(self) -> None:
        for gen in list(self._running):
            gen.cancel()

    def close(self) -> None:
        """Shutdown has begun: cancel running generations and turn the queued requests away."""
        self.closing = True
        self.cancel_all()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._spawn, self._wake_all)

    def _spawn(self, fn) -> None:
        task = asyncio.get_running_loop().create_task(fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_all(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def shutdown(self) -> None:
        self.closing = True
        self.cancel_all()
        self._executor.shutdown(wait=True, cancel_futures=True)
