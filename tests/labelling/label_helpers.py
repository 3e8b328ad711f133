"""Tiny query sets for the labelling tests: a few 64x64 clips made with imageio."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from vla_gym.training.labelling.server import LabellingServer, make_labelling_server
from vla_gym.training.query_files import ClipRef, Query, QueryManifest, write_manifest

ENV_ID = "vla_gym/TabletopPick-v0"


def write_clip(path: Path, colour: tuple[int, int, int], frames: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=10, macro_block_size=1) as writer:
        for k in range(frames):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[:] = colour
            frame[8 * k: 8 * k + 8, :, :] = 255  # a moving bar, so the clip is not static
            writer.append_data(frame)


def make_manifest(n_queries: int, env_id: str = ENV_ID) -> QueryManifest:
    queries = [Query(id=f"q{k}", instruction=f"pick up the red block ({k})",
                     left=ClipRef(2 * k, f"clips/{2 * k}.mp4"),
                     right=ClipRef(2 * k + 1, f"clips/{2 * k + 1}.mp4"))
               for k in range(n_queries)]
    return QueryManifest(env_id=env_id, segment_length=6, queries=queries, meta={"seed": 0})


def make_query_set(directory: Path, n_queries: int = 3, with_clips: bool = True) -> QueryManifest:
    manifest = make_manifest(n_queries)
    if with_clips:
        for k, clip in enumerate(manifest.clip_paths()):
            write_clip(directory / clip, (40 * k % 256, 100, 200 - 30 * k % 200))
    write_manifest(directory, manifest)
    return manifest


@contextlib.contextmanager
def running_server(queries: Path, db: Path, **kwargs) -> Iterator[LabellingServer]:
    """A labelling server on a free localhost port, serving from a thread."""
    server = make_labelling_server(queries, db, port=0, **kwargs)
    # a short poll interval: shutdown() waits for one poll, and every test stops a server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def request(server: LabellingServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; 4xx/5xx are returned, not raised."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post_json(server: LabellingServer, path: str, payload) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    status, _, data = request(server, "POST", path, body,
                              {"Content-Type": "application/json"})
    return status, json.loads(data)


def get_json(server: LabellingServer, path: str) -> tuple[int, dict]:
    status, _, data = request(server, "GET", path)
    return status, json.loads(data)
