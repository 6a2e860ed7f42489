"""One number format in every table (terminal, Markdown, CSV, LaTeX), the collapsed marker, datasets
left out when unavailable everywhere, the vocabulary size's source, and the nearest published points."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from runners.reporting.aggregate import Stat
from core.families import FAMILIES
from runners.reporting.formatting import COLLAPSED, number, vocab_size
from runners.reporting.report import build_report, summarize
from tests.paper_store import paper_store


@pytest.mark.parametrize("value,text", [(3702220.35, "3.702e+06"), (686840, "6.868e+05"), (686.84, "686.8"),
                                        (21.6123, "21.61"), (30, "30.00"), (12345.6, "12350"), (1234.4, "1234"),
                                        (99999, "1.000e+05"), (1e5, "1.000e+05"), (0.70710678, "0.7071"),
                                        (-7.30265, "-7.303"), (0.0, "0.000"), (100.0, "100.0"), (math.nan, "nan")])
def test_number_four_significant_digits_scientific_from_1e5(value, text):
    """4 significant digits, trailing zeros kept, scientific notation at or above 1e5 (after rounding)."""
    assert number(value) == text


def test_stat_cell_same_rule_for_mean_and_std():
    """`mean ± std (n=3)`: the std follows the same rule as the mean; the mark follows the mean."""
    assert Stat(3.7e6, 1.23456e5, 3).text() == "3.700e+06 ± 1.235e+05 (n=3)"
    assert Stat(35.0, 1.0, 3).text(mark=COLLAPSED) == f"35.00{COLLAPSED} ± 1.000 (n=3)"
    assert Stat(0.4512, 0.00321, 2, {"nan": 1}).text(100.0) == "45.12 ± 0.3210 (n=2; 1 nan)"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    results = paper_store(tmp_path_factory.mktemp("paper") / "results")
    build_report(results, compare_published=True)
    return results


def _cells(text: str) -> list[str]:
    """Every numeric part of a table's cells: the mean and the std of `mean ± std (n=3)` cells."""
    out = []
    for cell in text:
        for part in str(cell).replace("*", "").replace(COLLAPSED, "").split(" (")[0].split(" ± "):
            try:
                float(part)
            except ValueError:
                continue
            out.append(part)
    return out


def _rule(part: str) -> bool:
    """Written the way runners/formatting.number writes its own value."""
    return number(float(part)) == part


def test_tables_use_one_format_everywhere(built):
    """Markdown, CSV, LaTeX and the terminal summary show the same strings, each by the 4-digit rule."""
    tables = built / "report" / "tables"
    csv = pd.read_csv(tables / "ppl__smollm2-135m__quick__s512__w40.csv", dtype=str).set_index("pruner")
    parts = _cells(csv.to_numpy().ravel())
    assert parts and all(_rule(p) for p in parts), [p for p in parts if not _rule(p)]
    assert csv.loc["magnitude layers=all", "0.9 wikitext2"] == f"3.702e+06{COLLAPSED}"
    assert csv.loc["wanda layers=all", "0.8 wikitext2"] == "686.8 ± 20.61 (n=3)"
    assert csv.loc["dense", "0.5 wikitext2"] == "21.61" and csv.loc["magnitude layers=all", "0.7 ptb"] == "10080"
    md = (tables / "ppl__smollm2-135m__quick__s512__w40.md").read_text()
    tex = (tables / "ppl__smollm2-135m__quick__s512__w40.tex").read_text()
    summary = summarize(built)
    for text in (md, summary):
        assert "| 3.702e+06†" in text and "686.8 ± 20.61 (n=3)" in text and "3.70222e+06" not in text
    assert "3.702e+06$^\\dagger$" in tex and "686.8 $\\pm$ 20.61 (n=3)" in tex
    zs = pd.read_csv(tables / "zeroshot_acc__smollm2-135m__quick__s512__w40.csv", dtype=str).set_index("pruner")
    parts = _cells(zs.to_numpy().ravel())
    assert all(_rule(p) for p in parts) and zs.loc["dense", "mean"] == "45.00"   # accuracies in %, 4 digits


def test_collapsed_marker_and_footnote(built):
    """A perplexity above the vocabulary size (49152, from conf/shapes) ends in † with one footnote;
    a value below it is not marked."""
    tables = built / "report" / "tables"
    csv = pd.read_csv(tables / "ppl__smollm2-135m__quick__s512__w40.csv", dtype=str).set_index("pruner")
    marked = {(r, c) for r in csv.index for c in csv.columns if COLLAPSED in str(csv.loc[r, c])}
    assert marked == {("magnitude layers=all", f"{sp} {ds}") for sp in ("0.8", "0.9", "3:4")
                      for ds in ("wikitext2", "ptb")}
    note = ("† perplexity above 49152, the vocabulary size of smollm2-135m (conf/shapes/smollm2-135m.json): "
            "worse than a uniform guess")
    md = (tables / "ppl__smollm2-135m__quick__s512__w40.md").read_text()
    assert md.count(note) == 1 and (built / "report" / "report.md").read_text().count(note) == 1
    assert note in summarize(built)
    tex = (tables / "ppl__smollm2-135m__quick__s512__w40.tex").read_text()
    assert tex.index("\\bottomrule") < tex.index("\\footnotesize $^\\dagger$ perplexity above 49152") < \
        tex.index("\\end{tabular}")


def test_unavailable_everywhere_dropped_with_one_note(built):
    """C4 (every run unavailable) has no column, BoolQ no zero-shot column; each message appears once."""
    report = (built / "report" / "report.md").read_text()
    tables = built / "report" / "tables"
    header = pd.read_csv(tables / "ppl__smollm2-135m__quick__s512__w40.csv", nrows=0).columns
    assert not [c for c in header if "c4" in c] and "0.5 ptb" in header
    assert "boolq" not in pd.read_csv(tables / "zeroshot_acc__smollm2-135m__quick__s512__w40.csv", nrows=0).columns
    assert report.count("c4 validation: not found offline") == 1
    assert report.count("boolq: no local file") == 1  # under the acc table, not again under acc_norm
    assert "- `c4` is left out of the table and plots: unavailable in every run" in report
    assert "CUDA out of memory" in report.split("## Notes")[1]  # the other failures keep their note


def test_vocab_size_sources(tmp_path):
    """Recorded config first, then conf/shapes, then the tiny defaults (core/families.py)."""
    from runners.execution.models import ModelSpec, _tiny_model

    tiny = {"source": "tiny", "family": "opt", "tiny": {"hidden_size": 8, "num_layers": 1, "ffn_dim": 8,
                                                        "heads": 2}}
    assert vocab_size("tiny-opt", [{"config": {"model": tiny}}]) == (50272, "tiny opt default of core/families.py")
    tiny["tiny"]["vocab_size"] = 1000
    assert vocab_size("tiny-opt", [{"config": {"model": tiny}}])[0] == 1000
    assert vocab_size("smollm2-135m", [{"config": {}}]) == (49152, "conf/shapes/smollm2-135m.json")
    assert vocab_size("tiny-llama", [{}])[0] == 49152          # no recorded config: conf/model/tiny-llama.yaml
    assert vocab_size("some-hub-model", [{}]) == (None, "")    # nothing says: no marker
    for family, vocab in ((name, f.tiny_vocab) for name, f in FAMILIES.items()):
        spec = ModelSpec(name=f"tiny-{family}", source="tiny", family=family,
                         tiny={"hidden_size": 8, "num_layers": 1, "ffn_dim": 8, "heads": 2, "kv_heads": 1})
        assert _tiny_model(spec, 0).config.vocab_size == vocab


def test_compare_with_nothing_to_compare_lists_nearest_points(built):
    """report.compare=true without a match lists the nearest published points (same pruner and sparsity
    on another model; the same model at another seqlen) instead of only saying that nothing matched."""
    report = (built / "report" / "report.md").read_text()
    assert "No run matches a published number. The nearest published points" in report
    near = pd.read_csv(built / "report" / "tables" / "comparison_nearest.csv", dtype=str)
    row = near[(near["ours"] == "smollm2-135m sparsegpt 0.5 layers=all") & (near["model"] == "opt-1.3b")
               & (near["dataset"] == "wikitext2")].iloc[0]
    assert row["nearest because"] == "same pruner and sparsity, another model" and row["published"] == "17.46"
    dense = near[near["ours"] == "smollm2-135m dense 0"].iloc[0]  # ours at seqlen 512, published at 2048
    assert (dense["model"], dense["published"], dense["eval_seqlen"]) == ("smollm2-135m", "18.80", "2048")
    assert near.groupby("ours").size().max() <= 4
