"""How pyinfra's CLI tells a run's operations apart, and orders them, across hosts: by the lines
of the call stack that added each, then by its place in a loop (`host.loop`), then by how many
came from the same place before it on the same host. Hosts whose runs differ in what they change
would otherwise share one operation under two names (a failure shown under the other's)."""

import inspect
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from pyinfra import host

_places: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # run (pyinfra State) -> name -> place
Item = TypeVar("Item")


def each_told_apart(
    items: Sequence[Item], named: Callable[[Item], str], rank: Sequence = ()
) -> Iterator[Item]:
    """Each of `items` (files, components), for one operation placed by the name it shows,
    `named(item)`: the same operation on every host of the run that adds that name from the
    same line, and one of its own otherwise, so no two hosts' different operations are one under
    two names. They are added, and run, in the order of `rank` (the items there may be, in the
    order they should run; others after them), then in the order the run first met each name:
    the same order on every host (pyinfra refuses a run whose hosts order two operations
    differently)."""
    places = _places.setdefault(host.state, {})
    ranks = {item: index for index, item in enumerate(rank)}

    def place(item: Item) -> tuple[int, int]:
        return ranks.get(item, len(ranks)), places.setdefault(named(item), len(places))

    for item in sorted(items, key=place):
        host.loop_position.extend(place(item))
        try:
            yield item
        finally:
            del host.loop_position[-2:]


def deploy_file_frames_known(state) -> None:
    """pyinfra's CLI orders operations by their call stack: `inspect.stack()` per operation and
    host, where each frame asks `inspect.getmodule`. A frame of the deploy file the CLI runs
    (exec'd: no module has that file) misses its file-to-module cache and scans all of
    `sys.modules`, three times per operation and host: a fifth of a fleet no-op's controller
    CPU. The file is recorded as no module's, so the answer is the same (none) without a scan."""
    filename = state.current_exec_filename
    known = getattr(inspect, "modulesbyfile", None)  # file -> module name (no such cache: nothing to do)
    if filename and isinstance(known, dict):
        path = os.path.normcase(os.path.abspath(filename))
        # A name no module has: getmodule says None (so would any other such name: no mutate).
        known.setdefault(path, path)  # pragma: no mutate
