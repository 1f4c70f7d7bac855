"""Everything the sweep report shows, gathered from the store: the plan, run statuses, every fit
(isoFLOP, parametric with held-out check, frontier, test-time) with intervals and warnings, the
measured frontier against the fixed-depth baseline, and training stability. Rendering lives in
`html_report.py`; notebooks can call `build_report` too.

A fit that cannot be made (too few runs, one budget, ...) becomes a section with its error, so
one failed analysis never hides the others.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from parcae_scaling.scaling.report.store_tables import load_store, require_sweeps, save_fit
from parcae_scaling.scaling.effective_params import EffectiveParams
from parcae_scaling.scaling.results import DEFAULT_BOOTSTRAP
from parcae_scaling.scaling.report.analyses import (
    looped_runs, run_frontier, run_isoflop, run_noise, run_parametric, run_test_time,
)
from parcae_scaling.scaling.report.figures import stability_figure
from parcae_scaling.scaling.stability import STABILITY_METRICS, run_health, verdict
from parcae_scaling.scaling.report.sweep_figures import measured_frontier_figure


@dataclass(frozen=True, kw_only=True)
class Section:
    """One block of the report: a title, text, tables, figures (PNG paths), warnings or an error."""

    title: str
    summary: str = ""
    tables: tuple[tuple[str, pd.DataFrame], ...] = ()
    figures: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class SweepReport:
    sweeps: tuple[str, ...]
    store_url: str
    specs: dict[str, dict | None]
    sections: tuple[Section, ...]
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def figures(self) -> list[Path]:
        return [f for s in self.sections for f in s.figures]


def _pngs(out_dir: Path, *names: str) -> tuple[Path, ...]:
    return tuple(p for p in (out_dir / f"{n}.png" for n in names) if p.is_file())


def _attempt(title: str, make: Callable[[], Section]) -> Section:
    try:
        return make()
    except (ValueError, KeyError, RuntimeError, ZeroDivisionError, FloatingPointError) as err:
        return Section(title=title, error=f"{type(err).__name__}: {err}")


def plan_section(store, sweep: str) -> Section:
    """The recorded spec re-planned: run count, FLOPs, tokens, device-hours, flagged problems."""
    from parcae_scaling.sweeps import plan, spec_from_dict
    from parcae_scaling.sweeps.claims import sweep_spec

    raw = sweep_spec(store, sweep)
    if raw is None:
        raise ValueError(f"sweep {sweep!r} is not recorded in the store; launch it first (parcae-sweep launch)")
    p = plan(spec_from_dict(raw, source=f"store sweep {sweep!r}"))
    rows = pd.DataFrame([r.row() for r in p.runs])
    summary = (f"{len(p.runs)} runs, {p.total_flops:.4g} FLOPs, {p.total_tokens:,} tokens, "
               f"{p.total_device_hours:.3g} {p.spec.resources.device}-hours estimated at MFU {p.spec.resources.mfu:g}"
               + (f"\n{p.spec.description.strip()}" if p.spec.description else ""))
    problems = tuple(sorted({f"{prob} ({sum(1 for _, q in p.problems if q == prob)} runs)" for _, prob in p.problems}))
    return Section(title=f"Plan: {sweep}", summary=summary, tables=(("planned runs", rows),), warnings=problems)


def status_section(store, sweep: str) -> Section:
    from parcae_scaling.sweeps import status_table

    df = status_table(store, sweep)
    counts = ", ".join(f"{k}: {v}" for k, v in df["status"].value_counts().items())
    cols = ["run_id", "model", "mu_rec", "budget_flops", "tokens", "status", "progress", "last_loss",
            "attempt", "failure_kind", "failure_message"]
    not_ok = df[df["status"] != "succeeded"]
    warnings = tuple(f"run {r.run_id} ({r.model}, mu_rec={r.mu_rec}): {r.status}"
                     + (f" [{r.failure_kind}]" if isinstance(r.failure_kind, str) else "") for r in not_ok.itertuples())
    return Section(title=f"Run status: {sweep}", summary=counts, tables=(("runs", df[cols]),), warnings=warnings)


def noise_section(runs: pd.DataFrame, sweep: str, out_dir: Path, *, assumed_sd: float | None) -> Section:
    """Replicates: cell means +- SE, noise floors per family and budget, and every cell's difference
    from the fixed-depth baselines with its interval."""
    rep = run_noise(runs, out_dir, assumed_sd=assumed_sd)
    cols = [c for c in ("arch", "model", "budget_flops", "mu_rec", "n", "loss", "se") if c in rep.cells.columns]
    tables = [("cells (mean loss, standard error over seeds)", rep.cells[cols]), ("noise floors", rep.floors)]
    tables += [(f"minus {name} (95% intervals)", d) for name, d in rep.differences.items()]
    warnings = () if rep.noise.measured else (f"{rep.noise.describe()}: every interval in this report assumes it; "
                                              "add seeds to the spec to measure it",)
    return Section(title=f"Replicates and noise: {sweep}", summary=rep.summary(), tables=tuple(tables),
                   warnings=warnings)


def fit_sections(store_url: str, sweep: str, out_dir: Path, *, model: str | None, n_bootstrap: int,
                 effective_params: EffectiveParams | None, assumed_sd: float | None = None) -> list[Section]:
    """Noise, isoFLOP, parametric (+ held-out), frontier and test-time fits for each looped model."""
    all_runs = load_store(store_url, sweep)
    loop = looped_runs(all_runs)
    models = sorted(loop["model"].astype(str).unique()) if "model" in loop.columns else [None]
    if model is not None:
        models = [model]
    source = f"store {store_url} sweep {sweep}"
    sections: list[Section] = [_attempt(f"Replicates and noise: {sweep}", lambda: noise_section(
        all_runs, sweep, out_dir / _safe(sweep), assumed_sd=assumed_sd))]
    for m in models:
        df = loop if m is None else loop[loop["model"].astype(str) == m]
        tag = f"{sweep}" + (f" / {m}" if m else "")
        out = out_dir / _safe(sweep) / _safe(m or "all")

        def iso() -> Section:
            res = run_isoflop(df, out, n_bootstrap=n_bootstrap, source=source, assumed_sd=assumed_sd)
            return Section(title=f"isoFLOP: {tag}", summary=res.summary(), warnings=res.warnings,
                           tables=(("optima", _optima_table(res)),),
                           figures=_pngs(out, "isoflop_curves", "isoflop_optima"))
        sections.append(_attempt(f"isoFLOP: {tag}", iso))

        fit_box: dict = {}

        def parametric() -> Section:
            fit, extra = run_parametric(df, out, n_bootstrap=n_bootstrap, source=source,
                                        effective_params=effective_params, assumed_sd=assumed_sd)
            fit_box["fit"] = fit
            fit_id = save_fit(store_url, sweep, fit, model=m)
            text = fit.summary() + (f"\nheld out: {extra['holdout']['summary']}" if "holdout" in extra else "")
            text += f"\nsaved in the store as fit {fit_id} (Store.load_fit({fit_id}))"
            return Section(title=f"Parametric law: {tag}", summary=text, warnings=fit.warnings,
                           tables=(("parameters (95% bootstrap intervals)", _params_table(fit)),),
                           figures=_pngs(out, "residuals_parcae"))
        sections.append(_attempt(f"Parametric law: {tag}", parametric))

        def front() -> Section:
            title = f"Compute-optimal frontier vs fixed depth: {tag}"
            # The measured frontier needs only the runs: it is drawn even when the law is not.
            figs = measured_frontier_figure(all_runs if m is None else _with_baselines(all_runs, m), out)
            measured = tuple(f for f in figs if f.suffix == ".png")
            if "fit" not in fit_box:
                return Section(title=title, figures=measured, warnings=(
                    "no parametric fit (see the section above): only the measured frontier is shown",))
            fit = fit_box["fit"]
            if fit.unidentified:  # the figure says so too: a law that is not identified is not a result
                run_frontier(df, fit, out, effective_params=effective_params)
                return Section(title=title, figures=_pngs(out, "frontier") + measured, warnings=(
                    f"the parametric law is not identified ({', '.join(fit.unidentified)}): its frontier is not "
                    "a result and is not tabulated; the measured frontier (cell means +- SE) is shown",))
            fr = run_frontier(df, fit, out, effective_params=effective_params)
            table = pd.DataFrame([{"budget_flops": p.budget_flops, "mu_star": p.mu_star, "tokens_star": p.tokens_star,
                                   "loss_star": p.loss_star, "fixed_depth_loss": p.baseline_loss,
                                   "looped_minus_fixed": p.loss_star - p.baseline_loss,
                                   "low": p.gap_interval.low if p.gap_interval else float("nan"),
                                   "high": p.gap_interval.high if p.gap_interval else float("nan"),
                                   "extrapolated": p.extrapolated} for p in fr.points])
            dropped = (f"{fr.bootstrap_dropped} bootstrap refits left out of the intervals (a coefficient "
                       "beyond float range)",) if fr.bootstrap_dropped else ()
            return Section(title=title, summary=fr.summary(), tables=(("frontier", table),), warnings=dropped,
                           figures=_pngs(out, "frontier") + measured)
        sections.append(_attempt(f"Compute-optimal frontier vs fixed depth: {tag}", front))

        def test_time() -> Section:
            tt = load_store(store_url, sweep, kind="test_time")
            if m is not None and "model" in tt.columns:
                tt = tt[tt["model"].astype(str) == m]
            res = run_test_time(tt, out)
            return Section(title=f"Test-time scaling: {tag}", summary=res.summary(), warnings=res.warnings,
                           figures=_pngs(out, "test_time"))
        sections.append(_attempt(f"Test-time scaling: {tag}", test_time))
    return sections


def _safe(name: str) -> str:
    """A folder name from a sweep or model name ("parcae-tiny-48[seq_len=64]" -> "parcae-tiny-48_seq_len_64")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def _with_baselines(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """The looped model's runs plus every fixed-depth (transformer) run on the same budgets."""
    keep = ((df["model"].astype(str) == model)
            | (df.get("arch", pd.Series("", index=df.index)).astype(str) == "transformer"))
    return df[keep]


def _optima_table(res) -> pd.DataFrame:
    rows = []
    for o in res.optima:
        ci = o.x_star_interval
        rows.append({"budget_flops": o.budget_flops, f"{res.x}*": o.x_star,
                     "95% interval": f"[{ci.low:.3g}, {ci.high:.3g}]" if ci else "-", "loss*": o.loss_star,
                     "curvature > 0": o.positive_curvature, "inside sampled range": o.in_range})
    return pd.DataFrame(rows)


def _params_table(fit) -> pd.DataFrame:
    rows = []
    for kind, values, cis in (("parameter", fit.params, fit.intervals),
                              ("derived", fit.derived, fit.derived_intervals)):
        for name, v in values.items():
            ci = cis.get(name)
            rows.append({"name": name, "kind": kind, "value": v, "low": ci.low if ci else float("nan"),
                         "high": ci.high if ci else float("nan")})
    return pd.DataFrame(rows)


def run_labels(store, runs: pd.DataFrame, *, with_sweep: bool = False) -> dict[str, str]:
    """A readable label per run: model, injection (if not diagonal), mu_rec, budget or tokens, lr."""
    labels = {}
    for r in runs.itertuples():
        spec = store.run_spec(r.run_id)
        model = spec.get("model", {})
        parts = [str(r.model).split("[")[0]]  # overrides show in the plan table
        if model.get("family") == "parcae":
            parts += [str(model.get("injection", "diagonal")), f"μ={int(r.mu_rec)}"]
        parts.append(f"C={r.budget_flops:.2g}" if pd.notna(r.budget_flops) else f"D={int(r.tokens):,}")
        parts.append(f"lr={spec.get('optimizer', {}).get('lr', float('nan')):g}")
        labels[r.run_id] = ", ".join(parts)
    if len(set(labels.values())) < len(labels):  # same settings in different sweeps or seeds
        labels = {rid: f"{lab} [{rid[:6]}]" for rid, lab in labels.items()}
    return labels


def stability_section(store, sweeps: Sequence[str], out_dir: Path) -> Section:
    """Diverged / spiked runs across the given sweeps, with the loss, rho(A-bar), state-norm figure."""
    runs = pd.concat([store.runs(s) for s in sweeps], ignore_index=True)
    history = store.metric_history(run_ids=list(runs["run_id"]), names=list(STABILITY_METRICS))
    health = run_health(runs, history, labels=run_labels(store, runs, with_sweep=len(sweeps) > 1))
    health.insert(2, "verdict", [verdict(r) for _, r in health.iterrows()])
    name = "stability_" + "_".join(sweeps) if len(sweeps) > 1 else "stability"
    figs = stability_figure(history, health.drop(columns="verdict"), out_dir / _safe("_".join(sweeps)), name=name)
    bad = health[health["verdict"] != "stable"]
    warnings = tuple(f"{r.label}: {r.verdict}"
                     + (f" at step {r.diverged_step}" if r.diverged and r.diverged_step else "")
                     + (f" ({r.n_spikes} spikes, worst {r.max_spike_ratio:.2f}x the best loss before it)"
                        if r.n_spikes else "")
                     for r in bad.itertuples())
    counts = ", ".join(f"{k}: {v}" for k, v in health["verdict"].value_counts().items())
    return Section(title="Training stability: " + ", ".join(sweeps), summary=counts,
                   tables=(("per run", health.drop(columns=["run_id"])),),
                   figures=tuple(f for f in figs if f.suffix == ".png"), warnings=warnings)


def build_report(store_url: str, sweeps: str | Sequence[str], out_dir: str | Path, *, model: str | None = None,
                 n_bootstrap: int = DEFAULT_BOOTSTRAP, effective_params: EffectiveParams | None = None,
                 fits: bool = True, assumed_sd: float | None = None) -> SweepReport:
    """Run every analysis of one or more sweeps into `out_dir` and collect the report sections."""
    from parcae_scaling.db import Store
    from parcae_scaling.sweeps.claims import sweep_spec

    names = (sweeps,) if isinstance(sweeps, str) else tuple(sweeps)
    if not names:
        raise ValueError("give at least one sweep name")
    out = Path(out_dir)
    sections: list[Section] = []
    with Store.open(store_url, upgrade=False) as store:
        require_sweeps(store, names, store_url)
        specs = {s: sweep_spec(store, s) for s in names}
        assumed = {s: assumed_sd if assumed_sd is not None else ((specs[s] or {}).get("noise") or {}).get("assumed_sd")
                   for s in names}
        for s in names:
            sections.append(_attempt(f"Plan: {s}", lambda s=s: plan_section(store, s)))
            sections.append(_attempt(f"Run status: {s}", lambda s=s: status_section(store, s)))
        if fits:
            for s in names:
                sections += fit_sections(store_url, s, out, model=model, n_bootstrap=n_bootstrap,
                                         effective_params=effective_params, assumed_sd=assumed[s])
        sections.append(_attempt("Training stability", lambda: stability_section(store, names, out)))
    return SweepReport(sweeps=names, store_url=store_url, specs=specs, sections=tuple(sections))
