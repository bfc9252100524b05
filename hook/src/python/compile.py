"""Compiles a staged release's Python files into hash-checked pycs (run by deploy-hook as root).

argv: the staged release and the live one, as names in the working directory (the releases
directory, root's), or "" when nothing is live. Parses, never runs, the source: no import of it.
A pyc of the live release whose recorded source hash matches the staged file is hard-linked
instead of compiled again (a pyc checks its own hash), so a redeploy compiles only what changed.
Prints one summary line; a file that does not compile is named and left to Python at import.
"""

import importlib.util
import os
import py_compile
import sys

new, old = sys.argv[1], sys.argv[2]
tag = sys.implementation.cache_tag
compiled, linked, failed = 0, 0, []
for top, dirs, files in os.walk(new):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    for name in sorted(files):
        if not name.endswith(".py"):
            continue
        source = os.path.join(top, name)
        rel = os.path.relpath(source, new)
        cache = os.path.join(os.path.dirname(rel), "__pycache__")
        pyc = os.path.join(cache, f"{name[:-3]}.{tag}.pyc")
        if old:
            try:
                with open(source, "rb") as f:
                    want = importlib.util.source_hash(f.read())
                with open(os.path.join(old, pyc), "rb") as f:
                    head = f.read(16)
                if head == importlib.util.MAGIC_NUMBER + b"\x03\x00\x00\x00" + want:
                    os.makedirs(os.path.join(new, cache), exist_ok=True)
                    os.link(os.path.join(old, pyc), os.path.join(new, pyc))
                    linked += 1
                    continue
            except OSError:
                pass
        try:
            py_compile.compile(
                source,
                cfile=os.path.join(new, pyc),
                dfile=rel,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
            compiled += 1
        except (py_compile.PyCompileError, OSError, ValueError) as err:
            failed.append(f"{rel}: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}")
print(f"{compiled} compiled, {linked} reused from the live release, {len(failed)} left to import")
for line in failed[:10]:
    print(f"  {line}")
sys.exit(1 if failed else 0)
