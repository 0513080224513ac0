"""One paper's ablation table(s) over seeds: every row of the script's ABLATIONS trained on its embedded data,
then mean ± sd per row and the paired difference against the full model with a 95% t interval.

    python benchmarks/ablation.py ugatit                                   # every row, seeds 0-2, the CPU preset
    python benchmarks/ablation.py guidegan --rows "RAM, RGBA" --seeds 5    # one row (and its table's full model)
    python benchmarks/ablation.py ugatit --iteration 200 -- --img_size 32  # flags after -- go to every run
    python benchmarks/ablation.py guidegan --rows "Table 2 (supervised)" --against "none, GuideGAN's losses"
                                          # each row paired with the row without attention instead

Each row-seed is one subprocess (`--jobs` at a time, one thread each) in <out>/<row>/seed<s>/, with its log in
log.txt there. Finished row-seeds (result.json) are never run again, and an interrupted run continues from its last
checkpoint, so running the same command again picks up where it stopped. Writes <out>/table.md, runs.csv, runs.json,
plot.png and index.html (the tables, the plot and a link to each run's page, common.report). Exit status: 0, or 1 when a row-seed failed (its table row says why; the next invocation retries it),
2 for bad input, 130/143 on Ctrl-C/SIGTERM.
"""
import argparse
import csv
import importlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stats import format_difference, format_mean_sd, mean_sd, paired_difference  # noqa: E402
from common.train import UsageError  # noqa: E402

SCRIPTS = ("ugatit", "attentiongan", "uait", "guidegan", "dagan")
DIRECTIONS = ("A2B", "B2A")  # a key "<direction>/<metric>" is the model's; any other prefix (identity/, real/,
#                              uniform/, ...) is a floor or ceiling the evaluation reports beside it

# --- the tables ------------------------------------------------------------------------------------------------

def column(results, row, metric):
    """seed -> value of one metric of one row (a run may lack a metric: CycleGAN has no attention iou)."""
    return {s: e[metric] for s, e in results.get(row, {}).items() if metric in e}


def model_metrics(runs):
    """The model's metric keys in the order the evaluation reports them."""
    return list(dict.fromkeys(k for run in runs for k in run if k.split("/")[0] in DIRECTIONS))


def paired_with(rows, against):
    """The row a table's differences are taken against: `against` where it is one of the rows, else the full model."""
    return against if against in rows else rows[0]


def format_table(title, rows, results, failures, against=None):
    """Markdown for one table. rows: its row names, the full model first; results[row][seed]: that run's eval
    dict; failures[row][seed]: the last line of a failed run's log; against: see paired_with."""
    paired, runs = paired_with(rows, against), [e for r in rows for e in results.get(r, {}).values()]
    metrics = model_metrics(runs)
    line = lambda *cells: "| " + " | ".join(cells) + " |"
    header = [line("row", "n", *metrics), "|---" * (len(metrics) + 2) + "|"]
    out = [f"### {title}", ""] + header
    for row in rows:
        got = results.get(row, {})
        if got:
            cells = [format_mean_sd(list(column(results, row, m).values())) for m in metrics]
            out.append(line(row, f"n={len(got)}", *cells))
        for seed, error in sorted(failures.get(row, {}).items()):
            out.append(line(f"{row} (seed {seed})", "failed: " + error.replace("|", "/")))
    if len(rows) > 1 and metrics:
        out += ["", f"Paired difference, row − {paired} (mean over the seeds both finished; 95% t interval; "
                    "* where it excludes 0):", ""] + header
        base = results.get(paired, {})
        for row in [r for r in rows if r != paired]:
            got = results.get(row, {})
            cells = [format_difference(paired_difference(column(results, row, m), column(results, paired, m)))
                     for m in metrics]
            out.append(line(f"{row} − {paired}", f"n={len(got.keys() & base.keys())}", *cells))
    references = {}
    for run in runs:
        for k, v in run.items():
            if k not in metrics:
                references.setdefault(k, []).append(v)
    if references:
        out += ["", "Floor and ceiling (mean over all runs): "
                + ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in references.items())]
    return "\n".join(out) + "\n"


def plot(path, tables, results, against=None):
    """One panel per table and model metric, one bar per row (the row the others are paired with orange: the full
    model, or `against`): mean, sd as the error bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(title, rows, metric) for title, rows in tables.items()
              for metric in model_metrics([e for r in rows for e in results.get(r, {}).values()])]
    width, height = min(4, max(1, len(panels))), max(1, math.ceil(len(panels) / 4))
    fig, axes = plt.subplots(height, width, figsize=(3.5 * width, 3.2 * height), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, rows, metric) in zip(axes.flat, panels):
        stats = [mean_sd(list(v.values())) if (v := column(results, r, metric)) else (math.nan, math.nan)
                 for r in rows]
        ax.bar(range(len(rows)), [m for m, _ in stats], yerr=[0 if math.isnan(sd) else sd for _, sd in stats],
               capsize=3, color=["C1" if r == paired_with(rows, against) else "C0" for r in rows])
        ax.set_xticks(range(len(rows)), rows, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{title}: {metric}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_html(markdown):
    """table.md as HTML: the '### ' headings, pipe tables and lines of text that format_table writes."""
    from common.report import esc
    out, rows = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if set(line) - set("|-"):  # not the rule under the header
                tag = "td" if rows else "th"
                rows.append("<tr>" + "".join(f"<{tag}>{esc(c.strip())}</{tag}>" for c in line.strip("|").split("|"))
                            + "</tr>")
            continue
        if rows:
            out.append("<table>" + "\n".join(rows) + "</table>")
            rows = []
        if line.startswith("### "):
            out.append(f"<h2>{esc(line[4:])}</h2>")
        elif line.strip():
            out.append(f"<p>{esc(line)}</p>")
    return "\n".join(out)


def write_index(out, script, title, report, plan):
    """<out>/index.html: the tables, plot.png, and per row a link to each seed's run page (its log.txt where the run
    left none: it failed before its first page)."""
    from common.report import esc, href, page, write_text
    links = {}
    for _, row, seed in plan:
        folder = out / slug(row) / f"seed{seed}"
        pages = sorted(folder.glob(f"{script}/*/index.html"))
        target, text = (pages[0], f"seed {seed}") if pages else (folder / "log.txt", f"seed {seed}: log")
        links.setdefault(row, []).append(f'<a href="{href(target.relative_to(out))}">{esc(text)}</a>')
    runs = "".join(f"<tr><td>{esc(row)}</td><td>{' '.join(cells)}</td></tr>" for row, cells in links.items())
    write_text(out / "index.html", page(title, table_html(report) + '<h2>Plot</h2><img src="plot.png" alt="the '
                                        f'rows\' mean and sd per metric"><h2>Runs</h2><table>{runs}</table>'))


# --- the runs ----------------------------------------------------------------------------------------------------

def slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def pick_rows(spec, ablations, script):
    """--rows: row or table names joined by commas, where a name may hold a comma itself (GuideGAN's "RAM, RGBA"):
    the longest run of pieces that spells a name wins. A table's name picks all its rows; each picked row brings its
    table's full model (the differences need it). A minus sign as the docs' tables print it ("Ours−cycle") is the
    row's hyphen."""
    spec = spec.replace("\u2212", "-")
    names = {row: [row] for rows in ablations.values() for row in rows} | {t: list(r) for t, r in ablations.items()}
    if spec == "all":
        return {table: list(rows) for table, rows in ablations.items()}
    picked, parts = set(), spec.split(",")
    while parts:
        for k in range(len(parts), 0, -1):
            if ",".join(parts[:k]).strip() in names:
                break
        else:
            raise UsageError(f"unknown row {parts[0].strip()!r}; {script}'s tables and rows: "
                             + ", ".join(json.dumps(n) for n in names))
        picked |= set(names[",".join(parts[:k]).strip()])
        parts = parts[k:]
    picked |= {next(iter(rows)) for rows in ablations.values() if picked & set(rows)}
    return {t: [r for r in rows if r in picked] for t, rows in ablations.items() if picked & set(rows)}


def eval_line(folder, script):
    """The evaluation the script appended to <result_dir>/<script>/<dataset>/log.jsonl after training, or None."""
    for log in (folder / script).glob("*/log.jsonl"):
        for line in reversed(log.read_text().splitlines()):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if "eval" in record:
                return record
    return None


def last_line(path):
    lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()] if path.exists() else []
    return lines[-1] if lines else "(empty log)"


def parse(argv):
    argv, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Flags after -- go to every run, e.g. -- --img_size 32 --device cpu.")
    p.add_argument("script", help="ugatit, attentiongan, uait, guidegan or dagan")
    p.add_argument("--rows", default="all", help="'all' or row names joined by commas (default all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row (default 3)")
    p.add_argument("--iteration", type=int, help="training iterations of every run (default: the script's preset)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each (default 2)")
    p.add_argument("--out", help="default runs/ablation/<script>/")
    p.add_argument("--against", metavar="ROW", help="pair the rows of ROW's table with ROW (run too) instead of "
                                                    "the full model, e.g. with the row without attention")
    args = p.parse_args(argv)
    args.script = args.script.removesuffix(".py")
    if args.script not in SCRIPTS:
        raise UsageError(f"unknown script {args.script!r}; choose one of {', '.join(SCRIPTS)}")
    if args.seeds < 1 or args.jobs < 1:
        raise UsageError("--seeds and --jobs: use 1 or more")
    args.extra = extra
    args.out = Path(args.out or ROOT / "runs/ablation" / args.script).resolve()  # the runs' cwd is the repo's
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    ablations = importlib.import_module(args.script).ABLATIONS
    if args.against is not None and not any(args.against in rows for rows in ablations.values()):
        raise UsageError(f"--against: unknown row {args.against!r}; {args.script}'s rows: "
                         + ", ".join(json.dumps(r) for rows in ablations.values() for r in rows))
    spec = args.rows if args.against is None or args.rows == "all" else f"{args.rows},{args.against}"
    tables = pick_rows(spec, ablations, args.script)
    row_flags = {row: flags for t in tables for row, flags in ablations[t].items()}
    tail = [*(["--iteration", str(args.iteration)] if args.iteration else []), *args.extra]
    # Seed-major order: a stopped invocation leaves whole seeds of every row, which the paired differences can use.
    plan = [(t, row, seed) for seed in range(args.seeds) for t, rows in tables.items() for row in rows]
    results, failures, pending = {}, {}, []

    def collect(t, row, seed, folder):
        """A finished run's evaluation, stored in its result.json; None if it has none."""
        if not (record := eval_line(folder, args.script)):
            return None
        result = {"table": t, "row": row, "seed": seed, "flags": row_flags[row] + tail, **record}
        (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        return result

    for t, row, seed in plan:
        folder = args.out / slug(row) / f"seed{seed}"
        stored = folder / "result.json"
        # collect: a run that finished after the runner was stopped
        if result := (json.loads(stored.read_text()) if stored.exists() else collect(t, row, seed, folder)):
            if result["flags"] != row_flags[row] + tail:
                raise UsageError(f"{stored} was run with flags [{' '.join(result['flags'])}], not "
                                 f"[{' '.join(row_flags[row] + tail)}]: choose another --out, or delete it")
            results.setdefault(row, {})[seed] = result["eval"]
        else:
            pending.append((t, row, seed, folder))
    print(f"{args.script}: {sum(map(len, tables.values()))} rows x {args.seeds} seeds = {len(plan)} runs, "
          f"{len(plan) - len(pending)} of {len(plan)} done; {len(pending)} to run, {args.jobs} at a time -> {args.out}")

    # One thread per run, so that J runs share J cores without oversubscribing them; PYTHONUNBUFFERED keeps each
    # log.txt current for `tail -f`. One scorer folder for all runs: every run is judged by the same segmenter or
    # classifier (the scorers' seed is fixed), trained once instead of once per run.
    env = {"ATTNGAN_SCORERS": str(args.out / "scorers"), **os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    running, eta_told, done_now, stop = {}, False, 0, {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _: stop.setdefault("signal", number))
    while (pending or running) and not stop:
        while pending and len(running) < args.jobs:
            t, row, seed, folder = pending.pop(0)
            folder.mkdir(parents=True, exist_ok=True)
            # The tail last: flags after -- can override the runner's own (--print_freq, say).
            command = [sys.executable, f"{args.script}.py", "--seed", str(seed), "--result_dir", str(folder),
                       "--print_freq", str(10 ** 9), "--resume", *row_flags[row], *tail]
            with open(folder / "log.txt", "a") as log:
                # Its own session: Ctrl-C reaches the runner only, which then stops each run once, below.
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            running[process] = (t, row, seed, folder, time.time())
        time.sleep(0.2)
        for process in [p for p in running if p.poll() is not None]:
            t, row, seed, folder, started = running.pop(process)
            seconds, done_now = time.time() - started, done_now + 1
            if process.returncode == 0 and (result := collect(t, row, seed, folder)):
                results.setdefault(row, {})[seed] = result["eval"]
                print(f"[{done_now}/{done_now + len(running) + len(pending)}] {row} seed {seed}: {seconds:.0f} s")
            else:
                failures.setdefault(row, {})[seed] = last_line(folder / "log.txt")
                print(f"[{done_now}/{done_now + len(running) + len(pending)}] {row} seed {seed}: FAILED (exit "
                      f"{process.returncode}): {failures[row][seed]} (log {folder / 'log.txt'})")
            if not eta_told and (left := len(running) + len(pending)):
                print(f"expected: about {seconds * left / min(args.jobs, left) / 60:.1f} more minutes for {left} runs")
                eta_told = True

    if stop:
        # SIGINT is what the scripts stop cleanly on: they finish the iteration and save a checkpoint for --resume.
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        left = len(running) + len(pending)
        print(f"stopped: {left} of {len(plan)} runs not finished (finished ones are kept in {args.out}); "
              f"continue with: {shlex.join(['python', 'benchmarks/ablation.py', *argv])}")
        return 128 + stop["signal"]

    report = "\n".join(format_table(title, rows, results, failures, args.against) for title, rows in tables.items())
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.script}: ablation over seeds 0-{args.seeds - 1}"
    (args.out / "table.md").write_text(f"# {title}\n\n" + report)
    numbers = [{"table": t, "row": row, "seed": seed, "metric": k, "value": v}
               for t, row, seed in plan for k, v in results.get(row, {}).get(seed, {}).items()]
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["table", "row", "seed", "metric", "value"])
        writer.writeheader()
        writer.writerows(numbers)
    failed = [{"table": t, "row": row, "seed": seed, "error": failures[row][seed]}
              for t, row, seed in plan if seed in failures.get(row, {})]
    (args.out / "runs.json").write_text(json.dumps({"runs": numbers, "failed": failed}, indent=1) + "\n")
    plot(args.out / "plot.png", tables, results, args.against)
    write_index(args.out, args.script, title, report, plan)
    retry = f"; {len(failed)} runs failed: run the same command again to retry them" if failed else ""
    print(f"wrote {args.out}/table.md, runs.csv, runs.json, plot.png, index.html{retry}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
