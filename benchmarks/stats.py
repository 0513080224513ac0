"""The statistics that the ablation tables and the probes share: mean ± sd over seeds, and the difference of two
rows paired by seed with its 95% t interval."""
import math

# Student's t, 0.975 quantile, for 1..30 degrees of freedom (two-sided 95%); beyond 30 the normal's 1.96 (at 30 the
# two differ by 4%, and the gap shrinks from there).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_sd(values):
    """Mean and sample standard deviation (ddof 1; nan for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan


def paired_difference(row, full):
    """row, full: seed -> value. Mean of the per-seed differences row - full over the seeds both have, the 95%
    half-width t(n-1) * sd / sqrt(n) (None for n = 1), and n. Pairing by seed removes what a seed does to both
    (same weights' initialisation, same data order), which an unpaired comparison would count as noise."""
    diffs = [row[s] - full[s] for s in sorted(row.keys() & full.keys())]
    if not diffs:
        return None
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    return mean, (t975(n - 1) * sd / math.sqrt(n) if n > 1 else None), n


def format_mean_sd(values):
    if not values:
        return "–"
    mean, sd = mean_sd(values)
    return f"{mean:.3f} ± " + ("n/a" if math.isnan(sd) else f"{sd:.3f}")


def format_difference(diff):
    """'+0.120 [+0.020, +0.220]*': the star when the 95% interval excludes 0."""
    if diff is None:
        return "–"
    mean, half, _ = diff
    if half is None:
        return f"{mean:+.3f} (n/a)"
    low, high = mean - half, mean + half
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" + ("*" if low > 0 or high < 0 else "")
