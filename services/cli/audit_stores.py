"""Which stores `timebank audit federation` reads: from a config and data dir, from a data
dir's federation.json, or given one by one; and the options that replace some of them."""

from __future__ import annotations

from pathlib import Path


class StoresError(ValueError):
    """The options do not name a federation's stores; the message says why, in one line."""


def federation_stores(
    config: Path | None, data_dir: Path | None, clearing_store: str | None, banks: list[str]
) -> tuple[dict[str, str], dict[str, int]]:
    """Store URLs by name ("clearing" and each bank id), and the banks' default overdrafts
    where the config or the description gives them.

    ``data_dir`` is None when the operator gave --clearing-store but neither --data-dir nor
    --config: then --clearing-store and --bank are the whole federation. Otherwise they
    replace the stores the config or the description names, as an operator auditing a copy
    of one store, or a bank run on another host, expects; a --bank that is not one of the
    federation's banks is refused rather than audited alone.
    """
    given = _given_banks(banks)
    if data_dir is None:
        if not given:
            raise StoresError("give each bank's store with --bank ID=URL")
        return {"clearing": clearing_store or "", **given}, {}
    if config is not None:
        stores, limits = _configured_stores(config, data_dir)
        where = str(config)
    else:
        stores, limits = _described_stores(data_dir)
        where = str(data_dir / "federation.json")
    for bank_id, url in given.items():
        if bank_id not in stores:
            raise StoresError(
                f"--bank {bank_id}={url}: {bank_id} is not a bank in {where} "
                f"(its banks: {', '.join(sorted(set(stores) - {'clearing'})) or 'none'})"
            )
        stores[bank_id] = url
    if clearing_store is not None:
        stores["clearing"] = clearing_store
    for name, url in stores.items():
        if not url:  # a bank run on another host: `up` only describes it
            option = "--clearing-store URL" if name == "clearing" else f"--bank {name}=URL"
            raise StoresError(
                f"{where} names no store for {name} (run on another host?); give it with {option}"
            )
    return stores, limits


def _given_banks(banks: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for item in banks:
        bank_id, _, url = item.partition("=")
        if not bank_id or not url or bank_id == "clearing":
            raise StoresError(f"--bank {item!r}: give it as ID=URL")
        if bank_id in given:
            raise StoresError(f"--bank {bank_id}: given twice")
        given[bank_id] = url
    return given


def _configured_stores(config: Path, data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The stores `timebank up --config CONFIG --data-dir DATA_DIR` keeps (its store template,
    if the config has one)."""
    from services.local.config import ConfigError, load_config
    from services.local.datadir import StoreTemplateError, local_store_url, store_from_template

    try:
        federation = load_config(config)
    except ConfigError as e:
        raise StoresError(str(e)) from None
    names = ["clearing", *(b.id for b in federation.banks)]
    template = federation.store_template
    try:
        stores = {
            name: store_from_template(template, name)
            if template
            else local_store_url(data_dir, name)
            for name in names
        }
    except StoreTemplateError as e:
        raise StoresError(f"{config}: {e}") from None
    return stores, {b.id: b.overdraft_limit_minutes for b in federation.banks}


def _described_stores(data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The stores named in DATA_DIR/federation.json, as `timebank up` and the demo write it."""
    from services.local.federation import DESCRIPTION_FILE, read_description

    path = data_dir / DESCRIPTION_FILE
    try:
        described = read_description(data_dir)
        stores = {"clearing": str(described["clearing"].get("store") or "")}
        stores |= {
            bank_id: str(bank.get("store") or "") for bank_id, bank in described["banks"].items()
        }
        limits = {
            bank_id: int(bank["overdraft_limit_minutes"])
            for bank_id, bank in described["banks"].items()
        }
    except OSError as e:
        raise StoresError(
            f"cannot read {path} ({e.strerror}); give --config or --clearing-store"
        ) from None
    except KeyError as e:
        raise StoresError(f"{path} does not describe a federation's stores (no {e})") from None
    except (ValueError, TypeError, AttributeError) as e:
        said = str(e) if str(path) in str(e) else f"{path}: {e}"
        raise StoresError(f"{said}; it does not describe a federation's stores") from None
    return stores, limits
