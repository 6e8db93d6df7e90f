"""`vidcli predict` on video URLs and live streams: a real video streamed by FFmpeg (imageio-ffmpeg's binary) over
UDP and HTTP (MPEG-TS) on 127.0.0.1, classified by tiny random-weight models exported through the Python API
(a 4-frame 32x32 r2plus1d clip model and a MoViNet-A0 stream model). Cameras are not testable here.

No timing asserts: tests wait for events (lines, exits) within generous limits, and every FFmpeg process they
start is killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import VIDEOS, env, one_error_line, plain_onnx_model
from httpserver import FileServer
from typer.testing import CliRunner

from vidcli.cli.main import app
from vidcli.errors import VidcliError

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
VIDEO = VIDEOS / "Megamind.avi"  # 720x528 MPEG-4 at 23.98 fps, 11 s
ENCODE = ["-an", "-vf", "scale=160:-2", "-c:v", "mpeg2video", "-g", "6", "-q:v", "5", "-f", "mpegts"]
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

MAKE_MODELS = """
import sys
from pathlib import Path
import numpy as np
from vidcli import recipe
from vidcli.backends import registry
from vidcli.exporting import export_model

out = Path(sys.argv[1])
for name, model in [("clip", {"arch": "r2plus1d", "params": {"filters": [4, 8]}}),
                    ("stream", {"arch": "movinet", "params": {"model_id": "a0", "causal": True}})]:
    rec = recipe.parse({"name": name, "model": model,
                        "data": {"root": str(out / "none"), "frames": 4, "frame_step": 2, "size": [32, 32]}})
    spec, backend = registry.spec(rec.model.arch), registry.backend(rec.model.arch)
    card = spec.card(rec, ["down", "left", "right"], (4, 32, 32, 3))
    clips = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    export_model(backend, backend.build(rec, 3, (4, 32, 32, 3)), card, clips, "random clips", out / f"{name}.onnx",
                 17, 1e-4, stream=spec.is_stream(registry.check_recipe(rec)))
"""


@pytest.fixture(scope="session")
def live_models(tmp_path_factory) -> dict[str, Path]:
    """Random-weight clip and stream models, exported in a subprocess (TensorFlow stays out of this one)."""
    out = tmp_path_factory.mktemp("live_models")
    proc = subprocess.run([sys.executable, "-c", MAKE_MODELS, str(out)], capture_output=True, text=True, env=env(),
                          timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"clip": out / "clip.onnx", "stream": out / "stream.onnx"}


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory) -> Path:
    return plain_onnx_model(tmp_path_factory.mktemp("plain") / "plain.onnx", ["red", "green", "blue"])


# -- senders ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def ffmpeg(*args: str, stdout=subprocess.DEVNULL):
    proc = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", *args], stdout=stdout,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def free_udp_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"udp://127.0.0.1:{s.getsockname()[1]}"


def source_args(seconds: float | None = None) -> list[str]:
    """The test video in real time: looped forever, or `seconds` of it once."""
    return ["-re", *(["-stream_loop", "-1"] if seconds is None else []), "-i", str(VIDEO),
            *(["-t", str(seconds)] if seconds else []), *ENCODE]


@contextlib.contextmanager
def udp_stream(seconds: float | None = None):
    url = free_udp_url()
    with ffmpeg(*source_args(seconds), f"{url}?pkt_size=1316") as proc:
        yield url, proc


class HttpLive:
    """FFmpeg's MPEG-TS relayed to every HTTP client as a chunked body with no length: a live HTTP stream, started
    by the first GET (so a slow client never misses a short one). FFmpeg's normal exit ends each body properly
    (the last chunk); `cut()` drops the connections mid-body (FFmpeg goes on, so a client that comes back joins
    the stream); a killed FFmpeg cuts them too."""

    END, CUT = b"", None

    def __init__(self, seconds: float | None = None):
        self.seconds, self.clients, self.lock, self.gets = seconds, [], threading.Lock(), 0
        self.proc: subprocess.Popen | None = None
        self._stack, self._stopped = contextlib.ExitStack(), False

    def __enter__(self) -> HttpLive:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                inbox: queue.Queue = queue.Queue()
                with owner.lock:
                    owner.gets += 1
                    owner.clients.append(inbox)
                    if owner.proc is None:
                        owner._start()
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while True:
                        item = inbox.get()
                        if item is HttpLive.CUT:
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(item), item) if item else b"0\r\n\r\n")
                        self.wfile.flush()
                        if not item:
                            return
                except OSError:
                    pass
                finally:
                    with owner.lock:
                        owner.clients.remove(inbox)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def _start(self) -> None:
        self.proc = self._stack.enter_context(ffmpeg(*source_args(self.seconds), "pipe:1", stdout=subprocess.PIPE))
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        while data := proc.stdout.read1(1 << 16):
            self._send(data)
        self._send(self.END if proc.wait() == 0 else self.CUT)

    def _send(self, item) -> None:
        with self.lock:
            for inbox in self.clients:
                inbox.put(item)

    def cut(self) -> None:
        self._send(self.CUT)

    def kill(self) -> None:
        """FFmpeg dies and the server with it: clients are cut, and a reconnect is refused."""
        with self.lock:
            if self.proc is not None:
                self.proc.kill()
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/live.ts"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._stack.close()


class Cli:
    """`python -m vidcli ARGS` with its stdout read line by line as it comes."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "vidcli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env(), cwd=REPO)
        self.lines: queue.Queue = queue.Queue()
        self.raw = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            self.raw += line
            self.lines.put(line)

    def wait_lines(self, n: int, limit: float = 120) -> None:
        for _ in range(n):
            try:
                self.lines.get(timeout=limit)
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"fewer than {n} lines: {self.proc.communicate()[1].decode()[-2000:]}")

    def finish(self, limit: float = 120) -> tuple[int, str, str]:
        try:
            _, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"vidcli did not exit within {limit} s: {err.decode()[-2000:]}")
        self._reader.join(10)
        return self.proc.returncode, self.raw.decode(), err.decode()


def json_lines(stdout: str) -> list[dict]:
    """Every line complete: the text ends with a newline and each line is one JSON object."""
    assert stdout.endswith("\n"), repr(stdout[-200:])
    return [json.loads(line) for line in stdout.splitlines()]


# -- URLs, options and the reader's rules (fast) ---------------------------------------------------------


def test_url_is_a_file_when_its_length_is_known_and_live_otherwise():
    from vidcli.video import live

    with FileServer({"/v/box.mp4": (VIDEOS / "box.mp4").read_bytes()}) as server:
        kind = live.classify_url(server.url("/v/box.mp4"))
        assert not kind.live and kind.response is None and "Content-Length" in kind.why
        forced = live.classify_url(server.url("/v/box.mp4"), live=True)
        assert forced.live and forced.response is not None and forced.why == "--live"
        forced.response.close()
    with HttpLive(seconds=2) as relay:
        kind = live.classify_url(relay.url)
        assert kind.live and kind.why == "no Content-Length"
        kind.source(5.0).close()
    assert live.classify_url("rtsp://127.0.0.1:1/x").live and live.classify_url("udp://127.0.0.1:1").live
    with pytest.raises(VidcliError, match="unsupported URL scheme 'ftp'"):
        live.is_url("ftp://example.com/a.mp4")
    assert not live.is_url("clips/a.mp4")


def test_window_takes_the_models_own_clip():
    from vidcli.live import default_window, window_positions
    from vidcli.modelcard import ModelCard

    card = ModelCard(["a", "b"], frames=8, size=(32, 32), frame_step=15)
    assert default_window(card) == 106
    assert window_positions(card, 106).tolist() == list(range(0, 106, 15))
    assert window_positions(card, 8).tolist() == list(range(8))
    tsm = ModelCard(["a", "b"], frames=8, size=(32, 32), sampling="segments", resize="cover_crop")
    assert default_window(tsm) == 64 and window_positions(tsm, 64).tolist() == list(range(4, 64, 8))


@pytest.mark.parametrize(
    ("args", "said"),
    [(["--window", "8"], "--window: for live sources"),
     (["--duration", "3", "--stride", "2"], "--stride, --duration: for live sources"),
     (["--reconnect", "1"], "--reconnect: for live sources"),
     (["--camera", "0"], "--camera is the only input")],
)
def test_live_options_with_files_are_refused(plain_onnx, args, said):
    result = runner.invoke(app, ["predict", str(VIDEOS / "box.mp4"), "-m", str(plain_onnx), *args])
    assert result.exit_code == 2, result.stderr
    assert said in one_error_line(result.stderr, only=False)


@pytest.mark.parametrize(("args", "said"), [(["--batch", "4"], "--batch: for files"),
                                            (["--clips", "2", "--index", "1"], "--clips, --index: for files")])
def test_file_options_with_a_live_source_are_refused(plain_onnx, args, said):
    result = runner.invoke(app, ["predict", free_udp_url(), "-m", str(plain_onnx), "--timeout", "1", *args])
    assert result.exit_code == 2, result.stderr
    assert said in one_error_line(result.stderr, only=False)


def test_url_that_404s_is_one_line_exit_2(plain_onnx):
    with FileServer({}) as server:
        result = runner.invoke(app, ["predict", server.url("/nothing.mp4"), "-m", str(plain_onnx), "--json"])
    assert result.exit_code == 2
    assert "HTTP 404" in json.loads(result.stdout)["error"]
    assert "HTTP 404" in one_error_line(result.stderr, only=False)


def test_stream_that_never_sends_is_one_line_exit_2(plain_onnx):
    url = free_udp_url()  # nothing sends there
    result = runner.invoke(app, ["predict", url, "-m", str(plain_onnx), "--json", "--timeout", "1",
                                 "--reconnect", "2"])
    assert result.exit_code == 2 and result.stdout == ""
    line = one_error_line(result.stderr, only=False)
    assert url in line and "within 1 s" in line and "reconnecting" not in result.stderr


def test_live_stream_must_be_the_only_input(plain_onnx):
    with HttpLive(seconds=2) as relay:
        result = runner.invoke(app, ["predict", relay.url, str(VIDEOS / "box.mp4"), "-m", str(plain_onnx)])
    assert result.exit_code == 2
    assert "must be the only input" in one_error_line(result.stderr, only=False)


def test_ts_file_over_http_is_a_file_and_with_live_a_stream(plain_onnx, tmp_path):
    ts = tmp_path / "clip.ts"
    with ffmpeg("-i", str(VIDEO), "-t", "2", *ENCODE, str(ts)) as proc:
        assert proc.wait(120) == 0
    with FileServer({"/clip.ts": ts.read_bytes()}) as server:
        url = server.url("/clip.ts")
        whole = runner.invoke(app, ["predict", url, "-m", str(plain_onnx), "--json"])
        live = runner.invoke(app, ["predict", url, "--live", "-m", str(plain_onnx), "--json", "--stride", "10"])
    assert whole.exit_code == 0 and live.exit_code == 0, whole.stderr + live.stderr
    assert json.loads(whole.stdout)["clips"] == 1 and json.loads(whole.stdout)["source"] == url
    from vidcli.video.decode import iter_frames

    total = sum(1 for _ in iter_frames(ts))
    frames = [line["frame"] for line in json_lines(live.stdout)]  # the body decoded as it came, to its end
    assert frames[0] >= 6 and frames[-1] < total and all(b - a >= 10 for a, b in zip(frames, frames[1:], strict=False))
    assert f"{url}: {total} frames in " in live.stderr


def test_http_stream_through_ffmpeg_when_opencv_cannot_read_bytes(plain_onnx, monkeypatch):
    """OpenCV < 4.11 has no byte-stream capture: FFmpeg then opens the URL itself (a second GET)."""
    from vidcli.video import live

    monkeypatch.setattr(live, "http_stream_supported", lambda: False)
    with HttpLive(seconds=2) as relay:
        result = runner.invoke(app, ["predict", relay.url, "-m", str(plain_onnx), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout) and relay.gets == 2


PROBE = """
import runpy, sys
sys.argv = ["vidcli", *sys.argv[1:]]
try:
    runpy.run_module("vidcli", run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code, sorted(m for m in ("tensorflow", "torch", "keras") if m in sys.modules))
"""


def test_live_predict_with_onnx_imports_no_framework(plain_onnx):
    with udp_stream() as (url, _):
        proc = subprocess.run([sys.executable, "-c", PROBE, "predict", url, "-m", str(plain_onnx), "--json",
                               "--duration", "1"], capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
    lines = proc.stdout.splitlines()
    assert lines[-1] == "exit 0 []", proc.stderr
    assert all(json.loads(line)["source"] == url for line in lines[:-1])


def test_live_text_view_prints_whole_lines(plain_onnx):
    with udp_stream() as (url, _):
        result = runner.invoke(app, ["predict", url, "-m", str(plain_onnx), "--duration", "1.5", "-k", "2"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and result.stdout.endswith("\n")
    assert all(" s  frame " in line and line.count("%") == 2 for line in lines)
    assert "predictions" in result.stderr.splitlines()[-1]


# -- real models on real streams (slow: the models are exported first) -----------------------------------


@pytest.mark.slow
def test_http_file_url_predicts_like_the_file_on_disk(live_models, tmp_path, monkeypatch):
    clip = VIDEOS / "box.mp4"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with FileServer({"/v/box.mp4": clip.read_bytes()}) as server:
        # GET 1 tells file from live (its body is not read); GET 2, the download, is cut and resumed (GET 3)
        server.drop_after, server.drops = 300_000, 2
        url = server.url("/v/box.mp4")
        got = runner.invoke(app, ["predict", url, "-m", str(live_models["clip"]), "--json", "-k", "3"])
        ranges = [r.range for r in server.gets("/v/box.mp4")]
    assert got.exit_code == 0, got.stderr
    disk = runner.invoke(app, ["predict", str(clip), "-m", str(live_models["clip"]), "--json", "-k", "3"])
    assert json.loads(got.stdout) == {**json.loads(disk.stdout), "source": url}
    assert ranges == [None, None, "bytes=300000-"]
    assert list(tmp_path.iterdir()) == []  # the download went with the prediction


@pytest.mark.slow
def test_udp_stream_clip_model_window(live_models):
    with udp_stream() as (url, proc):
        result = runner.invoke(app, ["predict", url, "-m", str(live_models["clip"]), "--json", "-k", "2",
                                     "--stride", "4", "--duration", "3"])
        assert proc.poll() is None  # still sending: the run ended by --duration
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    assert len(lines) >= 2
    for line in lines:
        assert set(line) == {"source", "frame", "time", "top_k", "model"} and line["source"] == url
        assert 0 <= line["time"] < 3 and len(line["top_k"]) == 2 and line["model"] == str(live_models["clip"])
    frames = [line["frame"] for line in lines]
    assert frames[0] >= 6 and all(b - a >= 4 for a, b in zip(frames, frames[1:], strict=False))  # window of 7
    assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)
    assert f"{url}: " in result.stderr and "predictions" in result.stderr


@pytest.mark.slow
def test_http_live_stream_model_until_the_stream_ends(live_models):
    with HttpLive(seconds=3) as relay:
        result = runner.invoke(app, ["predict", relay.url, "--stream", "-m", str(live_models["stream"]), "--json",
                                     "--timeout", "20"])
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    frames = [line["frame"] for line in lines]
    assert len(frames) >= 5 and all(f % 2 == 0 for f in frames)  # every 2nd frame: the card's frame_step
    assert frames == sorted(set(frames))
    assert all(abs(sum(item["probability"] for item in line["top_k"]) - 1) < 1e-3 for line in lines)


@pytest.mark.slow
def test_cut_connection_is_reconnected_and_predictions_go_on(live_models):
    from vidcli import live as live_mod
    from vidcli import models

    clf = live_mod.LiveClassifier(models.open_model(models.resolve(live_models["clip"])), stride=3, source="relay")
    warnings: list[str] = []
    with HttpLive() as relay:
        source = live_mod_source(relay.url)
        with clf.reader(source, timeout=20, reconnect=2, warn=warnings.append) as reader:
            seen = []
            for prediction in clf.predictions(reader):
                seen.append((reader.connections, prediction.frame, prediction.time))
                if len(seen) == 3:
                    relay.cut()
                if sum(c == 2 for c, _, _ in seen) >= 3:
                    break
    assert relay.gets == 2 and reader.connections == 2
    assert len(warnings) == 1 and "reconnecting (1 of 2)" in warnings[0] and "connection lost" in warnings[0]
    assert [f for _, f, _ in seen] == sorted(f for _, f, _ in seen)  # frame numbers and time go on
    assert [t for _, _, t in seen] == sorted(t for _, _, t in seen)


def live_mod_source(url: str):
    from vidcli.video import live

    return live.classify_url(url, timeout=20).source(20)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["udp", "http"])
def test_stream_killed_midway_keeps_its_lines_then_exit_1(live_models, protocol):
    with contextlib.ExitStack() as stack:
        if protocol == "udp":
            url, proc = stack.enter_context(udp_stream())
        else:
            relay = stack.enter_context(HttpLive())
            url = relay.url
        cli = Cli("predict", url, "-m", str(live_models["clip"]), "--json", "--stride", "2", "--timeout", "2",
                  "--reconnect", "1")
        cli.wait_lines(2)
        if protocol == "udp":
            proc.kill()
        else:
            relay.kill()  # the server goes too: the reconnect is refused
        code, stdout, stderr = cli.finish()
    assert code == 1, stderr
    assert len(json_lines(stdout)) >= 2
    line = one_error_line(stderr, only=False)
    assert "stream lost after" in line and "1 reconnect failed" in line
    assert "reconnecting (1 of 1)" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_ctrl_c_exits_130_with_complete_lines(live_models):
    with udp_stream() as (url, _):
        cli = Cli("predict", url, "--stream", "-m", str(live_models["stream"]), "--json")
        cli.wait_lines(3)
        cli.proc.send_signal(signal.SIGINT)
        code, stdout, stderr = cli.finish()
    assert code == 130, stderr
    assert len(json_lines(stdout)) >= 3
    assert "Traceback" not in stderr and "error:" not in stderr and "(stopped by Ctrl-C)" in stderr


class _Slow:
    """A stream model that takes longer per frame than the stream gives it."""

    def __init__(self, model, seconds: float):
        self.model, self.card, self.seconds = model, model.card, seconds

    def initial_states(self):
        return self.model.initial_states()

    def step(self, frame, states):
        threading.Event().wait(self.seconds)
        return self.model.step(frame, states)


@pytest.mark.slow
def test_a_slow_model_drops_frames_and_says_so(live_models):
    from vidcli import live as live_mod
    from vidcli import models

    stream = _Slow(models.open_stream(models.resolve(live_models["stream"])), 0.25)
    clf = live_mod.LiveClassifier(stream, stream=True, source="udp")
    with udp_stream() as (url, _), clf.reader(live_mod_source(url), timeout=20) as reader:
        made = list(clf.predictions(reader, duration=3))
    assert made and reader.dropped > 0
    assert reader.frames >= len(made) + reader.dropped
    assert f"{reader.dropped} frames dropped" in live_mod.summary(reader, len(made), 0.0)
    assert np.all(np.diff([p.frame for p in made]) >= 2)


@pytest.mark.slow
def test_bench_live_quick_writes_json(live_models, tmp_path):
    out = tmp_path / "live.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_live.py"), "--quick", "--models",
                           str(live_models["clip"].parent), "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "live" and doc["quick"] is True
    names = {m["name"] for m in doc["metrics"]}
    assert any("clip model" in n for n in names) and any("stream model" in n for n in names)
