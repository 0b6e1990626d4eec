"""The live Foxglove view, checked with a client that speaks the Foxglove WebSocket protocol as published
(github.com/foxglove/ws-protocol; foxglove-sdk's server speaks it as subprotocol foxglove.sdk.v1 and refuses
a client offering only the older foxglove.websocket.v1): it connects, reads the server's
`serverInfo` and `advertise`, subscribes to /overlay, /action and /scores, and decodes the binary
messageData frames (opcode 0x01, subscription id u32 LE, log time u64 LE, payload)."""
import asyncio
import json
import os
import signal
import struct

import pytest

from ros_helpers import free_port, start_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBPROTOCOLS = ['foxglove.sdk.v1', 'foxglove.websocket.v1']   # what Foxglove's app offers
MESSAGE_DATA = 0x01
MODEL_LOAD_S = 240


async def watch(url: str, want: dict[str, int], timeout: float) -> tuple[dict, dict]:
    """Connect (retrying while the pipeline loads), subscribe to the `want` topics and collect payloads until
    each has its count. Returns ({topic: channel}, {topic: [payload bytes]})."""
    import websockets
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            ws = await websockets.connect(url, subprotocols=SUBPROTOCOLS, max_size=None)
            break
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)     # the server is not up yet (the node is still loading): retry
    channels, received, subscribed = {}, {t: [] for t in want}, {}
    async with ws:
        assert ws.subprotocol in SUBPROTOCOLS
        while any(len(received[t]) < n for t, n in want.items()):
            left = deadline - asyncio.get_running_loop().time()
            frame = await asyncio.wait_for(ws.recv(), timeout=max(left, 0.1))
            if isinstance(frame, str):
                msg = json.loads(frame)
                if msg['op'] == 'advertise':
                    for ch in msg['channels']:
                        channels[ch['topic']] = ch
                    new = [{'id': len(subscribed) + i + 1, 'channelId': channels[t]['id']}
                           for i, t in enumerate(t for t in want if t in channels and t not in subscribed)]
                    for sub in new:
                        topic = next(t for t in want if channels.get(t, {}).get('id') == sub['channelId'])
                        subscribed[topic] = sub['id']
                    if new:
                        await ws.send(json.dumps({'op': 'subscribe', 'subscriptions': new}))
                continue
            opcode = frame[0]
            assert opcode == MESSAGE_DATA, opcode
            sub_id, _log_time = struct.unpack_from('<IQ', frame, 1)
            topic = next(t for t, i in subscribed.items() if i == sub_id)
            received[topic].append(frame[13:])
    return channels, received


def test_foxglove_client_receives_overlay_pictures_actions_and_scores(tmp_path, video_path):
    port = free_port()
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'composed', '--source', video_path, '--loop', 'true', '--foxglove', 'true',
                          '--set', f'overlay.foxglove_port={port}', log_path=str(log))
    try:
        channels, received = asyncio.run(watch(f'ws://127.0.0.1:{port}', {'/overlay': 2, '/action': 10,
                                                                           '/scores': 5}, MODEL_LOAD_S))
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]
    assert channels['/overlay']['schemaName'] == 'foxglove.CompressedImage'
    assert channels['/action']['encoding'] == 'json' and channels['/scores']['encoding'] == 'json'
    # The picture is a JPEG inside the protobuf CompressedImage (the bytes field carries it whole).
    assert all(b'\xff\xd8\xff' in payload for payload in received['/overlay'])
    actions = [json.loads(p) for p in received['/action']]
    assert all(a['action'] in ('CONTINUE', 'STOP', 'FAILSAFE') for a in actions)
    assert [a['frame_sequence'] for a in actions if a['trigger'] != 'watchdog'] == sorted(
        a['frame_sequence'] for a in actions if a['trigger'] != 'watchdog')
    scores = [json.loads(p) for p in received['/scores']]
    assert all(set(s) == {'STOP', 'STOP_enter'} for s in scores)     # the default policy's one rule
    assert all(s['STOP_enter'] == pytest.approx(0.3) for s in scores)  # config/policy.yaml: enter 0.3
