"""The guest agent (``vmm-agent``), built static from the package's sources."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional, Union

from .cache import _cache_lock
from .common import AssetError, _run, _say, cache_dir

#: Where the guest agent's sources are: in the package (``vmm_reference/guest_agent``), so an
#: installed wheel can build it too.
AGENT_SOURCE_DIR = Path(__file__).resolve().parent.parent / "guest_agent"


#: How the agent is compiled: static, so that it runs whatever libc the guest has (or none).
AGENT_CFLAGS = ["-static", "-O2", "-Wall", "-Wextra"]


def _agent_sources() -> list[Path]:
    sources = sorted(p for p in AGENT_SOURCE_DIR.glob("*") if p.suffix in (".c", ".h")) \
        if AGENT_SOURCE_DIR.is_dir() else []
    if not any(p.suffix == ".c" for p in sources):
        raise AssetError(f"the guest agent's sources are missing from {AGENT_SOURCE_DIR} (part of the "
                         "vmm_reference package: reinstall it)")
    return sources


def _agent_path(base: Path) -> Path:
    """Where the agent built from the current sources lives in the cache (keyed by their hash and the flags)."""
    digest = hashlib.sha256(" ".join(AGENT_CFLAGS).encode())
    for source in _agent_sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return base / f"vmm-agent-{digest.hexdigest()[:12]}" / "vmm-agent"


def _build_agent(base: Path) -> Path:
    """Compile the guest agent with ``gcc -static`` into the cache, once per version of its sources."""
    out = _agent_path(base)
    if out.exists():
        return out
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if not gcc:
        raise AssetError("gcc is needed to build the guest agent (vmm_reference/guest_agent/agent.c; "
                         "Debian: apt-get install gcc libc6-dev)")
    _say(f"building the guest agent {out.parent.name} (gcc -static)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".tmp")
    sources = [str(p) for p in _agent_sources() if p.suffix == ".c"]
    _run([gcc, *AGENT_CFLAGS, "-o", str(partial), *sources])
    partial.replace(out)
    return out


def build_agent(cache: Optional[Union[str, Path]] = None) -> Path:
    """Build the guest agent ``vmm-agent`` (cached, keyed by a hash of its sources) and return its path.

    It is a static x86-64 binary: copy it into any guest and start it early (docs/guide.md),
    or run it on the host with ``--listen-unix PATH`` to talk to it over a UNIX socket. Needs
    gcc and the static C library (Debian: ``gcc``, which brings ``libc6-dev``).
    """
    base = cache_dir(cache)
    out = _agent_path(base)
    if out.exists():
        return out
    with _cache_lock(cache):
        return _build_agent(base)
