"""``python -m mmsearch_r1.data.world fetch-flags|build``: fetch the flag PNGs, or build the offline world.

What it does: ``fetch-flags`` downloads the npm flag package (a set-up step, `make setup` runs it);
``build`` builds the world into ``--root`` (or loads it when built) and prints its manifest. What it does
not: nothing beyond calling `mmsearch_r1.data.world.build`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmsearch_r1.data.world.build import WorldConfig, build_world
from mmsearch_r1.data.world.sources import DEFAULT_ROOT, fetch_npm_flags


def main(argv: list[str] | None = None) -> None:
    """``python -m mmsearch_r1.data.world fetch-flags|build [--root DIR] [--flags auto|npm|flagpy]``."""
    p = argparse.ArgumentParser(prog="python -m mmsearch_r1.data.world", description=main.__doc__)
    p.add_argument("command", choices=["fetch-flags", "build"])
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--flags", default="auto")
    p.add_argument("--rebuild", action="store_true")
    a = p.parse_args(argv)
    if a.command == "fetch-flags":
        print(fetch_npm_flags(Path(a.root)))
    else:
        w = build_world(WorldConfig(root=Path(a.root), flags=a.flags, rebuild=a.rebuild))
        print(json.dumps({k: v for k, v in w.manifest.items() if k != "skipped"}, indent=1))


if __name__ == "__main__":
    main()
