"""Fit results in the store: the full FitResult as JSON text plus queryable key columns."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from parcae_scaling.db.records import check_json
from parcae_scaling.db.schema import Fit, utcnow


def _fit_payload(result: Any) -> dict[str, Any]:
    """A FitResult-like object as a dict: `to_dict()`, a dataclass, or a mapping."""
    if hasattr(result, "to_dict"):
        payload = result.to_dict()
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        payload = dataclasses.asdict(result)
    elif isinstance(result, Mapping):
        payload = dict(result)
    else:
        raise ValueError(
            f"fit result must be a dataclass, a mapping or have to_dict(), got {type(result).__name__}"
        )
    return payload


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


class StoreFits:
    """Fit side of `Store` (mixed in)."""

    engine: Engine

    def _read(self) -> Connection:  # provided by StoreQueries
        raise NotImplementedError

    def save_fit(
        self,
        result: Any,
        *,
        kind: str | None = None,
        selection: Mapping[str, Any] | None = None,
        convention: str | None = None,
        sweep: str | None = None,
    ) -> int:
        """Store a FitResult (dataclass, mapping or `to_dict()`); returns its fit id.

        kind / selection / convention default to the payload's `law` / `selection` /
        `convention` (or `flop_convention`); its `params` and `intervals` become queryable
        columns. `load_fit(id)` returns the payload exactly as saved."""
        payload = _fit_payload(result)
        kind = kind or payload.get("law")
        convention = convention or payload.get("convention") or payload.get("flop_convention")
        selection = selection if selection is not None else payload.get("selection")
        if not kind or not convention:
            raise ValueError(
                "save_fit needs a kind (e.g. 'parametric') and a counting convention: pass kind=... and "
                "convention=..., or give the result `law` and `convention` fields"
            )
        if not isinstance(selection, Mapping):
            raise ValueError("save_fit needs selection=... (which runs went into the fit) as a dict")
        text = json.dumps(payload, sort_keys=True, default=str)  # NaN/inf kept verbatim
        params = payload.get("params", payload.get("parameters"))
        unc = payload.get("intervals", payload.get("uncertainties"))
        with self.engine.begin() as conn:
            res = conn.execute(
                (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(Fit).returning(Fit.id),
                {
                    "kind": kind, "sweep": sweep, "selection": check_json(selection, "fit selection"),
                    "convention": convention,
                    "parameters": _finite_or_none(params) if isinstance(params, Mapping) else None,
                    "uncertainties": _finite_or_none(unc) if isinstance(unc, Mapping) else None,
                    "result": text, "created": utcnow(),
                },
            )
            return int(res.scalar_one())

    def load_fit(self, fit_id: int) -> dict[str, Any]:
        """The stored FitResult payload (as saved, NaN/inf included)."""
        with self._read() as conn:
            text = conn.execute(select(Fit.result).where(Fit.id == fit_id)).scalar_one_or_none()
        if text is None:
            raise KeyError(f"no fit with id {fit_id}; list stored fits with Store.fits()")
        return json.loads(text)

