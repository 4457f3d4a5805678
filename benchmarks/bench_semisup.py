"""The paper's ablations at small scale: Table 2 (a)-(g) and Table 3 (a)-(e) on the synthetic data.

    python benchmarks/bench_semisup.py                       # 2 fractions x 3 seeds, see BENCHMARKS.md
    python benchmarks/bench_semisup.py --fractions=10 --seeds=0 --work_dir=/tmp/semisup  # one cell

Every row is the recipe itself (experiments/run.py's flags -> `tbkeras.recipe`), on the small-scale
settings the demo uses, on a dataset twice the demo's (`--bench_flagfile`, default
experiments/bench_semisup.flags, which includes experiments/small_scale.flags). Rows share their
upstream stages through the recipe's own DONE cache: each row has its own model_dir whose upstream
stage folders are symlinks to one copy, and the recipe checks their DONE identities as usual.

    work_dir/data/                        the synthetic videos and shards (one dataset for all)
    work_dir/ssl/ (or seed{S}/ssl/)       pretrain_invariant, pretrain_distinctive, pretrain_ssl, tstr
    work_dir/seed{S}/pct{P}/base/         prepare_data (labeled list), finetune_teachers -> rows b, c
    work_dir/seed{S}/pct{P}/{row}/        one student (or labels-only) stage and its evaluation

The seed changes the labeled subset, the initialisation of every finetuned, labels-only and
distilled network and the input order; the videos and the validation groups stay the same
(--synthetic_seed, --val_seed). With --share_ssl (the default, for a 2-core CPU's budget) the three
self-supervised pretrainings and TSTR are run once, under the first seed, and shared by all seeds;
--noshare_ssl reruns them per seed. Rows (paper Sec. 4.4):
  Table 2 (student from pretrain_ssl): a f_S alone (labels only), b f_I, c f_D, d f_S + f_I,
    e f_S + f_D, f f_S + f_I + f_D averaged, g the same with TSTR reweighting (TimeBalance).
  Table 3 (randomly initialised student): a labels only, b + f_I, c + f_D, d + both averaged, e + TSTR.
With --row_workers=2 the trained rows of a seed and fraction run two at a time, each in a process
of its own with half the cores' threads (the upstream stages still run here, on all of them).
Nothing is selected on the test split: no checkpoint is chosen at all (every model is its final
weights), and the validation top-1 is reported beside the test top-1.

Every row also reports its test top-1 on each kind of class (repetitive, order-dependent): TSTR
gives the invariant teacher the repetitive videos' larger share, which helps only where f_I is the
better teacher there.

Writes `--output` (benchmarks/results/semisup.json) and `--plot` (accuracy versus labeled fraction);
prints a Markdown table for BENCHMARKS.md.
"""
import collections
import concurrent.futures
import dataclasses
import importlib.util
import multiprocessing
import os
import statistics
import sys
import time

from absl import app, flags

from tbkeras.machine import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The recipe's flags are run.py's: load it as a module (its main() is not run).
_spec = importlib.util.spec_from_file_location("tbkeras_run_flags", os.path.join(REPO, "experiments", "run.py"))
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

FLAGS = flags.FLAGS
flags.DEFINE_string("bench_flagfile", os.path.join(REPO, "experiments", "bench_semisup.flags"),
                    "The recipe settings every row starts from: the demo's small-scale ones on a larger dataset.")
flags.DEFINE_list("fractions", ["10", "25"], "Labeled percentages of the synthetic training videos.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: labeled subset, validation groups, initialisation, input order.")
flags.DEFINE_multi_string("recipe_flag", [], "A run.py flag appended to every row, e.g. --recipe_flag=--ssl_epochs=1 "
                          "for a quick check of the machinery (the recorded figures use none).")
flags.DEFINE_list("rows", [], "Only these rows (a-g for Table 2, table3/a-table3/e), for a pilot; the recorded "
                  "table runs them all (empty).")
flags.DEFINE_integer("row_workers", 1, "Trained rows run this many at a time, each in a process of its own with "
                     "cores / row_workers TensorFlow threads; 1 runs them one by one in this process.")
flags.DEFINE_bool("share_ssl", True, "Pretrain the two teachers and the student's initialisation once, under the "
                  "first seed, for every seed (the CPU budget); --noshare_ssl pretrains per seed.")
flags.DEFINE_string("work_dir", os.path.join(REPO, "runs", "bench_semisup"), "Where every row's model_dir goes.")
flags.DEFINE_string("output", os.path.join(REPO, "benchmarks", "results", "semisup.json"), "Results JSON.")
flags.DEFINE_string("plot", os.path.join(REPO, "benchmarks", "results", "semisup_accuracy.png"),
                    "Accuracy-versus-labels plot (PNG).")

SSL_STAGES = ("pretrain_invariant", "pretrain_distinctive", "pretrain_ssl", "tstr")
# row -> (stage, the model evaluate scores, flags of the row)
TABLE2 = {
    "a": ("supervised", "supervised", ["--supervised_init=ssl"]),
    "b": (None, "invariant", []),
    "c": (None, "distinctive", []),
    "d": ("student", "student", ["--teachers=invariant"]),
    "e": ("student", "student", ["--teachers=distinctive"]),
    "f": ("student", "student", ["--teachers=both", "--reweighting=average"]),
    "g": ("student", "student", ["--teachers=both", "--reweighting=tstr"]),
}
TABLE3 = {
    "a": ("supervised", "supervised", ["--supervised_init=random"]),
    "b": ("student", "student", ["--student_init=random", "--teachers=invariant"]),
    "c": ("student", "student", ["--student_init=random", "--teachers=distinctive"]),
    "d": ("student", "student", ["--student_init=random", "--teachers=both", "--reweighting=average"]),
    "e": ("student", "student", ["--student_init=random", "--teachers=both", "--reweighting=tstr"]),
}
LABELS = {  # for the table and the plot
    "a": "(a) f_S alone", "b": "(b) f_I", "c": "(c) f_D", "d": "(d) f_S+f_I", "e": "(e) f_S+f_D",
    "f": "(f) f_S+f_I+f_D, average", "g": "(g) TimeBalance (TSTR)",
    "table3/a": "T3 (a) random init, labels only", "table3/b": "T3 (b) + f_I", "table3/c": "T3 (c) + f_D",
    "table3/d": "T3 (d) + both, average", "table3/e": "T3 (e) + both, TSTR",
}


class Runner:
    """Runs recipe stages in this process, one row configuration at a time."""

    def __init__(self, flagfile: str, work_dir: str, extra: list[str]):
        self.flagfile = flagfile
        self.work_dir = work_dir
        self.extra = extra
        self.seconds: collections.Counter[str] = collections.Counter()  # stage -> seconds, summed
        from tbkeras import recipe  # after flag parsing and the thread settings

        self.recipe = recipe

    def run(self, model_dir: str, stage: str, *extra: str) -> dict:
        FLAGS.unparse_flags()
        FLAGS([sys.argv[0], f"--flagfile={self.flagfile}", f"--model_dir={model_dir}",
               f"--synthetic_dir={os.path.join(self.work_dir, 'data')}", *extra, *self.extra])
        config = run.build_config()
        start = time.perf_counter()
        import keras

        keras.backend.clear_session()
        metrics = self.recipe.Recipe(config).run(stage)[stage]
        self.seconds[stage] += time.perf_counter() - start
        return metrics

    def train_row(self, row: "Row") -> dict:
        """Train one row's model (its own model_dir, upstream stages linked) and evaluate it."""
        self.run(row.model_dir, row.stage, *row.args)
        return self.run(row.model_dir, "evaluate", *row.args, f"--evaluate_models={row.evaluated}")[
            run_row_name(row.evaluated)]

    def train_rows(self, rows: list["Row"], workers: "RowWorkers | None"):
        """Yield (row, metrics) as the rows finish: here, one by one, or on `workers`."""
        if workers is None:
            for row in rows:
                yield row, self.train_row(row)
            return
        futures = {workers.pool.submit(_train_row_in_worker, row): row for row in rows}
        for future in concurrent.futures.as_completed(futures):
            metrics, seconds = future.result()
            self.seconds.update(seconds)  # Counter.update adds
            yield futures[future], metrics


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained row of one seed and fraction: `stage` run in `model_dir` with `args`, then the
    `evaluated` model scored."""

    name: str
    model_dir: str
    stage: str
    evaluated: str
    args: tuple[str, ...]


class RowWorkers:
    """Processes that train rows side by side, each with its own Runner and `threads` threads.

    At the small scale one train step barely uses a second core (BENCHMARKS.md: a student step
    takes 72 ms on 2 threads and 77 ms on 1), so two rows at a time on 2 cores finish sooner than
    one row on both (6 rows: 1.23x). Another thread count changes the float order, so the figures
    differ from those of one worker with all the threads.
    """

    def __init__(self, count: int, threads: int, flagfile: str, work_dir: str, extra: list[str]):
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=count, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(threads, flagfile, work_dir, extra))

    def close(self) -> None:
        self.pool.shutdown()


_worker_runner: Runner | None = None  # the Runner of a RowWorkers process


def _start_worker(threads: int, flagfile: str, work_dir: str, extra: list[str]) -> None:
    global _worker_runner
    _configure_tensorflow(threads)
    _worker_runner = Runner(flagfile, work_dir, extra)


def _train_row_in_worker(row: Row) -> tuple[dict, dict]:
    _worker_runner.seconds.clear()
    metrics = _worker_runner.train_row(row)
    return metrics, dict(_worker_runner.seconds)


def _configure_tensorflow(threads: int) -> None:
    """The allocator and thread counts, before TensorFlow starts its threads."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from tbkeras.malloc import tune_malloc

    tune_malloc()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _link(model_dir: str, source_dir: str, stages) -> None:
    """Make `model_dir/<stage>` a symlink to `source_dir/<stage>` for the shared upstream stages."""
    os.makedirs(model_dir, exist_ok=True)
    for stage in stages:
        link, target = os.path.join(model_dir, stage), os.path.abspath(os.path.join(source_dir, stage))
        if not os.path.lexists(link):
            os.makedirs(target, exist_ok=True)
            os.symlink(target, link)


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def run_benchmark(runner: Runner, fractions: list[str], seeds: list[str], share_ssl: bool,
                  progress=lambda results: None, rows_wanted: tuple[str, ...] = (),
                  workers: RowWorkers | None = None) -> dict:
    work = runner.work_dir
    test, val = {}, {}  # (percent, row) -> [top-1 % per seed]
    by_kind = {}  # (percent, row) -> {kind of class: [test top-1 % of that kind's videos per seed]}
    tstr = {"repetitive_mean_s": [], "order_mean_s": []}
    for seed in seeds:
        seed_flags = [f"--seed={seed}"]
        ssl_dir = os.path.join(work, "ssl") if share_ssl else os.path.join(work, f"seed{seed}", "ssl")
        for percent in fractions:
            pct_flags = [*seed_flags, f"--labeled_fraction={float(percent) / 100}"]
            base = os.path.join(work, f"seed{seed}", f"pct{percent}", "base")
            runner.run(base, "prepare_data", *pct_flags)  # the labeled list of this fraction and seed
            _link(base, ssl_dir, SSL_STAGES)
            if not share_ssl or seed == seeds[0]:
                # The first fraction trains them (SSL reads no label); later ones find them DONE.
                ssl_flags = pct_flags if not share_ssl else [f"--seed={seeds[0]}", *pct_flags[1:]]
                for stage in SSL_STAGES:
                    metrics = runner.run(base, stage, *ssl_flags)
                if percent == fractions[0]:
                    tstr["repetitive_mean_s"].append(metrics["repetitive_mean_s"])
                    tstr["order_mean_s"].append(metrics["order_mean_s"])
            runner.run(base, "finetune_teachers", *pct_flags)
            teachers = runner.run(base, "evaluate", *pct_flags, "--evaluate_models=invariant,distinctive")
            cell, trained = {}, []  # row name -> metrics; the rows to train
            for table, rows in (("", TABLE2), ("table3/", TABLE3)):
                for row, (stage, evaluated, row_flags) in rows.items():
                    name = table + row
                    if rows_wanted and name not in rows_wanted:
                        continue
                    if stage is None:
                        cell[name] = teachers[run_row_name(evaluated)]
                        continue
                    row_dir = os.path.join(work, f"seed{seed}", f"pct{percent}", name.replace("/", "_"))
                    _link(row_dir, base, SSL_STAGES + ("finetune_teachers",))
                    baseline = ("--supervised_baseline",) if stage == "supervised" else ()
                    trained.append(Row(name, row_dir, stage, evaluated, (*pct_flags, *row_flags, *baseline)))
            for row, metrics in runner.train_rows(trained, workers):
                cell[row.name] = metrics
                print(f"seed {seed}, {percent}% labeled, {LABELS[row.name]}: val {100 * metrics['val']['top1']:.1f}, "
                      f"test {100 * metrics['top1']:.1f}", flush=True)
            for name in (n for n in LABELS if n in cell):  # the table's order, whatever order rows finished in
                metrics = cell[name]
                test.setdefault((percent, name), []).append(100 * metrics["top1"])
                val.setdefault((percent, name), []).append(100 * metrics["val"]["top1"])
                for kind, top1 in metrics.get("top1_by_kind", {}).items():  # none in an older DONE
                    by_kind.setdefault((percent, name), {}).setdefault(kind, []).append(100 * top1)
            progress(_collect(test, val, by_kind, tstr))
    return _collect(test, val, by_kind, tstr)


def _collect(test: dict, val: dict, by_kind: dict, tstr: dict) -> dict:
    """The results JSON's per-fraction rows (with the test top-1 of each kind of class under
    "by_kind") and TSTR means from the runs so far."""
    results = {}
    for (percent, name), values in test.items():
        entry = {**_summary(values), "val": _summary(val[(percent, name)]),
                 "by_kind": {kind: _summary(v) for kind, v in by_kind.get((percent, name), {}).items()}}
        if name.startswith("table3/"):
            results.setdefault(percent, {}).setdefault("table3", {})[name.split("/")[1]] = entry
        else:
            results.setdefault(percent, {})[name] = entry
    results["tstr"] = {k: statistics.fmean(v) for k, v in tstr.items()}
    results["tstr"]["runs"] = tstr
    return results


# Differences paired by seed (same labeled list, same shared teachers): what each row adds.
PAIRS = {
    "g - a": ("g", "a", "TimeBalance against labels only from the same start (the target)"),
    "g - table3/a": ("g", "table3/a", "TimeBalance against labels only from random weights (the demo's comparison)"),
    "e - c": ("e", "c", "a student against its only teacher, f_D"),
    "g - e": ("g", "e", "TSTR's two teachers against f_D alone"),
    "g - f": ("g", "f", "TSTR reweighting against the plain average"),
    "table3/e - table3/a": ("table3/e", "table3/a", "TimeBalance from random weights against labels only"),
}


def paired(results: dict, fractions: list[str]) -> dict:
    """{percent: {"g - a": {"mean", "std", "runs", "val": {...}}, ...}}: per-seed differences of
    test (and validation) top-1 between two rows run on the same seeds."""
    out = {}
    for p in fractions:
        entries = _entries(results, p)
        for key, (first, second, _) in PAIRS.items():
            if first in entries and second in entries:
                a, b = entries[first], entries[second]
                out.setdefault(p, {})[key] = {
                    **_summary([x - y for x, y in zip(a["runs"], b["runs"])]),
                    "val": _summary([x - y for x, y in zip(a["val"]["runs"], b["val"]["runs"])])}
    return out


def paired_markdown(differences: dict, fractions: list[str]) -> str:
    lines = ["| difference, paired by seed | " + " | ".join(f"{p}% test | {p}% val" for p in fractions) + " |",
             "|---|" + "---:|---:|" * len(fractions)]
    for key, (first, second, what) in PAIRS.items():
        if not any(key in differences.get(p, {}) for p in fractions):
            continue
        entries = [differences.get(p, {}).get(key) for p in fractions]
        cells = [f"{_mean_std(e, signed=True)} | {_mean_std(e and e['val'], signed=True)}" for e in entries]
        short = {name: LABELS[name].split(")")[0] + ")" for name in (first, second)}  # "(g)", "T3 (a)"
        lines.append(f"| {short[first]} - {short[second]}: {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_row_name(short: str) -> str:
    from tbkeras import recipe

    return recipe.EVALUATED[short]


def markdown(results: dict, fractions: list[str]) -> str:
    """The Table 2 / 3 rows: test and validation top-1, then the test top-1 of each kind of class."""
    entries = {p: _entries(results, p) for p in fractions}
    kinds = list(dict.fromkeys(k for p in fractions for e in entries[p].values() for k in e.get("by_kind", {})))
    head = "| row | " + " | ".join(f"{p}% test top-1 | {p}% val top-1" + "".join(
        f" | {p}% test, {kind}" for kind in kinds) for p in fractions) + " |"
    lines = [head, "|---|" + ("---:|---:|" + "---:|" * len(kinds)) * len(fractions)]
    for name in (*TABLE2, *(f"table3/{r}" for r in TABLE3)):
        if not any(name in entries[p] for p in fractions):
            continue  # not run (--rows)
        cells = []
        for p in fractions:
            entry = entries[p].get(name)
            if entry is None:
                cells.append(" | ".join(["-"] * (2 + len(kinds))))
                continue
            cells.append(" | ".join([_mean_std(entry), _mean_std(entry["val"]),
                                     *(_mean_std(entry.get("by_kind", {}).get(kind)) for kind in kinds)]))
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _entries(results: dict, percent: str) -> dict:
    """{row name as in LABELS: its entry} of one fraction."""
    rows = {name: entry for name, entry in results[percent].items() if name != "table3"}
    return {**rows, **{f"table3/{r}": entry for r, entry in results[percent].get("table3", {}).items()}}


def _mean_std(entry: dict | None, signed: bool = False) -> str:
    return "-" if entry is None else f"{entry['mean']:{'+' if signed else ''}.1f} ± {entry['std']:.1f}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    fractions, seeds = list(FLAGS.fractions), list(FLAGS.seeds)
    flagfile, work_dir, output, plot = FLAGS.bench_flagfile, FLAGS.work_dir, FLAGS.output, FLAGS.plot
    extra, share_ssl, row_workers = list(FLAGS.recipe_flag), FLAGS.share_ssl, FLAGS.row_workers  # before the
    # Runner re-parses FLAGS with each row's recipe flags
    for p in fractions:
        if not 0 < float(p) < 100:
            raise app.UsageError(f"--fractions: {p} is not a percentage in (0, 100)")
    rows_wanted = tuple(FLAGS.rows)
    unknown = [r for r in rows_wanted if r not in LABELS]
    if unknown:
        raise app.UsageError(f"--rows: unknown {unknown}; choose from {', '.join(LABELS)}")
    if row_workers < 1:
        raise app.UsageError(f"--row_workers must be >= 1, got {row_workers}")
    cores = os.cpu_count() or 1
    _configure_tensorflow(cores)
    start = time.perf_counter()
    runner = Runner(flagfile, work_dir, extra)
    workers = None
    if row_workers > 1:
        workers = RowWorkers(row_workers, max(1, cores // row_workers), flagfile, work_dir, extra)
    from tbkeras import figures
    from tbkeras.files import atomic_write_json

    def write(results: dict, complete: bool) -> None:
        """Results so far (after every fraction of every seed), so a stopped run leaves its rows."""
        results["setup"] = {
            "complete": complete, "share_ssl": share_ssl, "flagfile": os.path.relpath(flagfile, REPO),
            "fractions_percent": fractions, "seeds": seeds, "recipe_flags": extra, "cpu": cpu_model(),
            "rows": list(rows_wanted) or "all", "row_workers": row_workers,
            "cores": os.cpu_count(), "seconds": round(time.perf_counter() - start, 1),
            "seconds_per_stage": {k: round(v, 1) for k, v in runner.seconds.items()},
            "metric": "video top-1 (%) on the synthetic test split; 'val' on the held-out training groups",
            "command": " ".join(["python benchmarks/bench_semisup.py", *sys.argv[1:]]),
        }
        atomic_write_json(output, results)

    try:
        results = run_benchmark(runner, fractions, seeds, share_ssl, progress=lambda r: write(r, complete=False),
                                rows_wanted=rows_wanted, workers=workers)
    finally:
        if workers is not None:
            workers.close()
    results["paired"] = paired(results, fractions)
    write(results, complete=True)
    plotted = {"a": "(a) f_S alone", "b": "(b) f_I", "c": "(c) f_D", "g": "(g) TimeBalance (TSTR)",
               "table3/a": "T3 (a) random init, labels only", "table3/e": "T3 (e) random init, TimeBalance"}
    curves = {}
    for p in fractions:
        entries = _entries(results, p)
        curves[float(p) / 100] = {label: (entries[r]["mean"], entries[r]["std"])
                                  for r, label in plotted.items() if r in entries}
    figures.plot_accuracy_vs_labeled_fraction(plot, curves, title="Small-scale ablations (synthetic, 8 classes)",
                                              ylabel="test top-1 (%)")
    print(markdown(results, fractions))
    print(paired_markdown(results["paired"], fractions))
    print(f"TSTR mean s: repetitive {results['tstr']['repetitive_mean_s']:.3f}, "
          f"order-dependent {results['tstr']['order_mean_s']:.3f}")
    minutes = (time.perf_counter() - start) / 60
    print(f"{minutes:.1f} min on {cpu_model()} ({os.cpu_count()} cores); wrote {output} and {plot}")


if __name__ == "__main__":
    app.run(main)
