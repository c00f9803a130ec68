"""A client generated from the server's own /openapi.json by openapi-python-client (from PyPI,
in a throw-away venv: it is a tool, not a dependency) removes a background through
/api/remove (multipart) and through /v1, typed by the document."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import uuid

import pytest
from PIL import Image

from tests.support import b64, fixture_bytes, http_get, tool_venv

pytestmark = pytest.mark.integration

GENERATOR = "openapi-python-client>=0.25,<1"
CAR = fixture_bytes("car-1.jpg")


@pytest.fixture(scope="module")
def generated(tmp_path_factory, server):
    """The generated package, importable as ``rbg_client``."""
    folder = tmp_path_factory.mktemp("generated")
    tool = tool_venv(folder, GENERATOR)
    document = folder / "openapi.json"
    document.write_bytes(http_get(f"{server.http_url}/openapi.json")[2])
    config = folder / "config.yaml"
    # The generator reads only JSON and octet-stream bodies unless told: the cutout is a PNG.
    config.write_text("content_type_overrides:\n  image/png: application/octet-stream\n")
    finished = subprocess.run(
        [
            tool / "openapi-python-client",
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(folder / "out" / "rbg_client"),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "WARNING" not in finished.stdout, finished.stdout  # nothing dropped from the client
    sys.path.insert(0, str(folder / "out"))
    try:
        yield importlib.import_module("rbg_client")
    finally:
        sys.path.remove(str(folder / "out"))


def test_the_generated_client_removes_a_background_through_api_remove(generated, server):
    from rbg_client.api.default import remove_from_upload
    from rbg_client.models import RemoveFromUploadBody
    from rbg_client.types import File

    client = generated.AuthenticatedClient(base_url=server.http_url, token="generated")
    body = RemoveFromUploadBody(
        file=File(payload=io.BytesIO(CAR), file_name="car-1.jpg", mime_type="image/jpeg")
    )
    response = remove_from_upload.sync_detailed(client=client, body=body)
    assert response.status_code == 200, response.content[:300]
    assert Image.open(io.BytesIO(response.content)).size == (480, 360)


def test_the_generated_client_runs_tasks_through_v1_typed(generated, server):
    from rbg_client.api.default import run_tasks
    from rbg_client.models import BackgroundRemovalResult, RemoveBackgroundRequest, RestResponse

    client = generated.AuthenticatedClient(base_url=server.http_url, token="generated")
    task = RemoveBackgroundRequest.from_dict(
        {
            "taskType": "removeBackground",
            "taskUUID": str(uuid.uuid4()),
            "inputImage": b64(CAR),
            "outputType": "base64Data",
            "outputFormat": "PNG",
        }
    )
    answer = run_tasks.sync(client=client, body=[task])
    assert isinstance(answer, RestResponse) and answer.errors == []
    [result] = answer.data
    assert isinstance(result, BackgroundRemovalResult)
    assert result.task_uuid == task.task_uuid
