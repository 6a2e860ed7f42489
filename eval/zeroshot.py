"""Zero-shot accuracy through the released lm-eval, on a model already in memory.

Local mode (``local_dir`` set, a folder laid out like ``../shared/data``): the six tasks
with data under ``<local_dir>/zeroshot`` are converted to their hub dataset's schema,
written as JSONL into a cache dir, and run through the task templates in ``eval/tasks/``,
which ``include:`` lm-eval's own task YAMLs so prompts and metrics stay lm-eval's.
Hub mode (``local_dir=None``): lm-eval's own task names, loading from the hub.
A task that cannot be loaded yields one ``status="unavailable"`` row; the rest still run.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any, Callable

from .metrics import ACC, ZEROSHOT_MEAN, ZEROSHOT_NAMES

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "tasks"

# lm-eval warnings that describe exactly what this harness asks for, logged for every run and
# task: an in-memory model passed as ``pretrained`` (on purpose: the pruned weights are not on
# disk), 0-shot replacing the task's default (the protocol is 0-shot), and acc/acc_norm taking
# lm-eval's default aggregation (mean) and direction (higher is better), which are the right
# ones. Only these are dropped; every other lm-eval warning still reaches the log.
HARMLESS_LM_EVAL = re.compile(
    r"`pretrained` model kwarg is not of type `str`"
    r"|Passed an already-initialized model through `pretrained`"
    r"|Overwriting default num_fewshot of \S+ from None to 0$"
    r"|metric acc(_norm)? is defined, but (higher_is_better|aggregation) is not")
LM_EVAL_LOGGERS = ("lm_eval.models.huggingface", "lm_eval.evaluator", "lm_eval.api.task")


class HarmlessLmEvalWarnings(logging.Filter):
    """Drops the lm-eval records matched by ``HARMLESS_LM_EVAL``; passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not HARMLESS_LM_EVAL.search(record.getMessage())


def quiet_lm_eval() -> None:
    """Install ``HarmlessLmEvalWarnings`` on lm-eval's loggers (once; idempotent)."""
    for name in LM_EVAL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HarmlessLmEvalWarnings) for f in logger.filters):
            logger.addFilter(HarmlessLmEvalWarnings())
DEFAULT_CACHE = Path("~/.cache/llm-prune-bench/zeroshot")
# lm-eval result keys kept per task: each zero-shot metric (eval/metrics.py) and its standard error.
METRICS = tuple(k for m in ZEROSHOT_NAMES for k in (m, m + "_stderr"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _arc(folder: Path, name: str) -> list[dict]:
    # allenai/ai2_arc flattens the original nested `question` into a string plus a
    # column-wise `choices` dict; answerKey keeps its original letter or digit.
    return [
        {
            "id": r["id"],
            "question": r["question"]["stem"],
            "choices": {
                "text": [c["text"] for c in r["question"]["choices"]],
                "label": [c["label"] for c in r["question"]["choices"]],
            },
            "answerKey": r["answerKey"],
        }
        for r in _read_jsonl(folder / name)
    ]


def _boolq(folder: Path) -> list[dict]:
    # super_glue/boolq: label is a ClassLabel with names [False, True], so 1 means "yes".
    rows = _read_jsonl(folder / "boolq.validation.jsonl")
    lab = {"true": 1, "false": 0, True: 1, False: 0}
    return [
        {"question": r["question"], "passage": r["passage"], "idx": r.get("idx", i),
         "label": lab[r["label"]]}
        for i, r in enumerate(rows)
    ]


def _rte(folder: Path) -> list[dict]:
    # lm-eval's `rte` reads nyu-mll/glue rte, whose ClassLabel names are
    # [entailment, not_entailment]: 0 = entailment, which its choices map to "True".
    rows = _read_jsonl(folder / "rte.validation.jsonl")
    lab = {"entailment": 0, "not_entailment": 1}
    return [
        {"sentence1": r["premise"], "sentence2": r["hypothesis"],
         "label": lab[r["label"]], "idx": r.get("idx", i)}
        for i, r in enumerate(rows)
    ]


def _piqa(folder: Path) -> list[dict]:
    # PIQA ships its labels in a separate file, one integer per line, row-aligned.
    rows = _read_jsonl(folder / "piqa.validation.jsonl")
    labels = (folder / "piqa.validation-labels.lst").read_text().split()
    if len(labels) != len(rows):
        raise ValueError(f"piqa: {len(rows)} rows but {len(labels)} labels")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(y)}
            for r, y in zip(rows, labels)]


_OBQA_CHOICE = re.compile(r"(?:^| )\(([A-Z])\) ")


def _openbookqa(folder: Path) -> list[dict]:
    # The TSV packs the choices as "(A) text (B) text ..."; the hub `main` config has them
    # column-wise as {text, label}. Split only on the expected labels, in order.
    out = []
    with (folder / "openbookqa.test.tsv").open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            parts = _OBQA_CHOICE.split(r["Choices"])
            labels, texts = parts[1::2], parts[2::2]
            if parts[0] or labels != [chr(65 + i) for i in range(len(labels))]:
                raise ValueError(f"openbookqa: cannot parse choices of {r['ID']}")
            out.append({"id": r["ID"], "question_stem": r["Question Stem"],
                        "choices": {"text": texts, "label": labels},
                        "answerKey": r["Answer Key"]})
    return out


# task -> (source files under <local_dir>/zeroshot, converter)
LOCAL_TASKS: dict[str, tuple[tuple[str, ...], Callable[[Path], list[dict]]]] = {
    "arc_easy": (("arc_easy.test.jsonl",), lambda d: _arc(d, "arc_easy.test.jsonl")),
    "arc_challenge": (("arc_challenge.test.jsonl",), lambda d: _arc(d, "arc_challenge.test.jsonl")),
    "boolq": (("boolq.validation.jsonl",), _boolq),
    "rte": (("rte.validation.jsonl",), _rte),
    "piqa": (("piqa.validation.jsonl", "piqa.validation-labels.lst"), _piqa),
    "openbookqa": (("openbookqa.test.tsv",), _openbookqa),
}

# ---- which names eval.zeroshot.tasks accepts (checked before anything loads) ---------------

# Tasks known without reading lm-eval's index: those with local copies and the paper's two
# hub-only ones (reported ``unavailable`` offline, as docs/store-and-report.md says).
KNOWN_TASKS = (*LOCAL_TASKS, "hellaswag", "winogrande")
# lm-eval output types scored by something other than acc/acc_norm (this harness records only those)
NOT_ACCURACY = {"loglikelihood_rolling": "perplexity", "generate_until": "generated text"}
_DECLARED = re.compile(r"^(task|group|tag):[ \t]*(.*?)[ \t]*(?:#.*)?$", re.M)
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_LIST_ITEM = re.compile(r"^[ \t]+-[ \t]*['\"]?([A-Za-z0-9_.\-]+)['\"]?[ \t]*$")


def _lm_eval_tasks_dir() -> Path | None:
    """lm-eval's task folder, found without importing lm-eval (seconds saved at validation)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return next((Path(r) / "tasks" for r in roots if (Path(r) / "tasks").is_dir()), None)


def _declared(text: str):
    """``(kind, name)`` of each task, group and tag a task YAML declares: ``task: name``,
    ``tag: name``, ``tag: [a, b]`` or a block list under ``group:``/``tag:``."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        found = _DECLARED.match(line)
        if not found:
            continue
        kind, rest = found.group(1), found.group(2).strip("'\"")
        if _NAME.fullmatch(rest):
            yield kind, rest
        elif rest.startswith("[") and kind != "task":
            yield from ((kind, n.strip(" '\"")) for n in rest.strip("[]").split(",") if _NAME.fullmatch(n.strip(" '\"")))
        elif not rest and kind != "task":  # a block list; under task: it lists a group's members
            for item in lines[number + 1:]:
                member = _LIST_ITEM.match(item)
                if not member:
                    break
                yield kind, member.group(1)


def _scan_lm_eval_tasks(root: Path) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for kind, name in _declared(text):
            if kind == "task" or name not in index:
                index[name] = [kind, str(path.relative_to(root))]
    return index


@functools.lru_cache(maxsize=4)
def lm_eval_task_index(cache_dir: str | None = None) -> dict[str, tuple[str, Path]]:
    """``name -> (kind, yaml file)`` of every task, group and tag that lm-eval's own task YAMLs
    declare, read as text (a task wins over a group or tag of the same name). Reading the ~14,000
    YAMLs takes 3-15 s on a busy 2-core machine (lm-eval's TaskManager ~20 s), so the index is
    kept in ``<cache_dir>/lm-eval-tasks.json`` (``cache_dir``: the zero-shot cache, as elsewhere in
    this module) for the installed lm-eval (its version and folder); after that it is only read."""
    import importlib.metadata

    root = _lm_eval_tasks_dir()
    if root is None:
        return {}
    try:
        version = importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    stamp = {"lm_eval": version, "folder": str(root), "mtime": root.stat().st_mtime}
    cache = Path(cache_dir or DEFAULT_CACHE).expanduser() / "lm-eval-tasks.json"
    index = None
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
        index = stored["index"] if stored.get("stamp") == stamp else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if index is None:
        index = _scan_lm_eval_tasks(root)
        try:
            _write_if_changed(cache, json.dumps({"stamp": stamp, "index": index}))
        except OSError:
            pass  # a read-only cache: scan again next time
    return {name: (kind, root / rel) for name, (kind, rel) in index.items()}


def _output_type(path: Path, depth: int = 0) -> str | None:
    """The ``output_type`` a task YAML declares, itself or through its ``include:`` chain (None: unknown)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.search(r"^output_type:[ \t]*(\w+)", text, re.M)
    if found:
        return found.group(1)
    include = re.search(r"^include:[ \t]*['\"]?([^'\"\s#]+)", text, re.M)
    return _output_type(path.parent / include.group(1), depth + 1) if include and depth < 4 else None


def check_task_names(names, setting: str = "eval.zeroshot.tasks", cache_dir: str | None = None) -> list[str]:
    """Every name is an accuracy-scored lm-eval task (not a group or tag, not a perplexity
    dataset of ``eval.datasets``); raise ValueError in one line naming the first bad one and what
    is accepted. Known names (``KNOWN_TASKS``) are accepted without reading lm-eval's index."""
    from .datasets import CORPORA

    names = list(names)
    accepted = (f"lm-eval task names such as {', '.join(KNOWN_TASKS)} (local copies: "
                f"{', '.join(LOCAL_TASKS)}), or [] for none")
    for name in names:
        if name in KNOWN_TASKS:
            continue
        if name in CORPORA:
            raise ValueError(f"{setting} has {name!r}, a perplexity dataset: put it in eval.datasets; "
                             f"accepted {accepted}")
        index = lm_eval_task_index(cache_dir)
        kind, path = index.get(name, (None, None))
        if kind is None:
            import difflib

            close = difflib.get_close_matches(name, [n for n, (k, _) in index.items() if k == "task"] or KNOWN_TASKS,
                                              n=3, cutoff=0.75)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{setting} has unknown {name!r}: not a task of lm-eval{hint}; accepted {accepted}")
        if kind != "task":
            raise ValueError(f"{setting} has {name!r}, an lm-eval {kind} of several tasks, not a task: "
                             f"accepted its tasks by name, {accepted}")
        scored = NOT_ACCURACY.get(_output_type(path) or "")
        if scored:
            raise ValueError(f"{setting} has {name!r}, an lm-eval task scored by {scored}, not accuracy: "
                             f"accepted multiple-choice tasks, {accepted}")
    return names


def _check_sums(local_dir: Path, files: tuple[str, ...]) -> None:
    """Raise if a source file differs from the SHA256SUMS entry next to the data."""
    if not (sums := local_dir / "SHA256SUMS").exists():
        return
    pairs = (x.split(maxsplit=1) for x in sums.read_text().splitlines() if x.strip())
    known = {name.strip().removeprefix("./"): digest for digest, name in pairs}
    for f in files:
        want = known.get(f"zeroshot/{f}")
        if want and hashlib.sha256((local_dir / "zeroshot" / f).read_bytes()).hexdigest() != want:
            raise ValueError(f"{local_dir / 'zeroshot' / f} fails its SHA256SUMS check")


def convert_local(task: str, local_dir: str | Path) -> list[dict]:
    """Return the local rows of ``task`` converted to the hub dataset's schema."""
    local_dir = Path(local_dir).expanduser()
    files, convert = LOCAL_TASKS[task]
    missing = [f for f in files if not (local_dir / "zeroshot" / f).exists()]
    if missing:
        raise FileNotFoundError(f"{task}: no local data, looked for "
                                f"{', '.join(str(local_dir / 'zeroshot' / f) for f in missing)}")
    _check_sums(local_dir, files)
    return convert(local_dir / "zeroshot")


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting identical bytes would bump the mtime and void the datasets cache.
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)


def prepare_local_task_dir(tasks: list[str], local_dir: str | Path,
                           cache_dir: str | Path | None = None) -> Path:
    """Convert ``tasks``' local data, write runnable task YAMLs, return their folder.

    Raises FileNotFoundError/ValueError for the first task whose data cannot be prepared."""
    import lm_eval.tasks

    cache = Path(cache_dir or DEFAULT_CACHE).expanduser()
    lm_tasks = Path(lm_eval.tasks.__file__).resolve().parent
    for task in tasks:
        rows = convert_local(task, local_dir)
        template = (TEMPLATE_DIR / f"{task}.yaml").read_text(encoding="utf-8")
        split = re.search(r"^    (\w+): __DATA_FILE__$", template, re.M).group(1)
        data_file = cache / "data" / f"{task}.{split}.jsonl"
        _write_if_changed(data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        inc = re.search(r"^include: (\S+)$", template, re.M).group(1)
        # json.dumps gives a valid double-quoted YAML scalar for any path.
        text = template.replace(f"include: {inc}", f"include: {json.dumps(str(lm_tasks / inc))}")
        text = text.replace("__DATA_FILE__", json.dumps(str(data_file)))
        _write_if_changed(cache / "tasks" / f"{task}.yaml", text)
    return cache / "tasks"


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"


def _load_tasks(tasks: list[str], local_dir: str | None, cache_dir: str | None):
    """Build lm-eval Tasks: ({reported name: Task}, {name: why unavailable}, TaskManager)."""
    from lm_eval.tasks import TaskManager

    built: dict[str, Any] = {}
    missing: dict[str, str] = {}
    if local_dir is not None:
        ready = []
        for task in tasks:
            if task not in LOCAL_TASKS:
                missing[task] = (f"{task}: no local copy of its dataset in "
                                 f"{Path(local_dir).expanduser() / 'zeroshot'} (local data exists "
                                 f"only for {', '.join(LOCAL_TASKS)}); hub not tried in local mode")
                continue
            try:
                prepare_local_task_dir([task], local_dir, cache_dir)
                ready.append(task)
            except (OSError, ValueError, KeyError) as err:
                missing[task] = f"{task}: local data unusable ({_first_line(err)})"
        # Only our generated YAMLs are indexed: indexing lm-eval's ~15k defaults takes ~20 s
        # and the includes are absolute, so they are not needed.
        yaml_dir = Path(cache_dir or DEFAULT_CACHE).expanduser() / "tasks"
        tm = TaskManager(include_path=str(yaml_dir), include_defaults=False)
        names = {t: f"{t}_local" for t in ready}
    else:
        tm = TaskManager()
        names = {t: t for t in tasks}
    where = "local copy" if local_dir is not None else "Hugging Face hub"
    for task, name in names.items():
        if name not in tm.all_tasks:
            missing[task] = f"{task}: not a task known to lm-eval (nothing loaded from the {where})"
            continue
        try:
            built[task] = next(iter(tm.load([name])["tasks"].values()))
        except Exception as err:  # lm-eval raises anything from KeyError to HTTP errors
            missing[task] = f"{task}: could not load its dataset from the {where} ({_first_line(err)})"
    return built, missing, tm


def build_local_requests(task: str, local_dir: str | Path, limit: int | None = None,
                         cache_dir: str | Path | None = None) -> list[tuple[str, list[str], Any]]:
    """Return ``(context, continuations, gold)`` per doc, exactly as lm-eval builds them 0-shot.

    ``continuations`` include lm-eval's target delimiter (a leading space); ``gold`` is
    the task's ``doc_to_target`` (an index into the choices for these tasks).
    """
    from lm_eval.tasks import TaskManager

    yaml_dir = prepare_local_task_dir([task], local_dir, cache_dir)
    tm = TaskManager(include_path=str(yaml_dir), include_defaults=False)
    obj = next(iter(tm.load([f"{task}_local"])["tasks"].values()))
    obj.set_config(key="num_fewshot", value=0)
    obj.build_all_requests(limit=limit)
    by_doc: dict[int, list] = {}
    for inst in sorted(obj.instances, key=lambda i: (i.doc_id, i.idx)):
        ctx, cont = inst.arguments
        entry = by_doc.setdefault(inst.doc_id, [ctx, [], obj.doc_to_target(inst.doc)])
        entry[1].append(cont)
    return [tuple(by_doc[k]) for k in sorted(by_doc)]


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a stderr it cannot compute
        return math.nan


def evaluate_zeroshot(model, tokenizer, tasks: list[str], limit: int | None,
                      local_dir: str | None, device: str, batch_size: int = 1,
                      cache_dir: str | None = None) -> list[dict]:
    """Run lm-eval 0-shot on an in-memory model and return tidy result rows.

    Rows are ``{dataset, metric, value, status, message}`` with metrics acc/acc_norm and
    their stderr per task, one ``unavailable`` row per task that cannot be loaded, and
    ``zeroshot_mean`` rows averaging acc (and acc_norm) over the tasks that ran.
    """
    import numpy as np
    import torch
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    quiet_lm_eval()
    built, missing, tm = _load_tasks(list(tasks), local_dir, cache_dir)
    for msg in missing.values():
        log.warning(msg)
    results: dict[str, dict] = {}  # keyed by the requested (hub) task name
    if built:
        if device and torch.device(device) != model.device and not getattr(model, "hf_device_map", None):
            # HFLM ignores `device` for a pre-built model and uses model.device.
            model.to(device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        # simple_evaluate reseeds the global RNGs; restore them so a caller's later
        # sampling (e.g. calibration data) does not depend on whether eval ran.
        states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            out = simple_evaluate(model=lm, tasks=list(built.values()), num_fewshot=0,
                                  limit=limit, task_manager=tm, log_samples=False,
                                  bootstrap_iters=1000)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.set_rng_state(states[2])
        res_all = out["results"]
        results = {t: res_all[o.task_name] for t, o in built.items() if o.task_name in res_all}

    rows: list[dict] = []
    ok: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task not in results:
            msg = missing.get(task) or f"{task}: lm-eval returned no result"
            if task not in missing:
                log.warning(msg)
            rows.append({"dataset": task, "metric": ACC.name, "value": math.nan,
                         "status": "unavailable", "message": msg})
            continue
        res = results[task]
        ok[task] = {m: _as_float(res[f"{m},none"]) for m in METRICS if f"{m},none" in res}
        rows += [{"dataset": task, "metric": m, "value": v, "status": "ok", "message": ""}
                 for m, v in ok[task].items()]
    for metric in ZEROSHOT_NAMES:
        have = [t for t in ok if metric in ok[t]]
        if have:
            rows.append({"dataset": ZEROSHOT_MEAN, "metric": metric,
                         "value": float(sum(ok[t][metric] for t in have) / len(have)),
                         "status": "ok", "message": "mean over " + ", ".join(have)})
    return rows
