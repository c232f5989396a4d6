"""Validate a STAC ItemCollection offline: pystac's packaged core schemas plus local extensions.

Any schema that is neither packaged nor in schemas/ fails the test instead of being fetched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.file import FileExtension
from pystac.validation import JsonSchemaSTACValidator, validate_dict

SCHEMAS = Path(__file__).parent / "schemas"
LOCAL_SCHEMAS = {FileExtension.get_schema_uri(): SCHEMAS / "file-v2.1.0.json"}


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's validator with every schema it needs in its cache, and no way to the network."""

    def __init__(self) -> None:
        super().__init__()
        for uri, path in LOCAL_SCHEMAS.items():
            self.schema_cache[uri] = json.loads(path.read_text())

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise AssertionError(f"schema {schema_uri} is not available offline")
        return super()._get_schema(schema_uri)


def validate_item_collection(collection: dict[str, Any]) -> list[pystac.Item]:
    """Validate every Item (core schema and extensions); returns them parsed by pystac."""
    assert collection["type"] == "FeatureCollection"
    assert isinstance(collection["features"], list)
    validator = OfflineValidator()
    for feature in collection["features"]:
        checked = validate_dict(feature, validator=validator)
        # Core schema first, then one schema per declared extension: none may be skipped.
        assert len(checked) == 1 + len(feature.get("stac_extensions", [])), checked
    parsed = pystac.ItemCollection.from_dict(collection, preserve_dict=True)
    return list(parsed.items)
