"""``slurm.server_ip: node``: each job listens on its own node's address, as SLURM knows it.

On a cluster of several nodes no single address fits every job. With ``node``, a server's job
and each Dask scheduler and worker job set ``$node_ip`` to their node's ``NodeAddr`` (from
``scontrol show node``, on the node, before anything starts) and listen there; the hub looks up
the same record for the node squeue names, so it connects where the server listens. The address
never comes from the job itself: a user's code could otherwise point the proxy's route anywhere.
"""

from __future__ import annotations

import re
import shlex

NODE = "node"  # the slurm.server_ip value that means "the job's node's NodeAddr"
_NODE_ADDR = re.compile(r"(?:^|\s)NodeAddr=(\S+)")


def node_ip_line(scontrol: str) -> str:
    """A shell line that sets ``$node_ip`` to the address of the job's node, or ends the job saying why."""
    return (f'node_ip=$({shlex.quote(scontrol)} show node "$SLURMD_NODENAME" --oneliner'
            " | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p'); "
            '[ -n "$node_ip" ] || { echo "beamside: SLURM has no address for node $SLURMD_NODENAME" >&2; exit 1; };')


def node_address(record: str) -> str | None:
    """``NodeAddr`` in one line of ``scontrol show node --oneliner`` (None if absent)."""
    match = _NODE_ADDR.search(record)
    return match.group(1) if match else None
