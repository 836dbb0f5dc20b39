"""A federation's data dir: one `timebank up` at a time (a lock), and its description,
federation.json, with every path in it relative to the dir, so a copied dir describes the copy.

What an earlier run fixed (ports and tokens) is read back from the description, so scripts and
banks started by hand keep working across restarts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.common.stores import StoreURLError, parse_store_url

DESCRIPTION_FILE = "federation.json"
LOCK_FILE = "up.lock"
_SQLITE = "sqlite:///"
# The description's fields that name a file (the others are URLs, tokens and numbers).
_PATH_FIELDS = ("nats_seed", "signing_key")


class StoreTemplateError(ValueError):
    """A store template that names no store per service, or no usable store."""


def local_store_url(data_dir: Path, name: str) -> str:
    """Where `timebank up` keeps the clearing house's (``clearing``) or a bank's events."""
    return f"sqlite:///{data_dir.resolve() / (name + '.db')}"


def port_of(url: object) -> int | None:
    """The port of a URL an earlier run wrote down, if any."""
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def store_from_template(template: str, name: str) -> str:
    """A service's store URL from a template with {name} and/or {schema} (the name, with "-"
    as "_", fit for a PostgreSQL schema); StoreTemplateError if the template is unusable."""
    if "{name}" not in template and "{schema}" not in template:
        raise StoreTemplateError(f"store template {template!r} has neither {{name}} nor {{schema}}")
    url = template.replace("{name}", name).replace("{schema}", name.replace("-", "_"))
    try:
        parse_store_url(url)
    except StoreURLError as e:
        raise StoreTemplateError(f"store template {template!r}: {e}") from None
    return url


def read_description(data_dir: Path) -> dict[str, Any]:
    """DATA_DIR/federation.json, as `timebank up` and the demo write it (URLs, tokens, stores),
    with its paths made absolute against DATA_DIR; OSError if it cannot be read, ValueError if
    it is not a JSON object."""
    path = data_dir / DESCRIPTION_FILE
    described = json.loads(path.read_text())
    if not isinstance(described, dict):
        raise ValueError(f"{path} holds no JSON object")
    return _paths(described, lambda p: _absolute(data_dir.resolve(), p))


def write_description(data_dir: Path, described: dict[str, Any]) -> Path:
    """Write the description with every path under DATA_DIR relative to it; readable by its
    owner only, since it holds the tokens. Written to a new file and renamed, so a reader never
    sees half of it."""
    root = data_dir.resolve()
    path = data_dir / DESCRIPTION_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(_paths(described, lambda p: _relative(root, p)), indent=2))
    partial.chmod(0o600)
    partial.replace(path)
    return path


def earlier_description(data_dir: Path) -> dict[str, Any]:
    """What an earlier run on this data dir described; empty if none (or unreadable)."""
    try:
        return read_description(data_dir)
    except (OSError, ValueError):
        return {}


def _paths(described: dict[str, Any], convert: Callable[[str], str]) -> dict[str, Any]:
    """A copy of the description with ``convert`` applied to each store file and key path."""
    out: dict[str, Any] = json.loads(json.dumps(described))
    banks = out.get("banks")
    sections = [out.get("clearing"), *(banks.values() if isinstance(banks, dict) else ())]
    for section in sections:
        if not isinstance(section, dict):
            continue
        store = section.get("store")
        if isinstance(store, str) and store.startswith(_SQLITE):
            section["store"] = _SQLITE + convert(store[len(_SQLITE) :])
        for key in _PATH_FIELDS:
            if isinstance(section.get(key), str):
                section[key] = convert(section[key])
    return out


def _relative(root: Path, path: str) -> str:
    """A path under ``root`` as relative to it; any other path as it is."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _absolute(root: Path, path: str) -> str:
    return path if Path(path).is_absolute() else str(root / path)
