"""The node's receiver processes never outlive it.

(Not the Ray driver: see :func:`dicom_node.jobs.driver.driver_main` for why it does not use
PR_SET_PDEATHSIG.)
"""

from __future__ import annotations

import ctypes
import os
import signal


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent (pid ``parent``) dies.

    A ``kill -9`` of the node then takes its children with it, as power loss
    would, instead of leaving them holding the port or the cluster's actors.
    Exits at once if the parent is already gone.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
