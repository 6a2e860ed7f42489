"""One number format for every table, the collapsed-model marker, and datasets no run could evaluate.

Used by the tables (terminal summary, Markdown, CSV, LaTeX), the seed cells ``mean ± std (n=3)``,
the paired differences, the published comparison and the plots, so a number reads the same
everywhere:

* :func:`number`: 4 significant digits (``21.61``, ``686.8``, ``1235``, ``0.7071``), scientific
  notation at or above 1e5 (``3.702e+06``); the std of a cell follows the same rule.
* :data:`COLLAPSED`: appended to a perplexity above the model's vocabulary size. A model that
  guessed uniformly over its V tokens would have perplexity exactly V, so such a number means
  the pruned model collapsed; :func:`collapsed_note` is the footnote under the table.
* :func:`vocab_size`: the vocabulary size of a model, read from what the runs recorded
  (the resolved ``config`` of ``manifest.json``), else ``conf/shapes/<model>.json``, else the
  defaults of the tiny random models (runners/execution/models.py).
* :func:`unavailable_everywhere`: the datasets that were unavailable in every run of a table;
  they are left out of tables and plots with one note (:func:`dropped_note`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from eval.metrics import PPL, WHOLE_RUN, ZEROSHOT_MEAN
from core.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
COLLAPSED = "†"
SIGNIFICANT = 4
SCIENTIFIC_FROM = 1e5


def number(value: float) -> str:
    """``value`` with 4 significant digits, in scientific notation at or above 1e5 (``3.702e+06``).

    Trailing zeros are kept (``30.00``) so every cell of a column shows the same precision;
    ``nan``/``inf`` are written as Python does.
    """
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    rounded = float(f"{x:.{SIGNIFICANT}g}")  # decide on the rounded value: 99999 is 1.000e+05
    if abs(rounded) >= SCIENTIFIC_FROM:
        return f"{x:.{SIGNIFICANT - 1}e}"
    if abs(rounded) >= 10 ** (SIGNIFICANT - 1):
        return f"{rounded:.0f}"  # 1000 <= |x| < 1e5: plain (%g would write 1.235e+04), 4 digits kept
    return f"{x:#.{SIGNIFICANT}g}".rstrip(".")  # '#' keeps 30.00; a bare trailing '.' is dropped


def is_collapsed(ppl: float, vocab: float | None) -> bool:
    """True when a perplexity is above the vocabulary size (worse than guessing uniformly)."""
    return vocab is not None and pd.notna(vocab) and pd.notna(ppl) and float(ppl) > float(vocab)


def collapsed_note(vocab: int, model: str = "", source: str = "") -> str:
    """The footnote that explains :data:`COLLAPSED` under a perplexity table."""
    of = f" of {model}" if model else ""
    where = f" ({source})" if source else ""
    return (f"{COLLAPSED} perplexity above {vocab}, the vocabulary size{of}{where}: worse than a uniform guess "
            "over the vocabulary, i.e. the pruned model collapsed.")


def _model_config(manifest: dict) -> dict:
    config = manifest.get("config") if isinstance(manifest, dict) else None
    model = (config or {}).get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def _repo_model_config(model: str) -> dict:
    """``conf/model/<model>.yaml`` as a dict (for stores whose manifests hold no resolved config)."""
    path = ROOT / "conf" / "model" / f"{model}.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf  # only needed for this fallback

    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a malformed preset must not break a report
        return {}
    return loaded if isinstance(loaded, dict) else {}


def vocab_size(model: str, manifests: list[dict]) -> tuple[int | None, str]:
    """``(vocabulary size, where it came from)`` of ``model``; ``(None, "")`` when nothing says.

    Order: a ``vocab_size`` in a run's recorded model config (``model.vocab_size`` or
    ``model.tiny.vocab_size``); ``conf/shapes/<model>.json``; for a tiny random model (recorded
    ``source: tiny``, or the repository's ``conf/model/<model>.yaml`` when the run recorded no
    config) the default of core/families.py for its family.
    """
    configs = [_model_config(m) for m in manifests]
    for cfg in configs:
        for where, value in (("model.vocab_size", cfg.get("vocab_size")),
                             ("model.tiny.vocab_size", (cfg.get("tiny") or {}).get("vocab_size"))):
            if value:
                return int(value), f"recorded {where}"
    shapes = ROOT / "conf" / "shapes" / f"{model}.json"
    if shapes.exists():
        try:
            value = json.loads(shapes.read_text()).get("vocab_size")
        except (OSError, ValueError):
            value = None
        if value:
            return int(value), f"conf/shapes/{model}.json"
    recorded = [c for c in configs if c]
    for cfg, where in [(c, "recorded config") for c in recorded] or [(_repo_model_config(model),
                                                                      f"conf/model/{model}.yaml")]:
        if cfg.get("source") == "tiny" and cfg.get("family") in FAMILIES:
            tiny = cfg.get("tiny") or {}
            if tiny.get("vocab_size"):
                return int(tiny["vocab_size"]), f"{where}, model.tiny.vocab_size"
            return FAMILIES[cfg["family"]].tiny_vocab, f"tiny {cfg['family']} default of core/families.py"
    return None, ""


def unavailable_everywhere(frame: pd.DataFrame, metrics=(PPL.name,)) -> dict[str, str]:
    """``{dataset: message}`` of the datasets (of rows with a metric in ``metrics``) that are
    ``unavailable`` in every run that has a row for them. A run that failed as a whole (one
    ``dataset=all`` row) says nothing about a dataset and does not count."""
    rows = frame[frame["metric"].isin(metrics) & ~frame["dataset"].isin([WHOLE_RUN, ZEROSHOT_MEAN])]
    out = {}
    for ds, g in rows.groupby("dataset", sort=False):
        if (g["status"].astype(str) == "unavailable").all():
            messages = [m for m in dict.fromkeys(g["message"].fillna("").astype(str).str.strip()) if m]
            out[str(ds)] = "; ".join(messages) or "no message recorded"
    return out


def dropped_note(dataset: str, message: str) -> str:
    """The one line that says why a dataset is not in a table or plot."""
    return f"`{dataset}` is left out of the table and plots: unavailable in every run ({message})."
