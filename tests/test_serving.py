"""KServe v2 serving (`python -m fmnist serve`) and the remote backend, over loopback only.

A real server of the shipped model runs in a child process (fmnist.serving.ServerProcess, ready
within a deadline) for the module; a second one is started and stopped to see what clients say
when their server goes away. Every wait has a deadline; a missing prerequisite (the shipped model,
the real test images) fails under CI=true.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fmnist.backends import BackendError, backend_status, get_backend
from fmnist.remote import ENV_VAR, RemoteBackend

INFER = "/v2/models/fmnist/infer"


def fmnist(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fmnist", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def server(shipped_model):
    from fmnist.serving import ServerProcess

    with ServerProcess(shipped_model, startup_timeout=120) as url:
        yield {"url": url, "run": shipped_model}


@pytest.fixture(scope="module")
def test_images(real_dataset):
    return real_dataset.x_test[:1000], real_dataset.y_test[:1000]


def test_served_probabilities_equal_the_local_openvino_fp32_backend(server, test_images):
    run, (x, _) = server["run"], test_images
    remote = get_backend(run, "remote", url=server["url"], tta=False, cache=False)
    try:
        served = remote.predict_proba(x)  # 1,000 images: four requests of at most 256
        local = get_backend(run, "openvino-fp32", tta=False).predict_proba(x)
        assert served.shape == (1000, 10) and served.dtype == np.float32
        assert (served.argmax(1) == local.argmax(1)).mean() == 1.0
        assert np.abs(served - local).max() <= 1e-5
        assert remote.describe()["probe_max_prob_diff"] <= 1e-5
        # explanations come from the run's local FP32 backend
        assert remote.features(x[:2])["penultimate"].shape[0] == 2
    finally:
        remote.close()
    # the shipped run averages each image with its mirror image: the client does it, as locally
    averaged = get_backend(run, "remote", url=server["url"])
    assert averaged.tta_flip
    np.testing.assert_allclose(averaged.predict_proba(x[:32]),
                               get_backend(run, "openvino-fp32").predict_proba(x[:32]), atol=1e-5)


def test_eight_concurrent_clients_get_their_own_answers_without_errors(server, test_images):
    run, (x, _) = server["run"], test_images
    images = x[:200]
    expected = get_backend(run, "openvino-fp32", tta=False).predict_proba(images)
    remote = get_backend(run, "remote", url=server["url"], tta=False, cache=False)  # one client, shared by threads
    errors, lock = [], threading.Lock()

    def client(c: int) -> int:
        answered = 0
        for i in range(200):
            k = (c * 37 + i) % len(images)
            try:
                probs = remote.predict_proba(images[k])
            except BackendError as exc:
                with lock:
                    errors.append(str(exc))
                continue
            if np.abs(probs[0] - expected[k]).max() > 1e-5:  # another request's answer, or a wrong one
                with lock:
                    errors.append(f"client {c}: wrong answer for image {k}")
            answered += 1
        return answered

    try:
        with ThreadPoolExecutor(8) as pool:
            answered = [f.result(timeout=240) for f in [pool.submit(client, c) for c in range(8)]]
    finally:
        remote.close()
    assert errors == [] and sum(answered) == 1600


def _json_request(name, shape, datatype, data):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


MALFORMED = {
    "wrong shape": (INFER, _json_request("pixels", [1, 28, 27], "FP32", [0.0] * 756), 400, "shape"),
    "wrong datatype": (INFER, _json_request("pixels", [1, 28, 28], "INT64", [0] * 784), 400, "datatype"),
    "too big a batch": (INFER, _json_request("pixels", [257, 28, 28], "UINT8", [0] * (257 * 784)), 400, "1 to 256"),
    "data short of its shape": (INFER, _json_request("pixels", [2, 28, 28], "UINT8", [0] * 784), 400, "does not fill"),
    "values outside 0..255": (INFER, _json_request("pixels", [1, 28, 28], "FP32", [-1.0] * 784), 400, "0..255"),
    "no input": (INFER, {"inputs": []}, 400, "exactly one input"),
    "an extra input": (INFER, {"inputs": _json_request("pixels", [1, 28, 28], "UINT8", [0] * 784)["inputs"] * 2},
                       400, "exactly one input"),
    "another input name": (INFER, _json_request("image", [1, 28, 28], "UINT8", [0] * 784), 400, "'pixels'"),
    "bad JSON": (INFER, b'{"inputs": [{"name": "pixels", "shape": [1, 28', 422, "JSON"),
    "unknown model": ("/v2/models/shoes/infer", _json_request("pixels", [1, 28, 28], "UINT8", [0] * 784), 404,
                      "shoes"),
    "binary data shorter than declared": (
        INFER, (b'{"inputs": [{"name": "pixels", "shape": [1, 28, 28, 1], "datatype": "FP32", '
                b'"parameters": {"binary_data_size": 3136}}]}', b"\0" * 100), 400, "binary data"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_gets_a_4xx_with_a_reason_and_the_server_carries_on(server, case):
    import httpx

    path, body, status, words = MALFORMED[case]
    headers = {"content-type": "application/json"}
    if isinstance(body, tuple):  # KServe's binary extension: JSON header, then the raw tensor bytes
        headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(body[0]))}
        body = body[0] + body[1]
    elif isinstance(body, dict):
        body = json.dumps(body).encode()
    with httpx.Client(base_url=server["url"], timeout=30) as client:
        answer = client.post(path, content=body, headers=headers)
        assert answer.status_code == status, answer.text
        assert words in answer.text
        # still serving: ready, and a good request answered
        assert client.get("/v2/health/ready").status_code == 200
        good = client.post(INFER, json=_json_request("pixels", [1, 28, 28], "UINT8", [0] * 784))
        assert good.status_code == 200, good.text
        probs = np.array(good.json()["outputs"][0]["data"], np.float32)
        assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-4


def test_a_server_serving_other_answers_is_refused_by_name(server):
    class OtherModel:  # stands in for the local FP32 IR of a different run
        source_files = ()

        def predict_proba(self, images):
            return np.full((len(images), 10), 0.1, np.float32)

    with pytest.raises(BackendError, match="serves a different model") as caught:
        RemoteBackend(server["run"], server["url"], local=OtherModel())
    assert server["url"] in str(caught.value) and "\n" not in str(caught.value)


def test_remote_needs_a_configured_valid_url(shipped_model, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert "remote" not in backend_status(shipped_model)
    with pytest.raises(BackendError, match=ENV_VAR):
        get_backend(shipped_model, "remote")
    with pytest.raises(BackendError, match="not a model server URL"):
        get_backend(shipped_model, "remote", url="localhost:8080")
    monkeypatch.setenv(ENV_VAR, " http://127.0.0.1:9 ")
    assert backend_status(shipped_model)["remote"] == ""


def test_a_server_that_never_answers_is_a_timeout_error():
    from fmnist.remote import ServingClient

    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = ServingClient(url, timeout=0.5)
        try:
            with pytest.raises(BackendError, match=r"did not answer .* within 0.5 s") as caught:
                client.server_ready()
        finally:
            client.close()
    assert url in str(caught.value)


def _png(tmp_path, image) -> str:
    path = tmp_path / "item.png"
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return str(path)


def test_cli_predict_through_the_server_then_clear_errors_once_it_stops(shipped_model, test_images, tmp_path):
    from fmnist.cli import prepare_images
    from fmnist.serving import ServerProcess

    image = _png(tmp_path, test_images[0][0])
    expected = get_backend(shipped_model, "openvino-fp32").predict_proba(prepare_images([image])[0][0][1].input)[0]
    server = ServerProcess(shipped_model, startup_timeout=120)
    with server as url:
        up = fmnist("predict", image, "--backend", "remote", "--serving-url", url, "--json")
        assert up.returncode == 0, up.stderr
        answer = json.loads(up.stdout)[0]
        assert answer["backend"] == "remote" and answer["label"] == int(expected.argmax())
        remote = get_backend(shipped_model, "remote", url=url, cache=False)
        assert server.stop() == 0  # Ctrl-C: a clean stop
        assert "server stopped" in server.output() and "Traceback" not in server.output()
    with pytest.raises(BackendError) as caught:
        remote.predict_proba(test_images[0][:1])
    message = str(caught.value)
    assert url in message and "python -m fmnist serve" in message and "\n" not in message
    remote.close()
    down = fmnist("predict", image, "--backend", "remote", "--serving-url", url)
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.strip().count("\n") == 0 and "cannot reach the model server" in down.stderr


def test_serve_with_its_port_taken_or_an_unknown_run_is_one_line(shipped_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = fmnist("serve", "--run", str(shipped_model), "--port", port, timeout=60)
    assert busy.returncode == 2 and "already in use" in busy.stderr and "Traceback" not in busy.stderr
    assert busy.stderr.strip().count("\n") == 0
    unknown = fmnist("serve", "--run", "no-such-run", "--port", "0", timeout=60)
    assert unknown.returncode == 2 and "no-such-run" in unknown.stderr and "Traceback" not in unknown.stderr
