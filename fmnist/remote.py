"""The `remote` backend: a run's model answered by a model server over the KServe v2 REST protocol.

The server is `python -m fmnist serve` (fmnist.serving) or OpenVINO Model Server with the run's
exported `openvino/ovms` layout; both serve the FP32 IR under the name and version recorded in
`openvino/export.json` ("ovms": model "fmnist", version 1). Requests go through KServe's own
client (`kserve.InferenceRESTClient`, httpx underneath) with the pixels as binary data
(`FP32 [N, 28, 28, 1]`, raw 0..255, what both servers accept) and the answer asked back as
binary, so the probabilities arrive bit for bit as the server computed them.

`ServingClient` is the synchronous, thread-safe face of that asynchronous client: one event loop
in a daemon thread per client, every call submitted to it with a deadline. `RemoteBackend` is a
predictor (fmnist.predictor) on top of it:

  * on creation it checks that the server is up, that it serves the model, and that it answers
    a few fixed probe images as the run's local OpenVINO FP32 backend does (so a server started
    for another run, or running in bf16, is refused with a sentence saying so);
  * `predict_proba` splits large batches into requests of at most MAX_BATCH images (the server's
    limit) and never flip-averages: `fmnist.backends.get_backend` wraps it in `ViewAveraged` for
    runs trained with `tta_flip`, as it does every local backend;
  * explanations (`features`, `stage_activations`, `first_layer_filters`, ...) are answered by
    the run's local OpenVINO FP32 backend: the server only returns probabilities.

Every failure is a `BackendError` with one line: the server cannot be reached (with the URL and
how to start one), it did not answer in time, it answered an HTTP error (with its message), it
does not serve the model, or it serves a different one.

`serving_url()` is the configured server: $FMNIST_SERVING_URL, or None.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import weakref
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from fmnist.openvino_ir import INPUT_NAME, OUTPUT_NAME, read_export_info
from fmnist.predictor import BackendError, Predictor, as_batch

ENV_VAR = "FMNIST_SERVING_URL"
NAME = "remote"
DEFAULT_MODEL = ("fmnist", 1)  # what the exporter writes for OpenVINO Model Server (fmnist.export)
DEFAULT_TIMEOUT = 10.0  # seconds per request, connection included
MAX_BATCH = 256  # images per request: the server refuses more (fmnist.serving), the client splits
PROBE_TOLERANCE = 1e-4  # largest probability difference from the local FP32 IR on the probe images
START_HINT = "start one with `python -m fmnist serve` (docs/deployment.md)"

_kserve_lock = threading.Lock()


def serving_url() -> str | None:
    """The model server configured for this process: $FMNIST_SERVING_URL stripped, None when unset or empty."""
    value = os.environ.get(ENV_VAR, "").strip()
    return value or None


def check_url(url: str) -> str:
    """The URL without a trailing slash when it is an http(s) URL with a host; BackendError otherwise."""
    text = str(url or "").strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"{url!r} is not a model server URL: expected http://HOST:PORT, "
                           "e.g. http://127.0.0.1:8080")
    return text


def served_model(run_dir: str | Path) -> tuple[str, int]:
    """(model name, version) under which a model server serves this run's FP32 IR: export.json's
    "ovms" entry, else the exporter's default ("fmnist", 1)."""
    ovms = (read_export_info(run_dir) or {}).get("ovms") or {}
    name, version = ovms.get("model_name"), ovms.get("version")
    if isinstance(name, str) and name and isinstance(version, int):
        return name, version
    return DEFAULT_MODEL


def load_kserve():
    """The kserve package, imported on first use (about 2 s).

    kserve.model_server parses sys.argv when it is imported (its own flags: --http_port, --workers,
    ...), so a program whose arguments happen to match one of them by prefix would be reconfigured
    or stopped by an import. It is imported with the program name alone as argv.
    """
    with _kserve_lock:
        if "kserve" in sys.modules:
            return sys.modules["kserve"]
        saved = sys.argv
        sys.argv = saved[:1]
        try:
            import kserve
        finally:
            sys.argv = saved
        return kserve


def probe_images() -> np.ndarray:
    """Fixed (4, 28, 28) float32 probe images in 0..255: shapes like the dataset's (a bright
    rectangle, a trouser-like pair of bars, a ring) and seeded noise. The same on every machine."""
    yy, xx = np.mgrid[0:28, 0:28]
    coat = ((yy > 4) & (yy < 24) & (xx > 6) & (xx < 22)) * 200.0
    trousers = ((yy > 2) & (yy < 26) & (((xx > 7) & (xx < 12)) | ((xx > 16) & (xx < 21)))) * 180.0
    ring = (np.abs(np.hypot(yy - 13.5, xx - 13.5) - 8) < 2.5) * 230.0
    noise = np.random.default_rng(20261203).integers(0, 256, (28, 28))
    return np.stack([coat, trousers, ring, noise]).astype(np.float32)


class ServingClient:
    """A synchronous, thread-safe KServe v2 REST client for one server URL.

    kserve's InferenceRESTClient is asynchronous (httpx.AsyncClient); it runs here on an event loop
    of its own in a daemon thread, and each call waits for its result with a deadline. Several
    threads may call at once: their requests share the client's connection pool. `close()` (or
    garbage collection) stops the thread.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        self.url = check_url(url)
        if not timeout > 0:
            raise BackendError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        kserve = load_kserve()
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="fmnist-serving-client", daemon=True)
        thread.start()

        async def make_client():  # on the loop that will use it
            return kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=self.timeout, retries=0))

        self._client = asyncio.run_coroutine_threadsafe(make_client(), self._loop).result()
        self._finalizer = weakref.finalize(self, _stop_loop, self._loop, thread, self._client)

    def close(self) -> None:
        """Close the connections and stop the client's thread (idempotent)."""
        self._finalizer()

    def _call(self, coro, what: str):
        """Run a coroutine on the client's loop and return its result; BackendError with one line."""
        import httpx

        if not self._finalizer.alive:
            coro.close()
            raise BackendError(f"the client for {self.url} is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=self.timeout + 5.0)  # httpx's own timeout comes first
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BackendError(self._timed_out(what)) from None
        except httpx.TimeoutException:
            raise BackendError(self._timed_out(what)) from None
        except httpx.ConnectError as exc:
            raise BackendError(f"cannot reach the model server at {self.url} ({_reason(exc)}): "
                               f"{START_HINT}, or set {ENV_VAR} to its URL") from None
        except httpx.HTTPStatusError as exc:
            raise BackendError(self._http_error(exc.response, what)) from None
        except httpx.HTTPError as exc:  # the connection broke, the answer was not HTTP, ...
            raise BackendError(f"the model server at {self.url} failed during {what}: {_reason(exc)}") from None
        except (ValueError, KeyError, TypeError) as exc:  # kserve's InvalidInput, a field missing: not a v2 answer
            raise BackendError(f"the model server at {self.url} gave an answer that cannot be read "
                               f"({what}): {type(exc).__name__}: {str(exc)[:200]}") from None

    def _timed_out(self, what: str) -> str:
        return f"the model server at {self.url} did not answer {what} within {self.timeout:g} s"

    def _http_error(self, response, what: str) -> str:
        return (f"the model server at {self.url} refused {what}: HTTP {response.status_code} "
                f"{response.reason_phrase}: {_server_message(response)}")

    # -- the protocol's calls --
    def server_ready(self) -> bool:
        """Whether the server answers its readiness endpoint (BackendError when it cannot be reached)."""
        return bool(self._call(self._client.is_server_ready(self.url), "the readiness check"))

    def model_ready(self, model: str) -> bool:
        """Whether the server has `model` loaded and ready."""
        return bool(self._call(self._client.is_model_ready(self.url, model), f"the readiness check of {model!r}"))

    def infer(self, model: str, pixels: np.ndarray) -> np.ndarray:
        """The (N, 10) float32 output of `model` for float32 pixels (N, 28, 28, 1), in one request."""
        kserve = load_kserve()
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        tensor = kserve.InferInput(name=INPUT_NAME, shape=list(x.shape), datatype="FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        request = kserve.InferRequest(model_name=model, infer_inputs=[tensor],
                                      parameters={"binary_data_output": True})
        response = self._call(self._client.infer(self.url, request, model_name=model),
                              f"the request of model {model!r}")
        outputs = {out.name: out for out in response.outputs}
        out = outputs.get(OUTPUT_NAME) or (response.outputs[0] if len(response.outputs) == 1 else None)
        probs = np.asarray(out.as_numpy(), dtype=np.float32) if out is not None else None
        if probs is None or probs.shape != (len(x), 10):
            got = "no usable output" if probs is None else f"an output of shape {list(probs.shape)}"
            raise BackendError(f"the model server at {self.url} answered {got} for {len(x)} images; "
                               f"expected {OUTPUT_NAME!r} of shape [{len(x)}, 10]: is it this project's model?")
        return probs


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client) -> None:
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _server_message(response) -> str:
    """The server's own words from an error response: KServe's {"error": ...}, FastAPI's {"detail": ...}."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:300] or "(no message)"
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"][:300]
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI validation
            first = detail[0]
            return f"{first.get('msg', 'invalid request')} at {'/'.join(map(str, first.get('loc', [])))}"[:300]
        if detail:
            return str(detail)[:300]
    return str(body)[:300]


class RemoteBackend:
    """A run's model answered by a KServe v2 model server (see the module doc).

    local: the run's OpenVINO FP32 backend (`fmnist.backends.get_backend(run, "openvino-fp32",
    tta=False)`): what the probe images are compared with and what answers the explanation
    methods. Without it the server is trusted unchecked and explanations raise BackendError.
    """

    name = NAME
    precision = "fp32"
    tta_flip = False
    tta_shift = 0

    def __init__(self, run_dir: str | Path, url: str, timeout: float = DEFAULT_TIMEOUT,
                 local: Predictor | None = None):
        self.run_dir = Path(run_dir)
        self.local = local
        self.model_name, self.model_version = served_model(self.run_dir)
        self.source_files = tuple(getattr(local, "source_files", ()))
        self.client = ServingClient(url, timeout)
        self.url = self.device = self.client.url
        try:
            self.probe_diff = self._check()
        except BackendError:
            self.client.close()
            raise

    def _check(self) -> float | None:
        """Server up, model ready, and (with a local backend) the same answers on the probe images:
        the largest probability difference seen, or None when there is nothing to compare with."""
        where = f"the model server at {self.url}"
        if not self.client.server_ready():
            raise BackendError(f"{where} is not ready yet: try again in a few seconds")
        if not self.client.model_ready(self.model_name):
            raise BackendError(f"{where} does not serve a ready model called {self.model_name!r}: start it with "
                               f"`python -m fmnist serve --run {self.run_dir}`")
        if self.local is None:
            return None
        probes = probe_images()[..., None]
        diff = float(np.abs(self.client.infer(self.model_name, probes) - self.local.predict_proba(probes)).max())
        if not diff <= PROBE_TOLERANCE:
            raise BackendError(f"{where} serves a different model than run {self.run_dir} (probabilities differ by "
                               f"up to {diff:.2g} on the probe images; not FP32, or another run): start it with "
                               f"`python -m fmnist serve --run {self.run_dir}`")
        return diff

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, 10) probabilities from the server, in requests of at most MAX_BATCH images."""
        x = as_batch(images)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        parts = [self.client.infer(self.model_name, x[i:i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        """Stop the client's connections and thread."""
        self.client.close()

    # -- explanations: the run's local OpenVINO FP32 backend (the server answers probabilities only) --
    def _explainer(self):
        if self.local is None:
            raise BackendError("the remote backend explains through the run's local OpenVINO FP32 backend; "
                               "build it with fmnist.backends.get_backend(run, 'remote')")
        return self.local

    @property
    def model(self):
        """The local FP32 IR's ov.Model (what the explanations inspect)."""
        return self._explainer().model

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Penultimate features, logits, first stage: the local FP32 backend's."""
        return self._explainer().features(images)

    def stage_activations(self, image: np.ndarray) -> list[dict]:
        """Every stage's feature maps for one image: the local FP32 backend's."""
        return self._explainer().stage_activations(image)

    def stage_names(self) -> list[tuple[str, str]] | None:
        return self._explainer().stage_names()

    def first_layer_filters(self) -> np.ndarray:
        """The first convolution's kernels: the local FP32 backend's."""
        return self._explainer().first_layer_filters()

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": self.device, "url": self.url,
                "run": str(self.run_dir), "model": self.model_name, "version": self.model_version,
                "protocol": "KServe v2 REST", "timeout_s": self.client.timeout, "max_batch": MAX_BATCH,
                "probe_max_prob_diff": self.probe_diff,
                "explanations": "local openvino-fp32" if self.local is not None else None}
