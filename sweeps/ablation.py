"""Injection ablation: one sweep spec expanded into one sweep per injection (diagonal, addition,
concatenation), launched through the sweeps library. The spec format has no injection axis, so
each variant is its own sweep `<name>-<injection>`; the report compares them side by side.

    python -m parcae_scaling.sweeps.ablation stability --store sqlite:///parcae.sqlite
"""

from __future__ import annotations

import argparse
from typing import Sequence

from parcae_scaling.model.config import Injection
from parcae_scaling.sweeps import LaunchReport, SweepSpec, get_backend, launch, load_spec, plan, spec_from_dict

INJECTIONS: tuple[Injection, ...] = ("diagonal", "addition", "concatenation")


def injection_ablation(spec: SweepSpec, injections: Sequence[str] = INJECTIONS) -> list[SweepSpec]:
    """The spec once per injection, named `<spec.name>-<injection>` (validated like any spec)."""
    raw = spec.to_dict()
    return [spec_from_dict({**raw, "name": f"{spec.name}-{inj}",
                            "model_overrides": {**raw["model_overrides"], "injection": inj}},
                           source=f"{spec.source} (injection {inj})") for inj in injections]


def ablation_sweep_names(spec: SweepSpec, injections: Sequence[str] = INJECTIONS) -> list[str]:
    return [s.name for s in injection_ablation(spec, injections)]


def launch_injection_ablation(spec: SweepSpec, store_url: str, *, backend: str = "local",
                              injections: Sequence[str] = INJECTIONS) -> list[LaunchReport]:
    """Launch every variant (waits for each; relaunching skips finished runs)."""
    from parcae_scaling.db import Store

    reports = []
    with Store.open(store_url) as store:
        for variant in injection_ablation(spec, injections):
            reports.append(launch(plan(variant), store, get_backend(backend), store_url=store_url))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default="stability", help="spec file or built-in name (default: stability)")
    ap.add_argument("--store", default="sqlite:///parcae.sqlite", help="store URL")
    ap.add_argument("--backend", default="local", help="local | submitit | ray")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    reports = launch_injection_ablation(spec, args.store, backend=args.backend)
    for r in reports:
        print(f"sweep {r.sweep}: " + ", ".join(f"{k}={v}" for k, v in sorted(r.final.items())))
    print("report: parcae-fit report --store " + args.store + " --sweep " + ",".join(r.sweep for r in reports)
          + " --no-fits --out fits/" + spec.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
