"""`python -m fmnist serve [--run RUN] [--port P] [--host H]`: a run's OpenVINO FP32 IR over the
KServe v2 REST protocol, with KServe's own Python model server (docs/deployment.md).

What is served: the FP32 IR that `fmnist.backends` verifies (sha256 against the run's manifests)
and compiles exactly as the local `openvino-fp32` backend does, under the name and version the
export recorded for OpenVINO Model Server (`openvino/export.json` "ovms": model "fmnist",
version 1). So a client sees the same probabilities as the local backend, bit for bit, and the
same URL paths as with OVMS serving the exported layout:

    GET  /v2/health/ready                 server ready
    GET  /v2/models/fmnist                model metadata (input "pixels", output "probabilities")
    GET  /v2/models/fmnist/ready          model ready
    POST /v2/models/fmnist/infer          inference (JSON, or JSON + binary tensor data)

The server never flip-averages: a run trained with `tta_flip` is averaged by the client
(`fmnist.backends.ViewAveraged` around the remote backend), as for the local backends.

Input "pixels": datatype FP32 or UINT8, shape [N, 28, 28] or [N, 28, 28, 1], raw values 0..255,
1 <= N <= MAX_BATCH (fmnist.remote). Anything else is answered 400 with a sentence saying what is
wrong (an unknown model: 404), and the server carries on. Only KServe's HTTP server runs (no
gRPC), in this process, bound to 127.0.0.1 unless --host says otherwise.

Why not `kserve.ModelServer.start()`: it binds 0.0.0.0 whatever the caller wants and reports a
port in use by exiting from inside uvicorn. Here the listening socket is bound first (a port in use
is one line from us) and handed to KServe's REST server, which registers KServe's endpoints and
error handlers around the ModelServer's data plane as `start()` would.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from fmnist.backends import BackendError, get_backend
from fmnist.openvino_ir import INPUT_NAME, OUTPUT_NAME
from fmnist.remote import MAX_BATCH, ServingClient, load_kserve, served_model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DATATYPES = ("FP32", "UINT8")
IMAGE_SHAPES = ([28, 28], [28, 28, 1])
GRACE_S = 5  # how long a stopping server lets requests in flight finish


class ServeError(Exception):
    """The server cannot start: port in use, host not of this machine, the run cannot be loaded."""


def check_request(inputs) -> np.ndarray:
    """float32 pixels (N, 28, 28, 1) from a request's inputs (kserve InferInput objects).

    ValueError with one sentence naming what is wrong: not exactly one input called "pixels", a
    datatype other than FP32/UINT8, a shape other than [N,28,28] or [N,28,28,1], N outside
    1..MAX_BATCH, data that does not fill the shape, values outside 0..255.
    """
    names = [getattr(i, "name", "?") for i in inputs or []]
    if names != [INPUT_NAME]:
        raise ValueError(f"expected exactly one input called {INPUT_NAME!r}, got "
                         f"{', '.join(map(repr, names)) if names else 'none'}")
    tensor = inputs[0]
    if tensor.datatype not in DATATYPES:
        raise ValueError(f"input {INPUT_NAME!r} has datatype {tensor.datatype}; use FP32 or UINT8")
    shape = tensor.shape
    if (not isinstance(shape, list) or len(shape) not in (3, 4) or list(shape[1:]) not in IMAGE_SHAPES
            or not isinstance(shape[0], int)):
        raise ValueError(f"input {INPUT_NAME!r} has shape {shape}; expected [N, 28, 28] or [N, 28, 28, 1]")
    if not 1 <= shape[0] <= MAX_BATCH:
        raise ValueError(f"input {INPUT_NAME!r} holds {shape[0]} images; send 1 to {MAX_BATCH} per request")
    try:
        pixels = np.array(tensor.as_numpy(), dtype=np.float32)  # a copy: binary data is a read-only buffer
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"the data of input {INPUT_NAME!r} does not fill {tensor.datatype} {shape}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}") from None
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"input {INPUT_NAME!r} has values outside 0..255 (raw pixels, not scaled or normalised)")
    return pixels.reshape(shape[0], 28, 28, 1)


def make_model(backend, name: str, version: int):
    """The kserve.Model that answers with `backend` (an OpenVINO FP32 backend of fmnist.backends).

    Built in a function: the class derives from kserve.Model, and kserve is imported on first use.
    """
    import asyncio

    kserve = load_kserve()
    from kserve.errors import InferenceError, InvalidInput

    class FashionMNISTModel(kserve.Model):
        """KServe v2 inference with a run's FP32 IR: input "pixels", output "probabilities"."""

        def __init__(self):
            super().__init__(name)
            self.backend = backend

        def load(self) -> bool:
            # compile both paths now, so the first request does not wait for a compile
            self.backend.predict_proba(np.zeros((1, 28, 28, 1), np.float32))
            self.backend.predict_proba(np.zeros((MAX_BATCH, 28, 28, 1), np.float32))
            self.ready = True
            return self.ready

        def get_input_types(self) -> list[dict]:
            return [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 28, 28, 1]}]

        def get_output_types(self) -> list[dict]:
            return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 10]}]

        async def predict(self, payload, headers=None, response_headers=None):
            if not isinstance(payload, kserve.InferRequest):
                raise InvalidInput(f"use the v2 protocol: POST /v2/models/{name}/infer")
            try:
                pixels = check_request(payload.inputs)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            try:  # OpenVINO releases the GIL: concurrent requests run in parallel on the loop's threads
                probs = await asyncio.get_running_loop().run_in_executor(None, self.backend.predict_proba, pixels)
            except Exception as exc:  # the server's fault, not the request's: 500 with one line
                raise InferenceError(f"inference failed: {str(exc).splitlines()[0][:200] if str(exc) else exc}")
            output = kserve.InferOutput(name=OUTPUT_NAME, shape=list(probs.shape), datatype="FP32", data=probs)
            return kserve.InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=name,
                                        model_version=str(version), infer_outputs=[output],
                                        use_binary_outputs=payload.use_binary_outputs,
                                        requested_outputs=payload.request_outputs)

    return FashionMNISTModel()


def make_dataplane(model_registry):
    """KServe's DataPlane over `model_registry`, with binary tensor data kept as bytes.

    KServe turns binary request data into a Python list of numbers before the model sees it (0.36 s
    for 256 images here, 1.4 ms an image); kept as bytes, the model's `as_numpy` is one
    `np.frombuffer`. Requests with JSON data, or a mix, go through KServe's own decoding.
    """
    load_kserve()
    import orjson
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    class BinaryDataPlane(DataPlane):
        def decode_inference_request(self, body, headers, model_name):
            if not isinstance(body, bytes):
                return super().decode_inference_request(body, headers, model_name)
            try:
                json_length = int(headers.get(INFERENCE_CONTENT_LENGTH_HEADER, ""))
                header = orjson.loads(body[:json_length])
            except (ValueError, orjson.JSONDecodeError) as exc:
                raise InvalidInput(f"a binary request needs a JSON header of the length its "
                                   f"{INFERENCE_CONTENT_LENGTH_HEADER} header gives: {exc}") from None
            inputs = header.get("inputs") if isinstance(header, dict) else None
            if not isinstance(inputs, list) or not inputs or not all(
                    isinstance(item, dict) and isinstance(item.get("parameters"), dict)
                    and isinstance(item["parameters"].get("binary_data_size"), int) for item in inputs):
                return super().decode_inference_request(body, headers, model_name)
            tensors, raw, start = [], [], json_length
            for item in inputs:
                size = item["parameters"]["binary_data_size"]
                if not 0 <= size <= len(body) - start:
                    raise InvalidInput(f"input {item.get('name')!r} declares {size} bytes of binary data; "
                                       f"the request has {len(body) - start} left")
                tensors.append(InferInput(name=str(item.get("name")), shape=item.get("shape"),
                                          datatype=str(item.get("datatype", "")), parameters=item["parameters"]))
                raw.append(body[start:start + size])
                start += size
            outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters"))
                       for o in header.get("outputs") or []]
            parameters = header.get("parameters")
            return InferRequest(model_name=model_name, infer_inputs=tensors, request_id=header.get("id"),
                                raw_inputs=raw, parameters=parameters if isinstance(parameters, dict) else None,
                                request_outputs=outputs or None)

    return BinaryDataPlane(model_registry=model_registry)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; ServeError with one line when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeError(f"cannot listen on host {host!r}: {exc.strerror if hasattr(exc, 'strerror') else exc}")
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":  # restart at once after a stop (TIME_WAIT), as uvicorn does; a live listener still blocks
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use (another `fmnist serve` or a model "
                             "server?): choose another with --port") from None
        if exc.errno == errno.EACCES:
            raise ServeError(f"not allowed to listen on port {port} (ports below 1024 need privileges): "
                             "choose another with --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"{host} is not an address of this machine: use 127.0.0.1 (this machine only) "
                             "or 0.0.0.0 (every interface)") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _configure_logging(access_log: bool) -> None:
    """KServe's logging with shorter lines, no per-request timing lines, no access log unless asked,
    and a rejected request logged as one line instead of a traceback."""
    load_kserve()
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
    from kserve.logging import KSERVE_LOG_CONFIG, KSERVE_LOGGER_NAME, configure_logging

    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    config["formatters"]["kserve"]["fmt"] = "%(asctime)s %(name)s %(levelname)s %(message)s"
    config["formatters"]["uvicorn"]["fmt"] = "%(asctime)s %(name)s %(levelprefix)s %(message)s"
    config["loggers"]["kserve.trace"]["level"] = "WARNING"  # a line per request from TimingMiddleware
    config["loggers"]["uvicorn.access"]["level"] = "INFO" if access_log else "WARNING"
    configure_logging(config)

    class OneLineRejections(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, (InvalidInput, ModelNotFound, ModelNotReady)):
                record.msg, record.args, record.exc_info, record.exc_text = f"rejected a request: {exc}", (), None, None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True

    logging.getLogger(KSERVE_LOGGER_NAME).addFilter(OneLineRejections())


def _malformed_handlers(app) -> None:
    """400 instead of 500 for requests KServe cannot decode (binary data of the wrong size, a JSON
    header without "inputs"): decoding raises plain ValueError/KeyError/TypeError, which KServe maps
    to 500. Errors in inference itself reach KServe as InferenceError (500) from the model."""
    from fastapi.responses import JSONResponse

    log = logging.getLogger("kserve")

    async def malformed(_, exc):
        text = f"malformed request: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        log.warning("rejected a request: %s", text)
        return JSONResponse(status_code=400, content={"error": text})

    for kind in (ValueError, KeyError, TypeError):
        app.add_exception_handler(kind, malformed)


def serve(run_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, access_log: bool = False) -> None:
    """Serve the run's FP32 IR until interrupted (KeyboardInterrupt after a graceful stop on Ctrl-C).

    ServeError with one line when it cannot start (port in use, bad host, no usable export).
    """
    run_dir = Path(run_dir)
    sock = bind_socket(host, port)
    try:
        try:
            backend = get_backend(run_dir, "openvino-fp32", tta=False, cache=False)
        except BackendError as exc:
            raise ServeError(str(exc)) from None
        name, version = served_model(run_dir)
        kserve = load_kserve()
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.model_server import app
        from kserve.protocol.rest.server import RESTServer

        _configure_logging(access_log)
        # FastAPI deprecates the response class KServe sets; say it once to KServe, not to every user
        warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
        _malformed_handlers(app)
        actual_port = sock.getsockname()[1]
        server = kserve.ModelServer(http_port=actual_port, enable_grpc=False, workers=1,
                                    enable_latency_logging=False, grace_period=GRACE_S)
        model = make_model(backend, name, version)
        model.load()
        server.register_model(model)
        rest = RESTServer(FASTAPI_APP_IMPORT_STRING, make_dataplane(server.registered_models),
                          server.model_repository_extension,
                          actual_port, workers=1, grace_period=GRACE_S)
        rest.config.host = host  # only what uvicorn prints: the socket above decides where it listens
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {run_dir} as model {name!r} version {version} (OpenVINO FP32, KServe v2 REST) at "
              f"http://{shown}:{actual_port}  (Ctrl-C stops)", flush=True)
        rest.run(sockets=[sock])
    finally:
        sock.close()


def add_cli(subparsers, cli_error) -> None:
    """`python -m fmnist serve [--run RUN] [--port P] [--host H] [--access-log]`."""
    def port_number(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"port must be a whole number, got {text!r}")
        if not 0 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {value}")
        return value

    p = subparsers.add_parser(
        "serve", help="serve a run's OpenVINO model over the KServe v2 REST protocol",
        description="Serve the run's verified OpenVINO FP32 IR with KServe's model server (v2 REST: "
                    "/v2/models/fmnist/infer). Clients: `--backend remote --serving-url URL` or "
                    "FMNIST_SERVING_URL. See docs/deployment.md.")
    p.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    p.add_argument("--runs-dir")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--access-log", action="store_true", help="log one line per request")

    def run(args) -> int:
        from fmnist.runs import RunError, resolve_checked_run

        try:
            run_dir = resolve_checked_run(args.run, args.runs_dir)
        except RunError as exc:
            raise cli_error(str(exc))
        try:
            serve(run_dir, args.host, args.port, access_log=args.access_log)
        except ServeError as exc:
            raise cli_error(str(exc))
        except KeyboardInterrupt:
            pass
        print("server stopped", file=sys.stderr)
        return 0

    p.set_defaults(func=run)


class ServerProcess:
    """`python -m fmnist serve` in a child process on a free loopback port (tests, `bench serve`).

    `start()` returns the URL once the server answers ready (RuntimeError with the child's last
    output line if it exits or does not get ready within `startup_timeout`); `stop()` interrupts it
    like Ctrl-C and waits (then kills). Also a context manager.
    """

    def __init__(self, run_dir: str | Path, host: str = DEFAULT_HOST, port: int | None = None,
                 startup_timeout: float = 120.0):
        self.run_dir, self.host, self.port = Path(run_dir), host, port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self._log = None

    def start(self) -> str:
        if self.port is None:
            with socket.socket() as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._log = tempfile.TemporaryFile(mode="w+")
        package_root = str(Path(__file__).resolve().parent.parent)  # this fmnist, whatever the caller's cwd
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fmnist", "serve", "--run", str(self.run_dir), "--host", self.host,
             "--port", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path})
        name, _ = served_model(self.run_dir)
        client = ServingClient(self.url, timeout=2.0)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with code {self.process.returncode}: {self.last_line()}")
                try:
                    if client.server_ready() and client.model_ready(name):
                        return self.url
                except BackendError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the server was not ready within {self.startup_timeout:.0f} s: "
                                       f"{self.last_line()}")
                time.sleep(0.2)
        finally:
            client.close()

    def last_line(self) -> str:
        """The child's last line of output (stdout and stderr together), '' when none."""
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def output(self) -> str:
        """Everything the child printed so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = 20.0) -> int | None:
        """Interrupt the server (SIGINT: a graceful stop) and wait; kill it after `timeout`. Its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            import signal

            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
