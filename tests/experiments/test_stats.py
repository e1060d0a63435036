"""Table helpers: mean ± std over seeds, bootstrap CIs and differences against a baseline."""

import numpy as np
import pytest

from diffprompt.evaluate import mean_iou
from diffprompt.experiments.stats import ci_rows, ci_table


def image_cms(rng, n, gain=0.0):
    """(n, 4, 4) per-image matrices: classes 0-2 with union 100 and IoU ~ U(0.2, 0.6) +
    ``gain`` in every image, misses predicted as class 3 (not evaluated)."""
    tp = np.round((rng.uniform(0.2, 0.6, (n, 3)) + gain) * 100).astype(np.int64)
    cms = np.zeros((n, 4, 4), dtype=np.int64)
    cms[:, np.arange(3), np.arange(3)] = tp
    cms[:, np.arange(3), 3] = 100 - tp
    return cms


def synthetic_rows():
    """Two targets; per target a baseline "none", "good" (+0.2 IoU on every image) and
    "same" (the baseline's matrices), two seeds each."""
    rows = []
    for target, n in (("fog", 20), ("night", 30)):
        rng = np.random.default_rng(n)
        base = [image_cms(rng, n) for _ in range(2)]
        for seed in range(2):
            rows.append({"target": target, "method": "none", "seed": seed, "cms": base[seed]})
            good = base[seed].copy()
            good[:, np.arange(3), np.arange(3)] += 20
            good[:, np.arange(3), 3] -= 20
            rows.append({"target": target, "method": "good", "seed": seed, "cms": good})
            rows.append({"target": target, "method": "same", "seed": seed, "cms": base[seed]})
    return rows


def runs(rows, target, method):
    return [r for r in rows if r["target"] == target and r["method"] == method]


def test_ci_table_columns_against_the_baseline_of_each_target():
    rows = synthetic_rows()
    table = ci_table(
        rows, ["target", "method"], {"method": "none"}, "no adaptation", classes=range(3)
    )
    assert list(table.columns) == [
        "mIoU",
        "95% CI",
        "Δ vs no adaptation",
        "Δ 95% CI",
        "excludes 0",
        "seeds",
        "images",
    ]
    assert table.index.tolist() == [
        (t, m) for t in ("fog", "night") for m in ("none", "good", "same")
    ]
    for t, n in (("fog", 20), ("night", 30)):
        base = table.loc[(t, "none")]
        assert base["Δ vs no adaptation"] == base["excludes 0"] == base["Δ 95% CI"] == "--"
        assert table.loc[(t, "good"), "Δ vs no adaptation"] == "+20.00"
        assert table.loc[(t, "good"), "Δ 95% CI"] == "[20.00, 20.00]"
        assert table.loc[(t, "good"), "excludes 0"] == "yes"
        assert table.loc[(t, "same"), "Δ vs no adaptation"] == "+0.00"
        assert table.loc[(t, "same"), "excludes 0"] == "no"
        assert table.loc[(t, "good"), "seeds"] == 2 and table.loc[(t, "good"), "images"] == n
    mious = [mean_iou(r["cms"].sum(0), range(3)) for r in runs(rows, "fog", "none")]
    mean, std = np.mean(mious), np.std(mious, ddof=1)
    assert table.loc[("fog", "none"), "mIoU"] == f"{mean:.2f} ± {std:.2f}"
    low, high = table.loc[("fog", "none"), "95% CI"].strip("[]").split(", ")
    assert float(low) < mean < float(high)


def test_ci_rows_are_numeric_and_take_classes_per_group():
    rows = synthetic_rows()
    seen = []

    def classes(keys):
        seen.append(keys)
        return [0, 1] if keys["target"] == "fog" else None

    out = ci_rows(rows, ["target", "method"], {"method": "none"}, classes=classes, n_resamples=200)
    assert {"target": "fog", "method": "none"} in seen and len(out) == 6
    fog = out[0]
    want = np.mean([mean_iou(r["cms"].sum(0), [0, 1]) for r in runs(rows, "fog", "none")])
    assert fog["mIoU"] == pytest.approx(want) and fog["excludes_zero"] is None
    assert fog["low"] <= fog["mIoU"] <= fog["high"]
    good = out[1]
    assert good["excludes_zero"] is True and good["delta"] == pytest.approx(20.0)


def test_ci_rows_name_bad_input():
    rows = synthetic_rows()
    by = ["target", "method"]
    with pytest.raises(ValueError, match="no baseline row"):
        ci_rows(rows, by, {"method": "tent"})
    with pytest.raises(ValueError, match="by keys"):
        ci_rows(rows, by, {"model": "none"})
    with pytest.raises(ValueError, match="appears twice"):
        ci_rows(rows + rows[:1], by, {"method": "none"})
    with pytest.raises(ValueError, match="lacks"):
        ci_rows(
            [{"target": "fog", "method": "none", "cms": rows[0]["cms"]}], by, {"method": "none"}
        )
    odd = dict(rows[0], seed=5, cms=rows[0]["cms"][:10])
    with pytest.raises(ValueError, match="same images"):
        ci_rows([*rows, odd], by, {"method": "none"})
