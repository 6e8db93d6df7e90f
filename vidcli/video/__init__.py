"""Video decoding and frame sampling: numpy in, numpy out, no deep-learning framework.

`decode` is the interface (PyAV first, OpenCV for files PyAV cannot open); `cache` keeps decoded frames.
"""

import os

# FFmpeg and OpenCV print codec chatter for every damaged file; we report problems ourselves. OpenCV reads
# these when its first capture opens, so this module is imported before anything uses cv2 for video.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
