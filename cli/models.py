"""`cassava models list|rollback|restore STORE`: a model store's versions, and taking the newest out of service.

A thin shell over shared/server/store.py (layout, rollback file) and shared/manifest.py (verification). A running
`cassava serve --model STORE` notices a rollback within its watch interval, without a restart.
"""
from __future__ import annotations

from pathlib import Path

from cassava.shared.errors import CassavaError


def add_arguments(parser):
    parser.add_argument("action", choices=("list", "rollback", "restore"),
                        help="list: versions, sizes, verification, which serves; rollback: exclude the version that "
                             "serves, so the previous verified one does; restore: undo rollbacks")
    parser.add_argument("store", type=Path, help="model store: a folder of numbered versions STORE/1, STORE/2 ...")
    parser.add_argument("--version", type=int, dest="only", help="restore: only this version (default: all)")
    parser.add_argument("--allow-spec-change", action="store_true",
                        help="as `cassava serve --allow-spec-change`: a version may change input size or classes")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(args) -> int:
    from cassava.shared.server import store

    if not store.is_store(args.store):
        raise CassavaError(f"{args.store}: not a model store (no numbered version folders in it)")
    if args.action == "restore":
        left = store.restore(args.store, args.only)
        print(f"restored; still rolled back: {', '.join(map(str, sorted(left))) or 'none'}")
        return 0
    states = store.verification(args.store, allow_spec_change=args.allow_spec_change)
    if args.action == "rollback":
        version = store.rollback(args.store, states)
        print(f"version {version} rolled back (listed in {args.store / store.ROLLBACK_FILE}); a server watching "
              f"{args.store} serves the previous verified version within its watch interval")
        return 0
    out, serves = store.excluded(args.store), store.serving(args.store, states)
    print(f"{'version':>7}  {'bytes':>12}  state")
    for version in reversed(store.versions(args.store)):
        refusal = states[version]
        state = f"refused: {refusal}" if refusal else "verified"
        if version in out:
            state = f"rolled back ({state})"
        mark = "  <- serves" if version == serves else ""
        print(f"{version:>7}  {folder_bytes(args.store / str(version)):>12,}  {state}{mark}")
    print("verified: as a server watching this store since its first version sees it (each version's spec checked "
          "against the verified one below it); serves: the highest verified version not rolled back")
    return 0
