"""The cgroup layer: the only code that reads and writes cgroup files.

``Router`` sends each controller to the backend of the hierarchy that owns
it, so hybrid hosts (memory on v1, io on v2, ...) work per controller.
"""

from __future__ import annotations

from typing import Dict

from cgctl.cgroup.backend import Backend
from cgctl.cgroup.v1 import V1Backend
from cgctl.cgroup.v2 import V2Backend

CONTROLLERS = ("memory", "cpu", "cpuset", "io")


def owner(host, controller: str):
    """The hierarchy owning ``controller`` (our names; host knows io == blkio), or Unsupported."""
    return host.owner(controller)


class Router:
    def __init__(self, host):
        self.host = host
        self._cache: Dict[int, Backend] = {1: V1Backend(), 2: V2Backend()}
        self._by_controller: Dict[str, Backend] = {}  # the host's mounts do not change

    def backend(self, controller: str) -> Backend:
        b = self._by_controller.get(controller)
        if b is None:
            b = self._by_controller[controller] = self._cache[owner(self.host, controller).version]
        return b
