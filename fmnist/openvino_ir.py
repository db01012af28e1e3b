"""The OpenVINO runtime of this process (one `ov.Core`) and where a run keeps its OpenVINO IR.

Both the exporter (fmnist.export, which writes the IR) and the OpenVINO backends (fmnist.backends,
which verify and load it) use this layout, so neither needs the other:

    openvino/fp32/model.xml|bin           FP32 IR
    openvino/int8/model.xml|bin           NNCF INT8 IR
    openvino/ovms/fmnist/1/model.xml|bin  the FP32 IR in OpenVINO Model Server's repository layout
    openvino/export.json                  what was exported from what (sha256 of every IR file)
    openvino/bundle-manifest.json         sha256 and size of every file of the bundle (fmnist.runs)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

EXPORT_FORMAT = "fmnist-openvino/1"
OV_DIR = "openvino"
EXPORT_JSON = f"{OV_DIR}/export.json"
IR_FILES = {
    "fp32": (f"{OV_DIR}/fp32/model.xml", f"{OV_DIR}/fp32/model.bin"),
    "int8": (f"{OV_DIR}/int8/model.xml", f"{OV_DIR}/int8/model.bin"),
    "ovms": (f"{OV_DIR}/ovms/fmnist/1/model.xml", f"{OV_DIR}/ovms/fmnist/1/model.bin"),
}
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"

_core = None
_core_lock = threading.Lock()


def core():
    """The process's single ov.Core, created on first use (imports OpenVINO then, not at import time)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (OpenVINO's OPTIMIZATION_CAPABILITIES); False if unknown."""
    try:
        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def read_export_info(run_dir: str | Path) -> dict | None:
    """export.json of a run as a dict, or None when the run has not been exported (or it is unreadable)."""
    path = Path(run_dir) / EXPORT_JSON
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("format") == EXPORT_FORMAT else None
