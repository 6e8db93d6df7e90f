"""Kinetics (or any `<class>/<clip>` set) videos -> TSM frame folders and list files.

Output under OUT: `<split>/<video id>/img_%05d.jpg`, `<split>_list.txt` (`<split>/<video id> <frames>
<label>`), `classes.txt` and `missing_<split>.txt` (`<split>/<video id> <reason>`). A Kinetics set is
hundreds of thousands of videos, so the run is parallel, resumable (per-folder `.done` markers) and
can be cut into deterministic shards (sorted video id, index % N == i) whose list files are merged
automatically by the shard that finishes last, or by `merge_shards`.
"""

from __future__ import annotations

import csv as csvlib
import multiprocessing
import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from vidcli import console, fsio
from vidcli.datasets import frames as framesmod
from vidcli.datasets.layout import SPLITS, is_video
from vidcli.errors import BAD_INPUT, VidcliError, fail

DEFAULT_SHORT_SIDE = 256
DEFAULT_QUALITY = 90
SETTINGS_FILE = ".frames_settings.json"
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_WHITESPACE = re.compile(r"\s+")
_SPLIT_ALIASES = {"validate": "val", "validation": "val"}


@dataclass(frozen=True)
class Job:
    vid: str
    label: int
    video: Path | None


def safe_class_name(label: str) -> str:
    """Folder-safe class name, the way TSM's gen_label_kinetics.py makes them."""
    name = label.strip().replace(" ", "_")
    for ch in "\"'()":
        name = name.replace(ch, "")
    return name


def kinetics_video_id(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}"


def read_kinetics_csv(path: Path) -> tuple[list[tuple[str, str, str]], set[str]]:
    """Rows as (video id, youtube id, folder-safe class) and the values of the `split` column."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csvlib.DictReader(fh)
            absent = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise VidcliError(f"{path}: not a Kinetics CSV (missing column {', '.join(absent)})")
            rows: list[tuple[str, str, str]] = []
            splits: set[str] = set()
            seen: set[str] = set()
            for lineno, row in enumerate(reader, 2):
                try:
                    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                except (TypeError, ValueError):
                    raise VidcliError(f"{path}:{lineno}: time_start/time_end must be numbers") from None
                yid, label = (row["youtube_id"] or "").strip(), safe_class_name(row["label"] or "")
                if not yid or not label:
                    raise VidcliError(f"{path}:{lineno}: empty youtube_id or label")
                vid = kinetics_video_id(yid, start, end)
                if vid not in seen:
                    seen.add(vid)
                    rows.append((vid, yid, label))
                if row.get("split"):
                    splits.add(row["split"].strip())
    except FileNotFoundError as exc:
        raise VidcliError(f"{path}: CSV file not found") from exc
    except (OSError, UnicodeDecodeError, csvlib.Error) as exc:
        raise VidcliError(f"{path}: not a readable CSV ({exc})") from exc
    if not rows:
        raise VidcliError(f"{path}: no rows")
    return rows, splits


def _index_videos(src: Path) -> dict[str, Path]:
    """Video files under `src` (any depth) by file stem; the first in sorted order wins."""
    found: dict[str, Path] = {}
    for p in sorted(src.rglob("*")):
        if p.is_file() and is_video(p):
            found.setdefault(p.stem, p)
    return found


Plan = dict[str, list[tuple[str, str, Path | None]]]


def _plan_csv(src: Path, csv: Path, split: str | None) -> tuple[Plan, set[str]]:
    rows, csv_splits = read_kinetics_csv(csv)
    if split is None:
        names = {_SPLIT_ALIASES.get(s, s) for s in csv_splits}
        if len(names) != 1:
            raise VidcliError(f"{csv}: cannot tell the split from its 'split' column; pass --split")
        split = names.pop()
    files = _index_videos(src)
    planned = [(vid, label, files.get(vid) or files.get(yid)) for vid, yid, label in rows]
    return {split: planned}, {label for _, _, label in rows}


def _plan_folders(src: Path, split: str | None) -> tuple[Plan, set[str]]:
    if split is not None:
        dirs = {split: src / split if (src / split).is_dir() else src}
    else:
        present = {s: src / s for s in SPLITS if (src / s).is_dir()}
        dirs = present or {"train": src}
    plan: Plan = {}
    classes: set[str] = set()
    for name, root in dirs.items():
        items: dict[str, tuple[str, str, Path | None]] = {}
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = safe_class_name(class_dir.name)
            for clip in sorted(class_dir.iterdir()):
                if clip.is_file() and is_video(clip):
                    vid = f"{label}/{_WHITESPACE.sub('_', clip.stem.strip())}"  # TSM splits list lines on spaces
                    items.setdefault(vid, (vid, label, clip))
                    classes.add(label)
        if not items:
            raise VidcliError(f"{root}: no videos found (expected {root}/<class>/<clip>)")
        plan[name] = list(items.values())
    return plan, classes


def resolve_classes(out: Path, names: set[str]) -> list[str]:
    """Sorted class names, or the existing classes.txt when it covers `names` (indices never shift)."""
    path = out / "classes.txt"
    if path.exists():
        existing = framesmod.read_classes(path)
        new = sorted(names - set(existing))
        if new:
            more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
            raise VidcliError(
                f"{path}: class '{new[0]}'{more} is not in the existing classes and would shift their indices; "
                "use a new --out or delete classes.txt and the list files"
            )
        return existing
    classes = sorted(names)
    fsio.write_text(path, "".join(f"{c}\n" for c in classes))
    return classes


def _check_settings(split_dir: Path, settings: dict) -> None:
    path = split_dir / SETTINGS_FILE
    if path.exists():
        old = fsio.read_json(path)
        if old != settings:
            raise VidcliError(
                f"{split_dir} was extracted with {old}, not {settings}; rerun with those settings or use a new --out"
            )
    else:
        fsio.write_json(path, settings)


def _shard_name(stem: str, shard: tuple[int, int] | None) -> str:
    return f"{stem}.txt" if shard is None else f"{stem}.shard{shard[0]}of{shard[1]}.txt"


def _init_worker() -> None:
    """Workers leave Ctrl-C to the parent, which lets the videos in progress finish cleanly."""
    import cv2  # vidcli.video, imported with this module, already quieted FFmpeg

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def _extract(video: Path, folder: Path, settings: dict) -> tuple[int, str, bool]:
    """Runs in a worker: (frames, "", False) on success, (0, reason, fatal) on failure. A bad video is
    not fatal; an output that cannot be written (disk full, read-only) is, as every video would fail."""
    try:
        n, _ = framesmod.write_frame_folder(video, folder, **settings)
        return n, "", False
    except VidcliError as exc:
        return 0, str(exc), exc.exit_code != BAD_INPUT
    except OSError as exc:
        return 0, f"cannot write {exc.filename or folder}: {exc.strerror or exc}", True
    except Exception as exc:  # cv2.error and friends: one bad video must not stop a 650k-video run
        return 0, f"{video}: {type(exc).__name__}: {exc}", False


def _run(tasks: list[tuple[Path, Path]], settings: dict, workers: int) -> Iterator[tuple[int, tuple[int, str, bool]]]:
    """(task index, result) in completion order; at most a few tasks per worker are in flight."""
    if workers <= 1 or len(tasks) <= 1:
        for i, (video, folder) in enumerate(tasks):
            yield i, _extract(video, folder, settings)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    queue = iter(enumerate(tasks))
    pending: dict[Future, int] = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker) as pool:
        try:
            def submit() -> None:
                for i, (video, folder) in queue:
                    pending[pool.submit(_extract, video, folder, settings)] = i
                    if len(pending) >= workers * 4:
                        return

            submit()
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    yield pending.pop(fut), fut.result()
                submit()
        except BrokenProcessPool as exc:
            raise fail(f"a worker process died ({exc}); rerun the same command to resume") from exc
        except BaseException as exc:
            for fut in pending:
                fut.cancel()
            if isinstance(exc, KeyboardInterrupt):
                console.warn("interrupted: finishing the videos in progress; rerun the same command to resume")
            raise


def _write_lists(out: Path, split: str, ok: list[tuple[str, int, int]], missing: list[tuple[str, str]],
                 shard: tuple[int, int] | None) -> tuple[Path, Path]:
    miss_path = out / _shard_name(f"missing_{split}", shard)
    list_path = out / _shard_name(f"{split}_list", shard)
    fsio.write_text(miss_path, "".join(f"{split}/{vid} {reason}\n" for vid, reason in sorted(missing)))
    fsio.write_text(list_path, "".join(f"{split}/{vid} {n} {label}\n" for vid, n, label in sorted(ok)))
    return list_path, miss_path


def merge_shards(out: Path, split: str, num_shards: int | None = None, *, strict: bool = True) -> dict | None:
    """Join `<split>_list.shard<i>of<N>.txt` (and the missing files) into the unsharded names.

    With `strict` False, returns None instead of raising while some shard has not finished yet.
    """
    out = Path(out)
    pattern = re.compile(rf"^{re.escape(split)}_list\.shard(\d+)of(\d+)\.txt$")
    found: dict[int, set[int]] = {}
    for p in out.glob(f"{split}_list.shard*of*.txt"):
        m = pattern.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if num_shards is None:
        if len(found) != 1:
            if not strict:
                return None
            what = "no shard list files" if not found else f"shard files for several shard counts {sorted(found)}"
            raise VidcliError(f"{out}: {what} for split '{split}'")
        num_shards = next(iter(found))
    lacking = sorted(set(range(num_shards)) - found.get(num_shards, set()))
    if lacking:
        if not strict:
            return None
        raise VidcliError(f"{out}: split '{split}' shards {', '.join(map(str, lacking))} of {num_shards} not finished")
    lists, misses = [], []
    for i in range(num_shards):
        lists += (out / _shard_name(f"{split}_list", (i, num_shards))).read_text(encoding="utf-8").splitlines()
        miss = out / _shard_name(f"missing_{split}", (i, num_shards))
        if miss.exists():
            misses += miss.read_text(encoding="utf-8").splitlines()
    list_path, miss_path = out / f"{split}_list.txt", out / f"missing_{split}.txt"
    fsio.write_text(miss_path, "".join(f"{line}\n" for line in sorted(filter(None, misses))))
    fsio.write_text(list_path, "".join(f"{line}\n" for line in sorted(filter(None, lists))))
    return {"split": split, "shards": num_shards, "videos": len(lists), "missing": len(misses),
            "list": str(list_path), "missing_file": str(miss_path)}


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise VidcliError(f"--shard must be i/N with 0 <= i < N (got '{text}')")
    return int(m.group(1)), int(m.group(2))


def _validate(src: Path, csv: Path | None, split: str | None, short_side: int | None, height: int | None,
              quality: int, workers: int, shard: tuple[int, int] | None) -> int | None:
    if not src.is_dir():
        raise VidcliError(f"{src}: video folder not found")
    if csv is not None and not csv.is_file():
        raise VidcliError(f"{csv}: CSV file not found")
    if split is not None and (not split or split != Path(split).name or split.startswith(".")):
        raise VidcliError(f"--split must be a plain folder name such as train (got '{split}')")
    if short_side is not None and height is not None:
        raise VidcliError("give --short-side or --height, not both")
    for name, value in (("--short-side", short_side), ("--height", height)):
        if value is not None and value < 1:
            raise VidcliError(f"{name} must be >= 1 (got {value})")
    if not 1 <= quality <= 100:
        raise VidcliError(f"--quality must be in 1..100 (got {quality})")
    if workers < 1:
        raise VidcliError(f"--workers must be >= 1 (got {workers})")
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise VidcliError(f"--shard must be i/N with 0 <= i < N (got {shard[0]}/{shard[1]})")
    return DEFAULT_SHORT_SIDE if short_side is None and height is None else short_side


def extract_kinetics_frames(
    src: Path,
    out: Path,
    *,
    split: str | None,
    csv: Path | None,
    short_side: int | None,
    height: int | None,
    quality: int = DEFAULT_QUALITY,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Extract frames for every video of the split(s); returns the JSON summary.

    Bad or absent videos go to missing_<split>.txt and the run carries on (each failure printed as an
    `error:` line); only a run in which every video failed is an error (after the list files are
    written). The CLI exits PARTIAL when `failed` > 0; absent videos (a Kinetics CSV lists many that
    are no longer downloadable) are warned about but are no failure.
    """
    src, out = Path(src), Path(out)
    csv = Path(csv) if csv is not None else None
    short_side = _validate(src, csv, split, short_side, height, quality, workers, shard)
    plan, names = _plan_csv(src, csv, split) if csv is not None else _plan_folders(src, split)
    classes = resolve_classes(out, names)
    index = {c: i for i, c in enumerate(classes)}
    settings = {"short_side": short_side, "height": height, "quality": quality}

    jobs: dict[str, list[Job]] = {}
    for name, items in plan.items():
        ordered = sorted(items, key=lambda it: it[0])
        if shard is not None:
            ordered = [it for k, it in enumerate(ordered) if k % shard[1] == shard[0]]
        jobs[name] = [Job(vid, index[label], video) for vid, label, video in ordered]

    stats = {name: {"done": 0, "skipped": 0, "failed": 0, "absent": 0, "frames": 0} for name in jobs}
    ok: dict[str, list[tuple[str, int, int]]] = {name: [] for name in jobs}
    missing: dict[str, list[tuple[str, str]]] = {name: [] for name in jobs}
    tasks: list[tuple[Path, Path]] = []
    owners: list[tuple[str, Job]] = []
    for name, split_jobs in jobs.items():
        split_dir = out / name
        try:
            split_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"cannot create {split_dir}: {exc.strerror or exc}") from exc
        _check_settings(split_dir, settings)
        for job in split_jobs:
            folder = split_dir / job.vid
            count = framesmod.read_done(folder)
            if count is not None:
                stats[name]["skipped"] += 1
                stats[name]["frames"] += count
                ok[name].append((job.vid, count, job.label))
            elif job.video is None:
                stats[name]["absent"] += 1
                missing[name].append((job.vid, f"not on disk (listed in {csv.name if csv else src})"))
            else:
                tasks.append((job.video, folder))
                owners.append((name, job))
        s = stats[name]
        console.log(f"{name}: {len(split_jobs)} videos, {s['skipped']} already done, {s['absent']} not on disk")
        if s["absent"]:
            console.warn(f"{name}: {s['absent']} listed videos are not under {src} (see missing_{name}.txt)")

    if tasks:
        console.log(f"extracting {len(tasks)} videos with {min(workers, len(tasks))} worker(s)")
    with console.progress(len(tasks), "extracting frames") as advance:
        for i, (count, reason, fatal) in _run(tasks, settings, workers):
            name, job = owners[i]
            if fatal:
                raise fail(f"{reason}; stopped (finished videos are kept: rerun the same command to resume)")
            if reason:
                stats[name]["failed"] += 1
                missing[name].append((job.vid, reason))
                console.error(reason)
            else:
                stats[name]["done"] += 1
                stats[name]["frames"] += count
                ok[name].append((job.vid, count, job.label))
            advance(1)

    summary_splits: dict[str, dict] = {}
    for name in jobs:
        list_path, miss_path = _write_lists(out, name, ok[name], missing[name], shard)
        entry = {**stats[name], "list": str(list_path), "missing": str(miss_path), "merged": None}
        if shard is not None:
            merged = merge_shards(out, name, shard[1], strict=False)
            entry["merged"] = merged["list"] if merged else None
            if merged:
                console.log(f"{name}: all {shard[1]} shards finished; merged into {merged['list']}")
        summary_splits[name] = entry

    totals = {k: sum(s[k] for s in stats.values()) for k in ("done", "skipped", "failed", "absent")}
    summary = {"out": str(out), "classes": str(out / "classes.txt"), "num_classes": len(classes), **totals,
               "shard": list(shard) if shard else None, "settings": settings, "splits": summary_splits}
    attempted = sum(len(v) for v in jobs.values())
    if attempted and totals["done"] + totals["skipped"] == 0:
        raise fail(f"no video could be extracted ({totals['failed']} failed, {totals['absent']} not on disk); "
                   f"reasons in {', '.join(e['missing'] for e in summary_splits.values())}")
    if not attempted:
        console.warn("nothing to do: this shard holds no videos")
    return summary


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
