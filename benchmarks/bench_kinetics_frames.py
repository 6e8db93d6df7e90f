"""Frame extraction throughput: `vidcli data kinetics-frames` vs the reference's ffmpeg command.

The reference (TSM's `vid2img_kinetics.py`) runs `ffmpeg -i VIDEO -threads 1 -vf scale=-1:331 -q:v 0
img_%05d.jpg`, one process per video, from a pool of N workers. vidcli decodes with OpenCV and writes
JPEGs atomically with a `.done` marker per folder, in N worker processes. Both make frames 331 pixels
high from the real test videos; each side starts from an empty output folder. Frames per second counts
the frames written (ffmpeg's image muxer pads a video whose header overstates its length, e.g. tree.avi,
with repeated frames), source frames per second counts the frames the videos really hold (vidcli's
count); bytes per frame shows the JPEG quality each side chose (vidcli 90, `-q:v 0` near-lossless).

    python benchmarks/bench_kinetics_frames.py [--quick] [--out FILE] [--workers 1 2] [--repeat 2]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HEIGHT = 331
VIDEOS = ("Megamind.avi", "tree.avi", "box.mp4")


def _source(tmp: Path, names: tuple[str, ...]) -> tuple[Path, list[Path]]:
    """<tmp>/src/<class>/<video>: the folder layout `kinetics-frames` reads without a CSV."""
    videos = []
    for k, name in enumerate(names):
        video = common.VIDEOS / name
        if not video.is_file():
            raise SystemExit(f"test video missing: {video}")
        dst = tmp / "src" / f"class{k}" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(video)
        videos.append(dst)
    return tmp / "src", videos


def _folder_stats(out: Path) -> tuple[int, int]:
    jpgs = list(out.rglob("*.jpg"))
    return len(jpgs), sum(p.stat().st_size for p in jpgs)


def run_vidcli(src: Path, out: Path, workers: int) -> float:
    from vidcli.datasets.kinetics import extract_kinetics_frames

    t0 = time.perf_counter()
    extract_kinetics_frames(src, out, split="train", csv=None, short_side=None, height=HEIGHT, workers=workers)
    return time.perf_counter() - t0


def run_ffmpeg(videos: list[Path], out: Path, workers: int) -> float:
    def one(video: Path) -> None:
        folder = out / video.stem
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(video), "-threads", "1",
               "-vf", f"scale=-1:{HEIGHT}", "-q:v", "0", str(folder / "img_%05d.jpg")]
        subprocess.run(cmd, check=True, capture_output=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, videos))
    return time.perf_counter() - t0


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Worker counts to compare.")
    p.add_argument("--repeat", type=int, default=None, help="Timed runs per setting (default 2, quick 1).")
    args = p.parse_args()
    started, load_before = time.time(), common.loadavg()
    names = ("tree.avi",) if args.quick else VIDEOS
    workers = [1] if args.quick else args.workers
    repeat = args.repeat or (1 if args.quick else 2)
    have_ffmpeg = shutil.which("ffmpeg") is not None
    if not have_ffmpeg:
        common.log("ffmpeg not found (apt-get install -y ffmpeg): only vidcli is timed")
    metrics, details = [], {"videos": list(names), "height": HEIGHT, "repeat": repeat, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp_s:
        tmp = Path(tmp_s)
        src, videos = _source(tmp, names)
        sides = {"vidcli": lambda out, w: run_vidcli(src, out, w)}
        if have_ffmpeg:
            sides["ffmpeg (reference)"] = lambda out, w: run_ffmpeg(videos, out, w)
        rates: dict[str, dict[int, float]] = {}
        source_frames = 0
        for side, fn in sides.items():
            for w in workers:
                times, frames, size = [], 0, 0
                for r in range(repeat):
                    out = tmp / f"out-{side[:6]}-{w}-{r}"
                    times.append(fn(out, w))
                    frames, size = _folder_stats(out)
                    shutil.rmtree(out)
                med = common.summary(times)["median"]
                source_frames = source_frames or frames  # vidcli runs first: its count is the videos' true length
                rates.setdefault(side, {})[w] = source_frames / med
                details["runs"][f"{side} workers={w}"] = {"seconds": common.summary(times), "frames_written": frames,
                                                          "source_frames_per_s": round(source_frames / med, 2),
                                                          "bytes_per_frame": round(size / max(frames, 1))}
                common.log(f"{side} workers={w}: {frames} frames in {med:.2f}s = {frames / med:.1f} frames/s")
                metrics.append(common.metric(f"{side}, {w} worker(s)", source_frames / med, "source frames/s",
                                             note=f"{len(names)} videos, height {HEIGHT}; {frames} written"))
        for side, by_w in rates.items():
            if 1 in by_w and 2 in by_w:
                metrics.append(common.metric(f"{side}: scaling 1 -> 2 workers", by_w[2] / by_w[1], "x",
                                             note=f"{common.machine()['cpus']} CPUs, shared"))
        if have_ffmpeg:
            for w in workers:
                ratio = rates["vidcli"][w] / rates["ffmpeg (reference)"][w]
                metrics.append(common.metric(f"vidcli / ffmpeg, {w} worker(s)", ratio, "x"))
    common.emit(common.document("kinetics_frames", metrics, details, args.quick, load_before, started), args.out)


if __name__ == "__main__":
    main()
