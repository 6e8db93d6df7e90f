"""Video decoding and frame sampling: numpy in, numpy out, no deep-learning framework."""

import os

# FFmpeg and OpenCV print codec chatter for every damaged file; we report problems ourselves.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
