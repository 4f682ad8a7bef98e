"""The start queue's order, places and estimates, on a real event loop (no hub needed)."""

from __future__ import annotations

import asyncio

from beamside_hub.start_queue import StartQueue


def test_starts_go_in_order_of_arrival_a_few_at_a_time():
    async def scenario():
        queue = StartQueue(2)
        order, places = [], {}

        async def user(name: str, seconds: float):
            await queue.wait_turn(name)
            order.append(name)
            await asyncio.sleep(seconds)
            queue.end_turn(name, started=True)

        tasks = [asyncio.create_task(user(f"u{i}", 0.05)) for i in range(6)]
        await asyncio.sleep(0.01)  # u0 and u1 start; u2..u5 wait in that order
        places = {f"u{i}": queue.place(f"u{i}") for i in range(6)}
        messages = {name: queue.message(name) for name in ("u0", "u2", "u5")}
        full = queue.full()
        await asyncio.gather(*tasks)
        return order, places, messages, full, queue

    order, places, messages, full, queue = asyncio.run(scenario())
    assert order == [f"u{i}" for i in range(6)]
    assert places == {"u0": None, "u1": None, "u2": 1, "u3": 2, "u4": 3, "u5": 4}
    assert messages["u0"] is None
    assert "yours is next" in messages["u2"] and "3 servers ahead of yours" in messages["u5"]
    assert full and not queue.full() and queue.waiting() == []
    # estimate: turns ahead (two at a time) times a recent start (about 0.05 s here)
    assert 0.04 <= queue.estimate(1) < 1 and queue.estimate(4) == 2 * queue.estimate(1)


def test_a_start_given_up_while_waiting_or_holding_frees_its_place():
    async def scenario():
        queue = StartQueue(1)
        await queue.wait_turn("first")
        waiter = asyncio.create_task(queue.wait_turn("second"))
        await asyncio.sleep(0.01)
        assert queue.place("second") == 1
        waiter.cancel()  # the user stopped a pending spawn
        await asyncio.gather(waiter, return_exceptions=True)
        assert queue.place("second") is None
        queue.end_turn("first", started=False)
        queue.end_turn("first", started=False)  # twice: no second release
        await asyncio.wait_for(queue.wait_turn("third"), 1)
        blocked = asyncio.create_task(queue.wait_turn("fourth"))
        await asyncio.sleep(0.01)
        still_waiting = not blocked.done()  # one slot, held by third: a double release would free two
        queue.end_turn("third", started=True)
        await asyncio.wait_for(blocked, 1)
        return still_waiting

    assert asyncio.run(scenario())


def test_no_slots_means_no_queue():
    async def scenario():
        queue = StartQueue(0)
        await asyncio.wait_for(asyncio.gather(*(queue.wait_turn(f"u{i}") for i in range(50))), 1)
        queue.end_turn("u1", started=True)
        return queue.full(), queue.message("u1")

    assert asyncio.run(scenario()) == (False, None)


def test_a_notebook_server_does_not_compile_iri_grammars_at_start():
    """The set-up removes rfc3987-syntax (3 CPU-seconds of every server start: jupyter-server #1559)."""
    import subprocess
    import sys

    code = "import sys, jupyter_server.serverapp, jupyterlab; print('rfc3987_syntax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
