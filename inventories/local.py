"""The local throw-away nodes started by `python -m tests.harness up` (or `make demo`).

Each node's SSH settings come from the harness (key auth, host key pinned in .nodes/known_hosts)
and its data points it at the harness's artifact mirror.
"""

import json
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_NODES = _ROOT / ".nodes"
_KEY = Path.home() / ".cache" / "containerd-deploy" / "ssh" / "id_ed25519"


def _local_nodes():
    nodes = []
    for path in sorted(_NODES.glob("*/node.json")):
        try:
            node = json.loads(path.read_text())
            data = json.loads((path.parent / "data.json").read_text())
        except (OSError, ValueError):
            continue  # a node still starting (no data yet) or just stopped: not deployable now
        data.update(
            ssh_hostname="127.0.0.1",
            ssh_port=node["port"],
            ssh_user="root",
            ssh_key=str(_KEY),
            ssh_known_hosts_file=str(_NODES / "known_hosts"),
            ssh_strict_host_key_checking="yes",
            ssh_allow_agent=False,
            ssh_look_for_keys=False,
        )
        nodes.append((node["name"], data))
    return nodes


local_nodes = _local_nodes()
