"""A run's page: <run>/index.html, one static page that a browser opens from the file system, with the commands and
flags, the final evaluation beside its floors and ceilings, the loss curves (losses.png) and the sample grids, newest
first; <run>/test/index.html for the test phase. The harness (common.train) rewrites them at every sample grid, at the
end of training and after `--phase test`; for any run, also one from before the pages existed:

    python -m common.report runs/ugatit/shapes

Everything is read from the files a run keeps (log.jsonl, samples/, test/, run.json, else the checkpoint's flags),
so the page of a run is the same whoever writes it. Every file is written to a temporary file and renamed into place:
a kill at any moment leaves the old page or the new one, never half of one. Plain HTML, relative links, no script.
"""
import contextlib
import html
import json
import math
import os
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

SESSION = "run.json"  # the commands that used the folder, the training flags, the sample grids' columns
CURVES = "losses.png"

# The floors and ceilings an evaluation reports beside the model's numbers (common.train.evaluate, common.fid).
# In this order, after the model's column; a reference it does not know goes last.
REFERENCES = {"identity": "floor: output = input", "uniform": "floor: attention on every pixel",
              "centred": "reference: a box fixed at the centre", "real": "ceiling: the target domain's real images"}

# Loss names of the CycleGAN family's objective, which every paper builds on; any other term is the paper's own
# (U-GAT-IT's G_cam, AttentionGAN's G_tv, DA-GAN's cst, sym and its regulariser cls).
GENERATOR_TERMS = ("adv", "gan", "cycle", "identity", "pixel", "l1")

# Schedules the scripts give in epochs and run as a fraction of --iteration (common.train sets model.progress):
# flag -> what changes there. Derived from the flags, as the scripts do: iteration × flag / epochs.
SWITCHES = {"switch_epoch": "stage 2",  # UAIT, Algorithm 1: attention frozen, D on masked images
            "curriculum_epochs": "r 0.01 → 0.5"}  # AttentionGAN, Eq. 9's curriculum


# --- files ---------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def replacing(path):
    """A temporary name beside `path` to write to; renamed onto `path` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text):
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path):
    """A JSON file's object, or None when it is missing or unreadable (a page is made from whatever is there)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def record_session(root, command, columns, flags=None):
    """Add this process's command to <run>/run.json, with the sample grids' columns and (training) its flags, so that
    a page written later, by any process, shows them."""
    root = Path(root)
    session = read_json(root / SESSION) or {}
    session["commands"] = session.get("commands", []) + [command]
    session["columns"] = columns
    if flags is not None:
        session["flags"] = flags
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / SESSION, json.dumps(session, indent=1, default=str) + "\n")


def read_log(path, last_only=False):
    """(loss records, one per step in step order; evaluation records). A line cut short by a kill is skipped, and
    where a step was logged twice (a run resumed from before it) the later line counts. With `last_only`, only the
    last loss record: all a page needs that does not draw the curves (U-GAT-IT's million iterations log 100k lines,
    half a second to parse)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        lines = []
    evaluations = [r for r in map(parse, (l for l in lines if '"eval"' in l)) if isinstance(r.get("eval"), dict)]
    losses = {}
    for line in reversed(lines) if last_only else lines:
        record = parse(line) if '"eval"' not in line else {}
        if isinstance(record.get("step"), int):
            losses[record["step"]] = record
            if last_only:
                break
    return [losses[s] for s in sorted(losses)], evaluations


def parse(line):
    """A log line's record, or {} for a line cut short by a kill (or anything but a JSON object)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def saved_flags(root):
    """The training flags: run.json's, or for a run from before it the ones its checkpoint holds."""
    session = read_json(root / SESSION) or {}
    if "flags" in session:
        return session["flags"], SESSION
    from common import checkpoints
    for name in ("latest.pt", "previous.pt"):
        try:
            return checkpoints.read(root / "checkpoints" / name)["args"], f"checkpoints/{name}"
        except (checkpoints.CheckpointError, KeyError, TypeError):
            continue
    return {}, None


# --- the loss curves -----------------------------------------------------------------------------------------------

GROUPS = ("discriminators", "generator: G, the weighted objective, and its terms", "the paper's own terms")


def loss_group(name):
    if name.startswith("D"):
        return GROUPS[0]
    if name == "G" or (name.startswith("G_") and any(t in name.lower() for t in GENERATOR_TERMS)):
        return GROUPS[1]
    return GROUPS[2]


def switches(flags):
    """(iteration, label) of each schedule switch inside the run. Iteration i (from 0) runs with progress
    i / --iteration, so the first one past the switch is ceil(iteration × at / epochs)."""
    iteration, epochs = flags.get("iteration"), flags.get("epochs")
    marks = []
    for flag, label in SWITCHES.items():
        at = flags.get(flag)
        if iteration and epochs and at and 0 < at < epochs:
            marks.append((math.ceil(iteration * at / epochs), f"{label} (--{flag} {at} of {epochs})"))
    return marks


def smoothed(y):
    """A running mean over 1/40 of the points: a GAN's losses jump from batch to batch, the trend is what tells."""
    width = max(1, len(y) // 40)
    sums = np.cumsum(np.insert(y, 0, 0.0))
    head = sums[1:width] / np.arange(1, width)  # the first points average what there is
    return np.concatenate([head, (sums[width:] - sums[:-width]) / width])


def plot_curves(records, marks, path):
    """One panel per loss group and one for the learning rate, iterations on a shared axis, each switch a dashed
    line. matplotlib's Figure without pyplot: no global state inside a training process."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    groups = {}
    for name in dict.fromkeys(k for r in records for k in r if k not in ("step", "time", "lr")):
        groups.setdefault(loss_group(name), []).append(name)
    panels = [(g, groups[g]) for g in GROUPS if g in groups] + [("learning rate (the first optimizer's)", ["lr"])]
    fig = Figure(figsize=(11, 1.9 * len(panels) + 0.4))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    every = max(1, len(records) // 1000)  # at most ~1000 points a line: the page stays as fast as the grid
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            steps = np.array([r["step"] for r in records if isinstance(r.get(name), (int, float))])
            values = np.array([r[name] for r in records if isinstance(r.get(name), (int, float))], dtype=float)
            if not len(values):
                continue
            line, = ax.plot(steps[::every], smoothed(values)[::every], lw=1.4, label=name)
            if name != "lr":
                ax.plot(steps[::every], values[::every], lw=0.6, alpha=0.3, color=line.get_color())
        positive = [v for line in ax.get_lines() for v in line.get_ydata() if v > 0]
        if names != ["lr"] and positive and len(positive) == sum(len(l.get_ydata()) for l in ax.get_lines()) \
                and max(positive) > 20 * min(positive):
            ax.set_yscale("log")  # terms weighted 1 to 1000 apart: on a linear axis the small ones lie flat
        for at, label in marks:
            ax.axvline(at, color="k", ls="--", lw=0.8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        if names != ["lr"]:
            ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # never over a curve
    for at, label in marks:
        axes[0].annotate(label, (at, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                         textcoords="offset points", fontsize=8)
    axes[-1].set_xlabel("iteration", fontsize=9)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.subplots_adjust(left=0.07, right=0.86, top=1 - 0.35 / fig.get_figheight(), bottom=0.5 / fig.get_figheight(),
                        hspace=0.45)
    with replacing(path) as tmp:  # the iteration it shows goes with it, for a page that does not draw it again
        fig.savefig(tmp, format="png", dpi=80, metadata={"Iteration": str(records[-1]["step"])},
                    pil_kwargs={"compress_level": 1})  # fast to write, small anyway


def drawn_to(path):
    """The last iteration the loss curves in `path` show, or None (missing, or drawn before this was recorded)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return int(im.text["Iteration"])
    except (OSError, KeyError, ValueError):
        return None


# --- HTML ------------------------------------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.5em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th small{font-weight:normal;color:#666}
pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}figure{margin:.5em 0 1.2em}
figcaption{font-size:.9em;color:#444}img{max-width:100%;height:auto}img.pixels{image-rendering:pixelated}
.tests figure{display:inline-block;margin:.3em}.legend{color:#444}nav a{margin-right:1em}"""


def esc(value):
    return html.escape(str(value))


def href(path):
    """A relative link to a file below the page's folder, each part URL-quoted (a test image's name may hold a space)."""
    return "/".join(quote(part) for part in Path(path).parts)


def page(title, body):
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


def evaluation_table(report):
    """The model's numbers per direction and metric, each row with its floors and ceiling in the columns beside it,
    with three decimals, as the terminal prints them (common.train.format_report)."""
    rows, kinds = {}, []
    for key, value in report.items():
        parts = key.split("/")
        kind, metric = "/".join(parts[:-2]), "/".join(parts[-2:])
        if kind and kind not in kinds:
            kinds.append(kind)
        rows.setdefault(metric, {})[kind] = value
    kinds.sort(key=lambda k: list(REFERENCES).index(k) if k in REFERENCES else len(REFERENCES))
    head = "".join(f"<th>{esc(k)}<br><small>{esc(REFERENCES.get(k, ''))}</small></th>" for k in kinds)
    cells = lambda row: "".join(f"<td>{number(row[k])}</td>" if k in row else "<td></td>" for k in ["", *kinds])
    body = "".join(f"<tr><td>{esc(metric)}</td>{cells(row)}</tr>\n" for metric, row in rows.items())
    return f"<table><tr><th>metric</th><th>model</th>{head}</tr>\n{body}</table>"


def number(value):
    return f"{value:.3f}" if isinstance(value, (int, float)) else esc(value)


def image_width(png):
    """Twice the grid's width for grids under 500 px (tiles of 32 or 64 px are too small to see), else its own."""
    from PIL import Image
    try:
        with Image.open(png) as im:
            width = im.size[0]
    except OSError:
        return None
    return width * 2 if width < 500 else width


def figure(src, caption, width):
    size = f' width="{width}" class="pixels"' if width else ""
    return (f'<figure><figcaption>{esc(caption)}</figcaption><a href="{href(src)}"><img src="{href(src)}"{size} '
            f'loading="lazy" alt="{esc(caption)}"></a></figure>')


def samples_section(root, columns):
    grids = sorted((p for p in (root / "samples").glob("*.png") if p.stem.isdigit()), reverse=True)
    if not grids:
        return "<p>No sample grid yet: one is written every --print_freq iterations.</p>"
    width = image_width(grids[0])  # all grids of a run have one size
    legend = f'<p class="legend">{esc(columns["samples"])}.</p>' if columns else ""
    return legend + "\n".join(figure(p.relative_to(root), f"iteration {int(p.stem)}", width) for p in grids)


def run_page(root, curves=True):
    """Write <run>/index.html and, with `curves` (or where they are not drawn yet), losses.png from the run's files."""
    root = Path(root)
    drawn = None if curves else drawn_to(root / CURVES)
    records, evaluations = read_log(root / "log.jsonl", last_only=drawn is not None)
    flags, flags_from = saved_flags(root)
    session = read_json(root / SESSION) or {}
    title = f"{root.parent.name} on {root.name}"
    last = records[-1]["step"] if records else 0
    status = f"iteration {last} of {flags.get('iteration', '?')}"
    nav = ['<a href="#evaluation">evaluation</a>', '<a href="#losses">losses</a>', '<a href="#samples">samples</a>',
           '<a href="#flags">flags</a>']
    if (root / "test/index.html").exists():
        nav.append('<a href="test/index.html">test phase</a>')
    parts = [f"<p>{esc(status)}; page written {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>", f"<nav>{''.join(nav)}</nav>"]
    commands = [c for c in session.get("commands", []) if isinstance(c, str)]
    parts.append("<h2>Commands</h2>" + (f"<pre>{esc(chr(10).join(commands))}</pre>" if commands else
                                         "<p>Not recorded (a run from before the pages): its flags are below.</p>"))

    parts.append('<h2 id="evaluation">Evaluation</h2>')
    if evaluations:
        final = evaluations[-1]
        parts.append(f"<p>On the test sets at iteration {esc(final['step'])}, beside its floors and ceiling:</p>"
                     + evaluation_table(final["eval"]))
    else:
        parts.append("<p>None yet: the embedded data sets are evaluated after the last iteration.</p>")

    parts.append('<h2 id="losses">Losses</h2>')
    if records and drawn is None:
        plot_curves(records, switches(flags), root / CURVES)
        drawn = last
    if records:
        marks = "; ".join(label + f" at iteration {at}" for at, label in switches(flags))
        parts.append(f"<p>From log.jsonl, to iteration {drawn}: the faint line each logged value, the solid one their "
                     f"running mean{'; dashed: ' + esc(marks) if marks else ''}.</p>"
                     f'<img src="{CURVES}" alt="loss curves to iteration {drawn}">')
    else:
        parts.append("<p>No losses logged yet.</p>")

    parts.append('<h2 id="samples">Samples, newest first</h2>' + samples_section(root, session.get("columns")))
    parts.append('<h2 id="flags">Flags</h2>')
    if flags:
        rows = "".join(f"<tr><td>--{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in flags.items())
        parts.append(f"<p>As saved in {esc(flags_from)}.</p><table>{rows}</table>")
    else:
        parts.append("<p>Not saved yet (they are saved with the first checkpoint).</p>")
    write_text(root / "index.html", page(title, "\n".join(parts)))


def test_page(root):
    """Write <run>/test/index.html: every folder of translated test images (test/A2B, test/B2A, and those of
    --input), one row per image as the test phase wrote it, and test/metrics.json's scores beside their floors."""
    test = Path(root) / "test"
    columns = (read_json(Path(root) / SESSION) or {}).get("columns")
    parts = ['<p><a href="../index.html">the run\'s page</a></p>']
    metrics = read_json(test / "metrics.json")
    if metrics:
        parts.append("<h2>Scores</h2><p>From test/metrics.json, beside their floors and ceiling.</p>"
                     + evaluation_table(metrics))
    for folder in sorted(p for p in test.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.png"))
        if not images:
            continue
        legend = f'<p class="legend">Columns: {esc(columns["test"])}.</p>' if columns else ""
        width = image_width(images[0])
        parts.append(f"<h2>{esc(folder.name)}: {len(images)} images</h2>{legend}<div class=\"tests\">"
                     + "".join(figure(p.relative_to(test), p.stem, width) for p in images) + "</div>")
    write_text(test / "index.html", page(f"{Path(root).parent.name} on {Path(root).name}: test phase",
                                         "\n".join(parts)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m common.report RUN   (a run folder, e.g. runs/ugatit/shapes)", file=sys.stderr)
        sys.exit(2)
    root = Path(argv[0])
    if not (root / "log.jsonl").exists() and not (root / "samples").is_dir():
        print(f"error: {root} holds no log.jsonl or samples/: not a run folder (runs/<script>/<dataset>/)",
              file=sys.stderr)
        sys.exit(2)
    if (root / "test").is_dir():
        test_page(root)
    run_page(root)
    print(f"wrote {root / 'index.html'}" + (f" and {root / 'test/index.html'}" if (root / "test").is_dir() else ""))


if __name__ == "__main__":
    main()
