"""``python -m service.publish_schema [DIR]`` (``make schema``): write the protocol's JSON Schema,
AsyncAPI and OpenAPI documents, generated from the structs in protocol/, to DIR
(protocol/schema)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from protocol.schema import asyncapi, json_schema, openapi

FILES = {"runware-bg.schema.json": json_schema, "asyncapi.json": asyncapi, "openapi.json": openapi}
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "protocol" / "schema"


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, build in FILES.items():
        (target / name).write_text(render(build))
        print(f"wrote {target / name}")


if __name__ == "__main__":
    main()
