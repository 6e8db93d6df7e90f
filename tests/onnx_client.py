"""A client that classifies a video with an exported vidcli model using only onnxruntime, OpenCV, numpy and the
file's metadata: the proof that the model card says everything needed to reproduce the input. It deliberately
imports nothing from vidcli."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort


def _frames(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def _resize(img: np.ndarray, w: int, h: int, shrinking: bool) -> np.ndarray:
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _letterbox(img: np.ndarray, th: int, tw: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (th, tw):
        return img
    s = min(th / h, tw / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = _resize(img, nw, nh, s < 1)
    out = np.zeros((th, tw, 3), np.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def _cover_crop(img: np.ndarray, th: int, tw: int, ratio: float) -> np.ndarray:
    h, w = img.shape[:2]
    f = max(th * ratio / h, tw * ratio / w)
    nh, nw = max(th, round(h * f)), max(tw, round(w * f))
    if (nh, nw) != (h, w):
        img = _resize(img, nw, nh, f < 1)
    y, x = (nh - th) // 2, (nw - tw) // 2
    return img[y : y + th, x : x + tw]


def preprocess(path: str, meta: dict[str, str]) -> np.ndarray:
    """uint8 clip -> the model's float input, following the metadata alone."""
    frames = _frames(path)
    t = int(meta["frames"])
    th, tw = json.loads(meta["size"])
    n = len(frames)
    if meta["sampling"] == "center":
        step = int(meta["frame_step"])
        start = max(n - (1 + (t - 1) * step), 0) // 2
        picked = [frames[min(start + i * step, n - 1)] for i in range(t)]
        clip = [_letterbox(f, th, tw) for f in picked]
    else:  # segments: the centre frame of each of t equal segments, resize to cover then centre crop
        tick = n / t
        picked = [frames[int(tick * 0.5 + tick * k)] for k in range(t)]
        clip = [_cover_crop(f, th, tw, float(meta["crop_ratio"])) for f in picked]
    norm = json.loads(meta["normalization"])
    x = (np.stack(clip)[None].astype(np.float32) * np.float32(norm["scale"]) - np.float32(norm["mean"])) / \
        np.float32(norm["std"])
    if meta["layout"] != "NTHWC":
        x = x.transpose(0, 1, 4, 2, 3)
        if meta["layout"] == "N(TC)HW":
            x = x.reshape(1, -1, th, tw)
    return np.ascontiguousarray(x, dtype=np.float32)


def classify(model_path: str, video: str) -> np.ndarray:
    """Class probabilities of one video (stream models fed frame by frame through their stream_states)."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    x = preprocess(video, meta)
    if "stream_states" not in meta:
        logits = session.run(["logits"], {session.get_inputs()[0].name: x})[0][0]
    else:
        states = {s["name"]: np.zeros(s["shape"], s["dtype"]) for s in json.loads(meta["stream_states"])}
        outputs = ["logits", *(s["output"] for s in json.loads(meta["stream_states"]))]
        t = int(meta["frames"])
        per_frame = x.reshape(t, 3, *x.shape[-2:]) if meta["layout"] == "N(TC)HW" else x[0]
        total = 0.0
        for i in range(t):
            frame = per_frame[i][None] if meta["stream_frame_layout"] == "NCHW" else per_frame[i][None, None]
            values = session.run(outputs, {meta["stream_input"]: np.ascontiguousarray(frame), **states})
            states = {s["name"]: v for s, v in zip(json.loads(meta["stream_states"]), values[1:], strict=True)}
            total = values[0][0] if meta["stream_logits"] == "running" else total + values[0][0]
        logits = total if meta["stream_logits"] == "running" else total / t
    z = np.exp(logits - logits.max())
    return z / z.sum()
