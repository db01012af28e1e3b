"""What the command line shows people: one-line errors and the training progress bar.

A leaf: the CLI (fmnist.cli) and the benchmark commands (fmnist.bench_*) both use it, so neither
imports the other for them.
"""

from __future__ import annotations

import math
import sys
import time


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class ProgressBar:
    """A one-line progress bar with ETA on stderr, plus one line per finished epoch."""

    def __init__(self, stream=sys.stderr, width: int = 28):
        self.stream, self.width, self.last = stream, width, 0.0
        self.tty = getattr(stream, "isatty", lambda: False)()

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "start":
            self.stream.write(f"training {event['n_train']:,} images, validating on {event['n_val']:,}, "
                              f"{event['params']:,} parameters, {event['epochs']} epochs\n")
        elif kind == "batch":
            now = time.monotonic()
            if now - self.last < (0.1 if self.tty else 5.0) and event["global_step"] != event["total_steps"]:
                return
            self.last = now
            frac = event["global_step"] / event["total_steps"]
            filled = int(frac * self.width)
            bar = "=" * filled + (">" if filled < self.width else "") + " " * (self.width - filled - 1)
            eta = time.strftime("%M:%S", time.gmtime(event["eta_s"])) if math.isfinite(event["eta_s"]) else "?"
            line = (f"epoch {event['epoch']} [{bar}] {frac * 100:3.0f}%  loss {event['loss']:.4f}  "
                    f"acc {event['accuracy'] * 100:5.2f}%  {event['images_per_s']:,.0f} img/s  ETA {eta}")
            self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        elif kind == "epoch":
            val = (f"  val_loss {event['val_loss']:.4f}  val_acc {event['val_accuracy'] * 100:.2f}%"
                   if event.get("val_accuracy") is not None else "")
            self.stream.write(("\r\033[K" if self.tty else "") +
                              f"epoch {event['epoch']:>3}: loss {event['loss']:.4f}  acc {event['accuracy'] * 100:.2f}%"
                              f"{val}  {event['seconds']:.1f}s  {event['images_per_s']:,.0f} img/s\n")
        elif kind == "status":
            self.stream.write(f"{event['message']}...\n")
        self.stream.flush()
