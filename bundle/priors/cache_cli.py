"""``sam-priors-cache``: list the partitions of a prior cache folder, and prune one.

    sam-priors-cache list data/priors/brats2021
    sam-priors-cache list data/priors/brats2021 --json
    sam-priors-cache prune data/priors/brats2021 fallback-0123456789ab
    sam-priors-cache prune data/priors/brats2021 half-copied-folder --force

A partition holds the priors of one configuration (see :mod:`bundle.priors.cache`). ``list`` shows, per partition,
the generator, the SAM model and its checkpoint hash, the settings that differ between the partitions, the number
of cases and the size on disk. A folder that is not a usable partition (no ``partition.json``, or one that is not
JSON or not of a partition's shape) is listed with what is wrong with it. ``prune`` removes a partition: it is
first renamed out of the way (one atomic step: no reader ever sees half a partition), then deleted; a folder that
is not a usable partition is removed the same way only with ``--force`` (a misspelt name must not delete a folder
that merely sits in the cache folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from bundle.folders import format_bytes
from bundle.priors.cache import ENTRY_NAME, PARTITION_NAME

__all__ = ["list_partitions", "prune_partition", "main"]


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value
    return out


def _find_sam(signature) -> dict:
    """The SAM signature (``model_type``, ``checkpoint_sha256``, ...) wherever a partition's signature nests it."""
    if isinstance(signature, dict):
        if isinstance(signature.get("sam"), dict):
            return signature["sam"]
        for value in signature.values():
            found = _find_sam(value)
            if found:
                return found
    return {}


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def partition_problem(folder: str | os.PathLike) -> str | None:
    """What keeps ``folder`` from being a usable partition (its ``partition.json`` is missing, not JSON, or not of a
    partition's shape), or ``None``."""
    record_file = Path(folder) / PARTITION_NAME
    try:
        record = json.loads(record_file.read_text())
    except FileNotFoundError:
        return f"no {PARTITION_NAME}"
    except (OSError, ValueError) as err:
        return f"{record_file}: cannot be read as JSON ({type(err).__name__}: {str(err).splitlines()[0]})"
    signature = record.get("signature") if isinstance(record, dict) else None
    prior = signature.get("prior") if isinstance(signature, dict) else None
    if not isinstance(prior, dict) or not isinstance(prior.get("generator", {}), dict):
        return f"{record_file}: not a partition record (expected {{\"signature\": {{\"prior\": {{...}}}}}})"
    return None


def list_partitions(cache_dir: str | os.PathLike) -> list[dict]:
    """One row per partition of ``cache_dir``: name, generator, model, checkpoint hash, cases, bytes, settings.

    ``settings`` holds the flattened prior signature; folders that are not usable partitions (an older cache layout,
    other files, a missing or malformed ``partition.json``) are listed with ``generator: None`` and ``problem``
    saying why.

    Raises:
        FileNotFoundError: ``cache_dir`` is not a folder.
    """
    root = Path(cache_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a prior cache folder (it does not exist)")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = partition_problem(folder)
        if problem is not None:
            rows.append({"partition": folder.name, "generator": None, "model": None, "checkpoint_sha256": None,
                         "cases": 0, "bytes": _size(folder), "created": None, "settings": {}, "problem": problem})
            continue
        record = json.loads((folder / PARTITION_NAME).read_text())
        prior = record["signature"]["prior"]
        generator = prior.get("generator", {})
        sam = _find_sam(prior)
        rows.append({
            "partition": folder.name,
            # partitions of other stages (WeakMedSAM's features and pseudo labels) have no generator: their label
            "generator": generator.get("generator") or folder.name.rsplit("-", 1)[0],
            "model": sam.get("model_type"),
            "checkpoint_sha256": sam.get("checkpoint_sha256"),
            "cases": sum(1 for _ in folder.glob(f"*/{ENTRY_NAME}")),
            "bytes": _size(folder),
            "created": record.get("created"),
            "settings": _flatten("", prior, {}),
            "problem": None,
        })
    return rows


def prune_partition(cache_dir: str | os.PathLike, partition: str, force: bool = False) -> int:
    """Delete one partition; returns the bytes freed.

    Args:
        force: also delete a folder of ``cache_dir`` that is not a usable partition (see :func:`partition_problem`).

    Raises:
        FileNotFoundError: no such partition (the message lists the ones there are), or, without ``force``, a folder
            that is not a usable partition (the message says what is wrong and to pass ``--force``).
    """
    root = Path(cache_dir)
    folder = root / partition
    if os.sep in partition or partition.startswith(".") or partition in ("", "..") or not folder.is_dir():
        names = [r["partition"] for r in list_partitions(root)]
        raise FileNotFoundError(f"{folder}: no such partition; {root} holds {names or 'none'}")
    problem = partition_problem(folder)
    if problem is not None and not force:
        raise FileNotFoundError(f"{folder}: not a usable partition ({problem}); pass --force to remove it anyway")
    freed = _size(folder)
    doomed = root / f".pruning-{partition}-{os.getpid()}"
    os.replace(folder, doomed)
    shutil.rmtree(doomed)
    return freed


def _table(rows: list[dict]) -> str:
    # settings that differ between partitions are what tells them apart; the rest is noise in a listing
    keys = sorted({k for r in rows for k in r["settings"]})
    varying = [k for k in keys if len({json.dumps(r["settings"].get(k)) for r in rows}) > 1]
    varying = [k for k in varying if k not in ("generator.sam.checkpoint_sha256", "generator.generator",
                                               "generator.sam.model_type")]
    lines = []
    for r in rows:
        if r["generator"] is None:
            lines.append(f"{r['partition']}  (not a usable partition: {r['problem']}; {format_bytes(r['bytes'])}; "
                         "prune it with --force)")
            continue
        sha = (r["checkpoint_sha256"] or "")[:12]
        model = f"{r['model']} ({sha})" if r["model"] else "-"
        lines.append(f"{r['partition']}  generator={r['generator']}  model={model}  cases={r['cases']}  "
                     f"size={format_bytes(r['bytes'])}  created={r['created']}")
        for k in varying:
            lines.append(f"    {k} = {json.dumps(r['settings'].get(k))}")
    return "\n".join(lines) if lines else "(empty cache)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam-priors-cache", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list the partitions of a cache folder")
    ls.add_argument("cache_dir")
    ls.add_argument("--json", action="store_true", help="print the rows as JSON")
    pr = sub.add_parser("prune", help="remove one partition")
    pr.add_argument("cache_dir")
    pr.add_argument("partition")
    pr.add_argument("--force", action="store_true",
                    help="also remove a folder that is not a usable partition (no partition.json, or a malformed one; "
                         "'list' shows them)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            rows = list_partitions(args.cache_dir)
            print(json.dumps(rows, indent=1) if args.json else _table(rows))
        else:
            freed = prune_partition(args.cache_dir, args.partition, force=args.force)
            print(f"removed {args.partition} ({format_bytes(freed)})")
    except FileNotFoundError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
