"""The official Python SDK (runware 0.5.24), unmodified, against the real server.

It uploads a local file first (imageUpload, a data URI) and then sends the legacy task
``imageBackgroundRemoval`` with ``inputImage`` = the uploaded imageUUID and the settings
flattened to the top level.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

import numpy as np
import pytest
from runware import IBackgroundRemovalSettings, IImageBackgroundRemoval, Runware

from tests.support import FIXTURES, UNIT, http_get, open_image

CAR = FIXTURES / "car-1.jpg"


def image_of(result, output_type: str):
    if output_type == "URL":
        status, _, body = http_get(result.imageURL)
        assert status == 200
        return open_image(body)
    if output_type == "dataURI":
        header, _, payload = result.imageDataURI.partition(",")
        assert header == "data:image/png;base64"
        return open_image(base64.b64decode(payload))
    return open_image(base64.b64decode(result.imageBase64Data))


@pytest.fixture
async def sdk(server):
    runware = Runware(api_key="python-sdk-key", url=server.ws_url)
    await runware.connect()
    yield runware
    await runware.disconnect()


@pytest.mark.parametrize("output_type", ["URL", "dataURI", "base64Data"])
async def test_background_removal_for_each_output_type(sdk: Runware, output_type: str):
    settings = IBackgroundRemovalSettings(
        alphaMatting=True, postProcessMask=True, alphaMattingErodeSize=10, rgba=[255, 255, 255, 0]
    )
    results = await sdk.imageBackgroundRemoval(
        IImageBackgroundRemoval(
            inputImage=str(CAR),
            settings=settings,
            outputType=output_type,
            outputFormat="PNG",
            includeCost=True,
            model="runware:109@1",
        )
    )
    (result,) = results
    assert result.imageUUID and result.inputImageUUID and result.taskUUID
    assert result.cost == pytest.approx(0.0013)
    image = image_of(result, output_type)
    assert image.size == (480, 360) and image.mode == "RGBA"
    assert set(np.unique(np.asarray(image)[..., 3])) <= set(range(256))


async def test_url_input_without_settings(sdk: Runware, image_host: str):
    (result,) = await sdk.imageBackgroundRemoval(
        IImageBackgroundRemoval(
            inputImage=f"{image_host}/car.jpg", outputType="base64Data", outputFormat="WEBP"
        )
    )
    assert open_image(base64.b64decode(result.imageBase64Data)).format == "WEBP"


async def test_stays_connected_through_several_heartbeats(sdk: Runware):
    socket = sdk._ws
    first_pong = sdk._last_pong_time
    await asyncio.sleep(12 * UNIT)  # the SDK pings every 5 s and reconnects after 30 s silence
    assert sdk._ws is socket and sdk.connected()
    assert sdk._last_pong_time > first_pong
    (result,) = await sdk.imageBackgroundRemoval(
        IImageBackgroundRemoval(inputImage=str(CAR), outputType="URL", outputFormat="JPG")
    )
    assert result.imageURL.endswith(".jpg")


async def test_a_dropped_socket_mid_task_is_recovered_by_conflict_and_polling(server):
    """The SDK reconnects, resends the same taskUUID, gets conflictTaskUUID, polls getResponse."""
    sdk = Runware(api_key="python-sdk-drop", url=server.ws_url)
    await sdk.connect()
    anime = FIXTURES / "anime-girl-1.jpg"
    request = IImageBackgroundRemoval(
        inputImage=str(anime),
        outputType="URL",
        outputFormat="PNG",
        settings=IBackgroundRemovalSettings(alphaMatting=True),
    )
    call = asyncio.create_task(sdk.imageBackgroundRemoval(request))
    await asyncio.sleep(1.0 * UNIT)  # uploaded, and the removal is running on the server
    sdk._ws.transport.abort()  # the network drops
    (result,) = await asyncio.wait_for(call, 120 * UNIT)
    assert result.imageUUID and http_get(result.imageURL)[0] == 200
    # runware 0.5.24's own disconnect() sometimes raises "await wasn't used with future" after
    # it has reconnected (it awaits its background reconnect task); that is the SDK's teardown.
    with contextlib.suppress(RuntimeError):
        await sdk.disconnect()
