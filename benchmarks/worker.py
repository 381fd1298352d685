"""One configuration in a fresh process: ``python -m benchmarks.worker '<json spec>'``.

The spec is ``{"contender": ..., "measure": ..., "params": {...}}``. The worker installs the
contender's loop (the epoll reactor, asyncioreactor on a new asyncio loop, the default asyncio
loop, or uvloop), runs the measure, and prints one JSON object on its last line of stdout:
``{"ok": true, "metrics": {...}}`` or ``{"ok": false, "error": "..."}``. A fresh process per
configuration keeps loops, reactors and memory from leaking from one measurement to the next.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from benchmarks import measures
from benchmarks.common import quiet_logging, raise_fd_limit

__all__ = ["main", "run_spec"]

MEASURES: dict[str, Callable[[Any, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "rpc-c1": measures.rpc,
    "rpc-c32": measures.rpc,
    "serving": measures.serving,
    "network": measures.network,
    "memory": measures.memory,
    "profile": measures.profile,
}


def _run_twisted(make_shell: Callable[[Any], Any], measure: Any, params: dict[str, Any]) -> Any:
    """Run ``measure`` on the epoll reactor (installed here, in this fresh process)."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    box: dict[str, Any] = {}

    def start() -> None:
        d = Deferred.fromCoroutine(measure(make_shell(reactor), params))

        def finish(result: Any) -> None:
            box["result"] = result
            reactor.stop()

        d.addBoth(finish)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    result = box.get("result")
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _run_asyncio(make_shell: Callable[[], Any], measure: Any, params: dict[str, Any], loop: str):
    async def main() -> Any:
        return await measure(make_shell(), params)

    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration; return its metrics."""
    from benchmarks import shells

    contender, measure_name = spec["contender"], spec["measure"]
    params = dict(spec.get("params", {}))
    measure = MEASURES[measure_name]
    raise_fd_limit(int(params.get("fd_limit", 65536)))
    if contender == "twisted-epoll":
        return _run_twisted(shells.TwistedShell, measure, params)  # type: ignore[no-any-return]
    if contender == "floor-epoll":
        return _run_twisted(shells.TwistedFloorShell, measure, params)  # type: ignore[no-any-return]
    if contender == "twisted-asyncio":
        return _run_asyncio(shells.AdapterShell, measure, params, "asyncio")  # type: ignore[no-any-return]
    if contender == "floor-asyncioreactor":

        def floor_shell() -> Any:
            from txdht.asyncio_adapter import install_reactor

            return shells.TwistedFloorShell(install_reactor(), asyncio.get_running_loop())

        return _run_asyncio(floor_shell, measure, params, "asyncio")  # type: ignore[no-any-return]
    if contender in ("asyncio", "uvloop"):
        return _run_asyncio(shells.AioShell, measure, params, contender)  # type: ignore[no-any-return]
    if contender in ("floor-asyncio", "floor-uvloop"):
        loop = contender.removeprefix("floor-")
        return _run_asyncio(shells.AioFloorShell, measure, params, loop)  # type: ignore[no-any-return]
    if contender == "kademlia":
        return _run_asyncio(shells.KademliaShell, measure, params, "asyncio")  # type: ignore[no-any-return]
    if contender == "opendht":

        def opendht_shell() -> Any:
            return shells.OpenDHTShell(float(params.get("settle_s", 30.0)))

        return _run_asyncio(opendht_shell, measure, params, "asyncio")  # type: ignore[no-any-return]
    raise ValueError(f"unknown contender {contender!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.worker '<json spec>'", file=sys.stderr)
        return 2
    quiet_logging()
    try:
        metrics = run_spec(json.loads(args[0]))
    except Exception as e:
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}))
        return 1
    print(json.dumps({"ok": True, "metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
