import matplotlib.pyplot as plt
import pandas as pd

from medrek.figures import plot_subject_distribution, save_figure, style


def _counts():
    return pd.DataFrame({"train": [30, 3], "valid": [20, 2], "test": [10, 1]}, index=pd.Index(["A", "B"], name="subject"))


def test_figures_are_byte_deterministic(tmp_path):
    outputs = []
    for run in range(2):
        with style():
            fig = plot_subject_distribution(_counts())
            paths = save_figure(fig, tmp_path / f"run{run}")
            plt.close(fig)
        outputs.append([p.read_bytes() for p in paths])
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert outputs[0] == outputs[1]
    assert outputs[0][1].startswith(b"%PDF") and b"CreationDate" not in outputs[0][1]


def test_log_axis_ticks_stay_short():
    from medrek.figures.plots import _compact

    assert [_compact(n) for n in (1, 200, 1000, 1500, 6000)] == ["1", "200", "1k", "1.5k", "6k"]
