"""The guarded child process: a job that may hang, crash or blow up, run where that is harmless.

HDF5 upstream says the library is not built to read malicious files safely:
mutated files have made it loop forever holding the GIL, allocate hundreds of
MB for one element, or crash. Whatever parses such a file runs here, in a
child process, with three bounds: a time limit, an address-space limit (set
by the child on itself), and a cap on how many bytes of answer the caller
reads. Beamside's own errors raised in the child travel back as JSON and are
raised again, by name, in the caller; a hang, crash or memory blow-up
becomes a :class:`ProbeFailedError`, an answer too long a
:class:`TooLargeError`.

This room parses nothing itself: :mod:`._probe` says what the child does.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from typing import Callable

from dask.utils import format_bytes

from . import _errors
from ._errors import AccessDenied, DataError, ProbeFailedError, TooLargeError


# ---------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------
def run_child(module: str, request: dict, timeout: float, dataset: str | None, output_bytes: int) -> dict:
    """Run ``python -m module`` on ``request``; its answer may be at most ``output_bytes`` long.

    The answer is read in pieces and the child is killed as soon as it says
    more than that: a file with millions of chunks would otherwise make the
    caller (the user's kernel) hold its whole chunk index several times over
    (the pipe's bytes, the JSON text, the decoded arrays).
    """
    path = request["path"]
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        stdout, stderr = _read_bounded(proc, json.dumps(request).encode(), timeout, output_bytes)
    except subprocess.TimeoutExpired:
        raise ProbeFailedError(
            f"inspecting the file did not finish within {timeout:g} s (the HDF5 library hung on it); "
            "the file is probably corrupt or hostile — raise beamside.probe.timeout only if it is merely huge",
            file=path,
            dataset=dataset,
        ) from None
    except _OutputTooLarge:
        raise TooLargeError(
            f"its description (where each chunk lies) is larger than beamside.probe.output "
            f"({format_bytes(output_bytes)}): a dataset with millions of chunks? Raise beamside.probe.output "
            "if the file is genuine (each chunk costs about 60 bytes)",
            file=path,
            dataset=dataset,
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ProbeFailedError(
            f"the HDF5 library crashed while inspecting the file ({how}); the file is probably corrupt. "
            + " | ".join(tail),
            file=path,
            dataset=dataset,
        )
    doc = json.loads(stdout)
    if "error" in doc:
        raise _error_from_child(doc["error"])
    return doc


class _OutputTooLarge(Exception):
    """The child said more than the caller agreed to read."""


_STDERR_TAIL = 64 * 1024  # only the end of an HDF5 error stack is worth showing


def _read_bounded(proc: subprocess.Popen, request: bytes, timeout: float, limit: int) -> tuple[bytes, bytes]:
    """``proc.communicate(request, timeout)``, but stdout may hold at most ``limit`` bytes.

    Raises ``subprocess.TimeoutExpired`` or ``_OutputTooLarge``; the caller kills the child.
    """
    deadline = time.monotonic() + timeout
    try:
        proc.stdin.write(request)  # small; the child reads all of it before it writes anything
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once: its exit code tells why
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            for key, _ in sel.select(remaining):
                piece = os.read(key.fd, 1 << 16)
                if not piece:
                    sel.unregister(key.fileobj)
                elif key.data is out:
                    out += piece
                    if len(out) > limit:
                        raise _OutputTooLarge()
                else:
                    err += piece
                    del err[:-_STDERR_TAIL]
    proc.wait(max(deadline - time.monotonic(), 0))
    return bytes(out), bytes(err)


def _error_from_child(err: dict) -> Exception:
    cls = getattr(_errors, err["type"], None)
    if cls is AccessDenied:
        return AccessDenied(err["reason"])
    if not (isinstance(cls, type) and issubclass(cls, DataError)):
        cls = DataError
    return cls(err["reason"], file=err.get("file"), dataset=err.get("dataset"))


# ---------------------------------------------------------------------------
# child side
# ---------------------------------------------------------------------------
def serve(answer: Callable[[dict], dict]) -> int:
    """The child's side: bound its own memory, answer the request on stdin, errors as JSON on stdout.

    ``answer`` gets the request (``limits`` already made integers) and returns
    the JSON-able answer; beamside's errors it raises travel back by name.
    """
    import resource

    request = json.loads(sys.stdin.read())
    mem = int(request["memory_bytes"])
    try:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    except (ValueError, OSError):
        pass
    request["limits"] = {k: int(v) for k, v in request["limits"].items()}
    try:
        out = answer(request)
    except (DataError, AccessDenied) as exc:
        out = {"error": {"type": type(exc).__name__, "reason": getattr(exc, "reason", str(exc)),
                         "file": getattr(exc, "file", None), "dataset": getattr(exc, "dataset", None)}}
    except MemoryError:
        out = {"error": {"type": "TooLargeError", "reason": "inspecting its metadata needs more memory than "
                         "beamside.probe.memory allows (a hostile or corrupt size field?)", "file": request["path"]}}
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        out = {"error": {"type": "DataError", "reason": f"HDF5 cannot read its metadata: {exc}", "file": request["path"]}}
    sys.stdout.write(json.dumps(out))
    return 0
