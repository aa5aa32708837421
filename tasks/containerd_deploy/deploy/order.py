"""How pyinfra's CLI tells a run's operations apart, and orders them, across hosts: by the lines
of the call stack that added each, then by its place in a loop (`host.loop`), then by how many
came from the same place before it on the same host. Hosts whose runs differ in what they change
would otherwise share one operation under two names (a failure shown under the other's)."""

import inspect
import os
import weakref
from collections.abc import Iterator, Sequence

from pyinfra import host

_slots: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # run (pyinfra State) -> name -> place


def each_told_apart(names: Sequence[str], among: Sequence[str] = ()) -> Iterator[str]:
    """`names` (paths, components), each operation added for one placed by the name itself: the
    same place on every host of the run, whatever else a host adds from the same line. Places go
    in the order the run first meets each name, `among` (all the names there may be, in the order
    they run in) first; the operations run in that order."""
    places = _slots.setdefault(host.state, {})
    for name in (*among, *names):
        places.setdefault(name, len(places))
    for name in sorted(names, key=places.__getitem__):
        host.loop_position.append(places[name])
        try:
            yield name
        finally:
            host.loop_position.pop()


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
