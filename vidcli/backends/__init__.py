"""Framework backends.

TensorFlow prints CUDA probe chatter from C++ straight to file descriptor 2 while it loads, before
any log setting applies; on a CPU machine it is noise in every command's stderr. `quiet_import`
loads it with fd 2 pointed at /dev/null (Python exceptions still propagate; VIDCLI_DEBUG=1 or
`--debug` keeps the chatter).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def split_cpu(tf) -> None:
    """VIDCLI_CPU_DEVICES=N splits the CPU into N logical TF devices, so `train.distribute: mirrored` can
    be tried (and is tested) on a machine without GPUs. Must run before TensorFlow makes its devices."""
    value = os.environ.get("VIDCLI_CPU_DEVICES", "")
    if not value:
        return
    try:
        n = int(value)
    except ValueError:
        from vidcli.errors import VidcliError

        raise VidcliError(f"VIDCLI_CPU_DEVICES={value!r}: expected a number of logical CPU devices") from None
    cpus = tf.config.list_physical_devices("CPU")
    if n > 1 and cpus:
        with contextlib.suppress(RuntimeError):  # devices already made: leave them as they are
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)


def quiet_import(framework: str) -> None:
    if framework == "tensorflow" and "tensorflow" not in sys.modules and os.environ.get("VIDCLI_DEBUG"):
        split_cpu(importlib.import_module(framework))
        return
    if framework in sys.modules or os.environ.get("VIDCLI_DEBUG"):
        return
    try:
        ctx = _stderr_to_devnull()
    except OSError:  # no usable fd 2: nothing to silence
        ctx = contextlib.nullcontext()
    with ctx:
        mod = importlib.import_module(framework)
        if framework == "tensorflow":
            mod.config.list_physical_devices("GPU")
            split_cpu(mod)
