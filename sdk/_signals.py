"""SIGTERM: mark the runs cancelled, then do what the process would have done.

Installed at the first ``stride.init`` in the main thread, and only when
SIGTERM has its default action: a handler installed by the program or its
launcher (torchrun, Lightning, a SLURM wrapper), and an ignored SIGTERM, are
left exactly as they are. On SIGTERM the handler tells delivery that the
process is ending (delivery then ends each open run as ``cancelled`` once it
has read everything logged), waits a bounded time for that to be
acknowledged, restores the default action and sends the signal again, so
the process ends by SIGTERM as it would have without Stride (its exit status
says so). Data needs no flushing: every ``log()`` is already in the log,
which the delivery helper empties after the process is gone.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

#: The longest the handler waits for delivery before the process ends.
SIGTERM_FLUSH_S = 5.0

terminated = threading.Event()
_installed = False


def install_sigterm_handler() -> None:
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # someone else's handler, or SIGTERM ignored: not ours to touch
    _installed = True
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    terminated.set()
    from ._transport import open_transports

    for transport in open_transports():
        transport.terminated(SIGTERM_FLUSH_S)
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
