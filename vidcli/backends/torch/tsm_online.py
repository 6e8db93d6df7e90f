"""Online TSM, one frame per call: the official real-time demo's interface on an online `TSM` MobileNetV2.

Each shifted block keeps the first C/shift_div channels of its input as a buffer for the next frame and takes
the previous frame's in their place (zeros to start). `TSM.forward` on a whole clip computes the same thing
with `causal_shift`, so a model trained on clips streams frame by frame with the same weights.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from vidcli.backends.base import Stream
from vidcli.backends.torch.mobilenet_v2 import InvertedResidual, block_inputs, shift_block_indices
from vidcli.backends.torch.tsm import TSM
from vidcli.errors import VidcliError
from vidcli.families.tsm import TsmParams

FRAME_INPUT = "frame"
LOGITS = "logits"


def _require_online(model: Any) -> None:
    if not getattr(model, "online", False) or getattr(model, "backbone", None) != "mobilenet_v2":
        raise VidcliError("not an online TSM: streaming needs model.params.online: true (backbone mobilenet_v2)")


class StreamTSM(nn.Module):
    """`forward(frame, *buffers) -> (logits, *new_buffers)`, buffers in the demo's order (features.3 ... 16).

    It holds the TSM's own modules, so it shares (never copies) the weights."""

    def __init__(self, model: TSM):
        super().__init__()
        _require_online(model)
        self.features = model.base_model.features
        self.new_fc = model.new_fc
        self.shifted = tuple(model.base_model.shift_blocks())
        self.fold_div = model.shift_div

    def forward(self, frame: torch.Tensor, *buffers: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(buffers) != len(self.shifted):
            raise VidcliError(f"the online TSM takes {len(self.shifted)} buffers, got {len(buffers)}")
        x, out, k = frame, [], 0
        for i, layer in enumerate(self.features):
            if i in self.shifted:
                x, buffer = self._step(layer, x, buffers[k])
                out.append(buffer)
                k += 1
            else:
                x = layer(x)
        return (self.new_fc(x.mean(3).mean(2)), *out)

    def _step(self, block: InvertedResidual, x: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The block with the buffer in front of its first 1x1 conv; the shortcut keeps the unshifted input."""
        fold = x.shape[1] // self.fold_div
        y = torch.cat([buffer, x[:, fold:]], dim=1)
        y = block.conv[0].net(y)
        for layer in block.conv[1:]:
            y = layer(y)
        return x + y, x[:, :fold]


def stream_module(model: TSM) -> StreamTSM:
    """The frame-by-frame module of an online TSM (eval mode is the caller's: BatchNorm in train mode would
    use one frame's statistics)."""
    return StreamTSM(model)


def buffer_shapes(model_or_params: TSM | TsmParams, height: int, width: int) -> list[tuple[int, ...]]:
    """Shapes (1, C/shift_div, h, w) of the buffers for height x width frames, in forward-argument order."""
    _require_online(model_or_params)
    div = model_or_params.shift_div
    shifted = set(shift_block_indices())
    return [(1, c // div, h, w) for i, c, h, w in block_inputs(height, width) if i in shifted]


def init_buffers(model: TSM, height: int, width: int, batch: int = 1) -> list[torch.Tensor]:
    """Zero buffers for the first frame, on the model's device."""
    device = next(model.parameters()).device
    return [torch.zeros((batch, *s[1:]), device=device) for s in buffer_shapes(model, height, width)]


def stream_clip(model: TSM, clip: torch.Tensor) -> torch.Tensor:
    """Per-frame logits (B, T, classes) of clips (B, T, 3, H, W) fed one frame at a time from zero buffers."""
    step = stream_module(model)
    b, t, _, h, w = clip.shape
    buffers = init_buffers(model, h, w, b)
    out = []
    for i in range(t):
        logits, *buffers = step(clip[:, i], *buffers)
        out.append(logits)
    return torch.stack(out, dim=1)


def step_onnx(model: TSM, height: int, width: int, opset: int = 17) -> tuple[bytes, list[dict[str, Any]]]:
    """ONNX bytes of one stream step for (1, 3, height, width) normalised frames, and the states' specs:
    input `frame`, outputs `logits` then `buffer_i_next` for every input `buffer_i`."""
    step = stream_module(model)
    was_training = model.training
    model.eval()
    shapes = buffer_shapes(model, height, width)
    device = next(model.parameters()).device
    frame = torch.zeros(1, 3, height, width, device=device)
    buffers = [torch.zeros(s, device=device) for s in shapes]
    names = [f"buffer_{i}" for i in range(len(shapes))]
    states = [{"name": n, "output": f"{n}_next", "shape": list(s), "dtype": "float32"}
              for n, s in zip(names, shapes, strict=True)]
    out = io.BytesIO()
    try:
        with torch.no_grad():
            torch.onnx.export(step, (frame, *buffers), out, dynamo=False, opset_version=opset,
                              input_names=[FRAME_INPUT, *names], output_names=[LOGITS, *(s["output"] for s in states)])
    finally:
        model.train(was_training)
    return out.getvalue(), states


# -- the family contract (`vidcli.backends.base`): stream export and the PyTorch stream runner ----------------


def stream_onnx(model: TSM, card, opset: int = 17):
    """(ONNX bytes, StreamSpec) of one stream step for frames of the card's size; logits are per frame."""
    from vidcli.modelcard import StateSpec, StreamSpec

    raw, states = step_onnx(model.cpu(), *card.size, opset)
    specs = [StateSpec(s["name"], s["output"], tuple(s["shape"]), s["dtype"]) for s in states]
    return raw, StreamSpec(FRAME_INPUT, "NCHW", specs, "per_frame")


class TorchStream(Stream):
    """An online TSM run by PyTorch frame by frame, its buffers carried between calls."""

    frame_layout = "NCHW"
    logits = "per_frame"

    def __init__(self, model: TSM, card):
        _require_online(model)
        self.model = model.eval()
        self.step_module = stream_module(model)
        self.size = tuple(card.size)

    def initial_states(self) -> list[torch.Tensor]:
        return init_buffers(self.model, *self.size)

    @torch.no_grad()
    def step(self, frame, states):
        device = next(self.model.parameters()).device
        out = self.step_module(torch.from_numpy(frame).to(device), *states)
        return out[0].float().cpu().numpy(), list(out[1:])


stream_runner = TorchStream  # the family contract's name (see `vidcli.backends.registry.stream_module`)
