"""The student notebook in a real Jupyter kernel (nbclient + ipykernel, from requirements-notebook.txt).

The solution-filled notebook runs top to bottom from handout/, shows its figures inline, and leaves the
kernel's inline backend alone: a student's own plt.show() afterwards still draws (visualize and
plot_history used to switch the kernel to Agg). Its saved outputs stay small: no progress-bar frames.
"""

import nbformat
import pytest

from conftest import notebook_kit
from handout import make_student as ms

nbclient = pytest.importorskip("nbclient", reason="nbclient not installed: pip install -r requirements-notebook.txt")
pytest.importorskip("ipykernel", reason="ipykernel not installed: pip install -r requirements-notebook.txt")

STUDENT_PLOT = """\
import matplotlib.pyplot as plt
plt.plot([0, 1], [1, 0])
plt.show()"""


def _image_outputs(cell):
    return [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_solution_notebook_runs_in_a_kernel_and_shows_figures_inline(tmp_path, tiny_data, monkeypatch):
    kit = notebook_kit(tmp_path, tiny_data)
    nb = ms.build_notebook(ms.REFERENCE.read_text(encoding="utf-8"), solutions=True)
    nb.cells.append(nbformat.v4.new_code_cell(STUDENT_PLOT, metadata={"tags": ["run"]}))
    # The kernel picks its inline backend only where MPLBACKEND is unset (CI exports Agg).
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(kit / "handout")}})
    client.execute()  # raises CellExecutionError on the first failing cell

    text = lambda cell: "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    setup = next(c for c in nb.cells if "setup" in c.metadata.get("tags", []))
    assert f"working directory: {kit}" in text(setup)
    checks = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# 检验第")]
    assert len(checks) == 2 and "6 (1, 256, 256) torch.float32" in text(checks[0])
    assert "(2, 1, 256, 256) (2, 1, 63, 63)" in text(checks[1])
    shown = [c for c in nb.cells if c.cell_type == "code" and "ipd.display" in c.source]
    assert len(shown) == 1 and len(_image_outputs(shown[0])) == 2  # results.png and loss_curves.png inline
    assert len(_image_outputs(nb.cells[-1])) == 1, "the kernel lost its inline backend"
    assert (kit / "outputs" / "notebook" / "history.csv").is_file()
    # Saved outputs stay small: no progress-bar frames, one line per epoch (1 epoch here).
    training = next(c for c in nb.cells if c.cell_type == "code" and "exit_code = main(" in c.source)
    log = text(training) + "".join(o.get("text", "") for o in training.outputs if o.get("name") == "stderr")
    assert "\r" not in log and "img/s]" not in log and "it/s]" not in log, log[:2000]
    assert log.count("Epoch 1/1") == 1 and len(log.splitlines()) <= 12, log
    assert len(training.outputs) <= 6, [o.get("text", "")[:200] for o in training.outputs]
    texts = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum(map(len, texts)) < 20_000  # besides the figures, the saved notebook holds a few lines of text
